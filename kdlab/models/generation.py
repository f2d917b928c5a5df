"""Response generation and scoring for any causal language model that maps token ids
(batch, length) to logits (batch, length, vocab): kdlab's ``transformer_lm`` and ``conv_lm``.

Written by hand rather than with ``transformers``' ``generate()``: ``conv_lm`` is not a Hugging
Face model, and prompts of different lengths sit right-padded in one tensor (the layout of the
training data), which ``generate()`` does not accept for decoder-only models.

A model with a key-value cache (``new_cache()`` and ``forward_cached(tokens, cache)``: kdlab's
``transformer_lm``, through transformers' ``DynamicCache``) is decoded one column at a time: the
prompts' common length in one forward, then each position once for every row, a row taking its
prompt's token while it has one and its own next token after it. Every row then sees the same
tokens as in the loop without the cache, which runs one forward over the whole sequence so far
per new token (``conv_lm``, or ``use_cache=False``); tests/models/test_generation.py checks that
both give the same tokens, and BENCHMARKS.md what the cache saves.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def generate(model, tokens: torch.Tensor, prompt_lens: torch.Tensor, *, max_new_tokens: int, end_id: int,
             pad_id: int, temperature: float = 0.0, noise: torch.Tensor | None = None,
             use_cache: bool = True) -> torch.Tensor:
    """Continue each row's prompt (``tokens[i, :prompt_lens[i]]``) until the end token or
    ``max_new_tokens``. Greedy when ``temperature == 0``; otherwise sampled from the softmax at
    that temperature by the Gumbel-max trick with ``noise`` from :func:`gumbel_noise` (batch,
    max_new_tokens, vocab): the same noise gives the same responses, and noise drawn for a whole
    global batch and cut into shares makes N processes sample what one process samples.

    Returns (batch, prompt + new) token ids: each prompt, its response (the end token included
    when produced), then ``pad_id``. Rows never run past the tensor's width."""
    lens = prompt_lens.to(tokens.device).clone()
    width = min(tokens.shape[1], int(lens.max()) + max_new_tokens)
    out = torch.full((tokens.shape[0], width), pad_id, dtype=tokens.dtype, device=tokens.device)
    keep = torch.arange(width, device=tokens.device)[None, :] < lens[:, None]
    out[keep] = tokens[:, :width][keep]
    done = lens >= width
    rows = torch.arange(len(lens), device=tokens.device)
    if temperature > 0 and noise is None:
        raise ValueError("sampling (temperature > 0) needs noise from gumbel_noise()")
    inner = getattr(model, "module", model)  # under DistributedDataParallel: no gradient, no sync needed
    if use_cache and hasattr(inner, "forward_cached"):
        return _generate_cached(inner, out, lens, width, max_new_tokens, end_id, pad_id, temperature, noise)
    for step in range(max_new_tokens):
        if bool(done.all()):  # one sync per generated token
            break
        upto = int(lens.max())
        logits = model(out[:, :upto])[rows, (lens - 1).clamp(max=upto - 1)].float()
        logits[:, pad_id] = float("-inf")  # padding is never a response token
        if temperature > 0:
            nxt = (logits / temperature + noise[:, step].to(logits.device)).argmax(-1)
        else:
            nxt = logits.argmax(-1)
        active = ~done
        out[rows[active], lens[active]] = nxt[active]
        lens = lens + active.long()
        done = done | (nxt == end_id) | (lens >= width)
    return out


def _generate_cached(model, out, lens, width, max_new_tokens, end_id, pad_id, temperature, noise):
    """:func:`generate` with the model's key-value cache, column by column (see the module doc)."""
    first, done = lens.clone(), lens >= width
    rows = torch.arange(len(lens), device=out.device)
    start = int(lens.min())
    cache = model.new_cache()
    logits = model.forward_cached(out[:, :start], cache)[:, -1]  # predicts position `start`
    for pos in range(start, width):
        if bool(done.all()):
            break
        turn = (lens == pos) & ~done  # the rows whose token at `pos` is generated now
        if bool(turn.any()):
            scores = logits.float()
            scores[:, pad_id] = float("-inf")  # padding is never a response token
            if temperature > 0:
                step = (pos - first).clamp(0, max_new_tokens - 1)  # the row's own count, as the loop's step
                nxt = (scores / temperature + noise[rows, step].to(scores.device)).argmax(-1)
            else:
                nxt = scores.argmax(-1)
            out[rows[turn], pos] = nxt[turn]
            lens = lens + turn.long()
            done = done | (turn & ((nxt == end_id) | (lens >= width) | (lens - first >= max_new_tokens)))
        if pos + 1 < width and not bool(done.all()):
            logits = model.forward_cached(out[:, pos: pos + 1], cache)[:, -1]
    return out


def gumbel_noise(generator: torch.Generator, rows: int, steps: int, vocab: int) -> torch.Tensor:
    """Gumbel(0, 1) noise (rows, steps, vocab) from ``generator``: argmax(logits / T + noise) is a
    draw from softmax(logits / T)."""
    u = torch.rand(rows, steps, vocab, generator=generator).clamp_(min=1e-10, max=1 - 1e-7)
    return -torch.log(-torch.log(u))


def response_tokens(sequences: torch.Tensor, prompt_lens: torch.Tensor, end_id: int, pad_id: int) -> list[list[int]]:
    """The generated part of each row, up to (not including) the end token or padding."""
    out = []
    for row, start in zip(sequences.tolist(), prompt_lens.tolist()):
        resp = []
        for t in row[start:]:
            if t in (end_id, pad_id):
                break
            resp.append(t)
        out.append(resp)
    return out


def response_mask(sequences: torch.Tensor, prompt_lens: torch.Tensor, end_id: int, pad_id: int) -> torch.Tensor:
    """Targets mask for sequences from :func:`generate`: True at the positions whose *next*
    token is part of the response (its tokens and the end token), shape (batch, length - 1)."""
    pos = torch.arange(1, sequences.shape[1], device=sequences.device)[None, :]
    nxt = sequences[:, 1:]
    after_prompt = pos >= prompt_lens.to(sequences.device)[:, None]
    # a response ends at its first end token (the prompt's own end-of-turn tokens do not count);
    # padding after it is not a target
    is_end = ((nxt == end_id) & after_prompt).long()
    ended_before = torch.cumsum(is_end, dim=1) - is_end > 0
    return after_prompt & ~ended_before & (nxt != pad_id)


@torch.no_grad()
def sequence_logprob(model, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of log p(target) over the positions where ``targets >= 0``, per row (batch,)."""
    logp = torch.log_softmax(model(tokens).float(), dim=-1)
    valid = targets >= 0
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * valid).sum(-1)
