"""Generation for any tokens -> logits model: greedy, seeded sampling, masks, scores."""

from __future__ import annotations

import torch

from kdlab.models.generation import generate, gumbel_noise, response_mask, response_tokens, sequence_logprob

V, END, PAD = 10, 9, 0


class Counter(torch.nn.Module):
    """Predicts token + 1 (capped at END) with certainty: greedy output is known in advance."""

    def forward(self, tokens):
        nxt = (tokens + 1).clamp(max=END)
        return torch.nn.functional.one_hot(nxt, V).float() * 20


class Uniform(torch.nn.Module):
    def forward(self, tokens):
        return torch.zeros(*tokens.shape, V)


def test_greedy_continues_each_right_padded_prompt_until_the_end_token():
    tokens = torch.tensor([[5, 6, 0, 0, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0, 0, 0]])
    out = generate(Counter(), tokens, torch.tensor([2, 1]), max_new_tokens=6, end_id=END, pad_id=PAD)
    assert out.tolist() == [[5, 6, 7, 8, 9, 0, 0, 0], [2, 3, 4, 5, 6, 7, 8, 0]]  # 6 new tokens at most
    assert response_tokens(out, torch.tensor([2, 1]), END, PAD) == [[7, 8], [3, 4, 5, 6, 7, 8]]
    # response targets: the positions whose next token is a response token or the end token
    mask = response_mask(out, torch.tensor([2, 1]), END, PAD)
    assert mask.tolist() == [[False, True, True, True, False, False, False], [True] * 6 + [False]]


def test_end_tokens_inside_the_prompt_do_not_end_the_response():
    # a dialogue prompt holds the end-of-turn tokens of earlier turns
    seq = torch.tensor([[4, 9, 5, 6, 7, 9, 0]])
    assert response_mask(seq, torch.tensor([3]), END, PAD).tolist() == [[False, False, True, True, True, False]]


def test_sampling_is_a_function_of_the_generator_seed():
    tokens = torch.full((4, 12), 1)
    lens = torch.tensor([1, 2, 3, 1])
    def sample(seed, rows=slice(None)):
        noise = gumbel_noise(torch.Generator().manual_seed(seed), 4, 8, V)[rows]
        return generate(Uniform(), tokens[rows], lens[rows], max_new_tokens=8, end_id=END, pad_id=PAD,
                        temperature=1.0, noise=noise)

    a, b, c = sample(3), sample(3), sample(4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # a share of the rows sampled with its share of the noise: the rows one batch would get
    part = sample(3, slice(2, 4))
    assert torch.equal(part, a[2:4, : part.shape[1]]) and (a[2:4, part.shape[1]:] == PAD).all()
    for row, n in zip(a.tolist(), lens.tolist()):
        assert row[:n] == [1] * n  # prompts untouched


def test_sequence_logprob_sums_the_target_positions_only():
    model = Uniform()
    targets = torch.tensor([[-1, 3, 4, -1], [-1, -1, -1, 2]])
    scores = sequence_logprob(model, torch.zeros(2, 4, dtype=torch.long), targets)
    assert torch.allclose(scores, torch.tensor([2, 1]) * torch.log(torch.tensor(1 / V)))


def test_gumbel_max_samples_from_the_softmax():
    logits = torch.tensor([2.0, 0.0, 1.0])
    noise = gumbel_noise(torch.Generator().manual_seed(0), 20000, 1, 3)[:, 0]
    freq = torch.bincount((logits + noise).argmax(-1), minlength=3).float() / 20000
    assert torch.allclose(freq, torch.softmax(logits, 0), atol=0.015)


class CachedCounter(Counter):
    """Counter with a key-value 'cache' (it needs only the last token): counts the tokens it is fed."""

    def __init__(self):
        super().__init__()
        self.fed = 0

    def new_cache(self):
        return []

    def forward_cached(self, tokens, cache):
        self.fed += tokens.shape[1]
        cache.append(tokens)
        return self.forward(tokens)


def test_with_a_cache_each_position_is_fed_once_and_the_tokens_are_those_of_the_loop_without_it():
    tokens = torch.tensor([[5, 6, 0, 0, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0, 0, 0], [1, 2, 3, 4, 0, 0, 0, 0]])
    lens = torch.tensor([2, 1, 4])
    model = CachedCounter()
    cached = generate(model, tokens, lens, max_new_tokens=6, end_id=END, pad_id=PAD)
    plain = generate(model, tokens, lens, max_new_tokens=6, end_id=END, pad_id=PAD, use_cache=False)
    assert torch.equal(cached, plain)
    assert cached.tolist()[1] == [2, 3, 4, 5, 6, 7, 8, 0]
    assert model.fed <= cached.shape[1]  # every column once (the loop without it: a whole prefix per token)


def test_the_key_value_cache_of_a_transformer_lm_gives_the_same_tokens_greedy_and_sampled():
    import pytest

    pytest.importorskip("transformers")
    from types import SimpleNamespace

    from kdlab.models import transformer_lm

    for family in ("llama", "gpt2"):
        torch.manual_seed(0)
        model = transformer_lm.build(transformer_lm.TransformerLMConfig(family=family, layers=2, width=16, heads=2),
                                     SimpleNamespace(num_classes=40, input_shape=(16,))).eval()
        tokens = torch.randint(1, 40, (4, 16))
        lens = torch.tensor([1, 3, 5, 2])
        for temperature in (0.0, 1.0):
            noise = gumbel_noise(torch.Generator().manual_seed(1), 4, 9, 40) if temperature else None
            kw = dict(max_new_tokens=9, end_id=39, pad_id=0, temperature=temperature, noise=noise)
            cached = generate(model, tokens, lens, **kw)
            plain = generate(model, tokens, lens, use_cache=False, **kw)
            assert torch.equal(cached, plain), (family, temperature)
            assert (cached[:, :1] == tokens[:, :1]).all()
