"""Language-model metrics (the text data set):

* every evaluation, summed batch by batch (a split of any size costs one batch of logits):
  ``perplexity`` (exp of the mean next-token cross-entropy over the valid targets),
  ``token_accuracy`` (next-token top-1), and the tokenizer-free ``bits_per_byte`` and
  ``bits_per_char``: the summed cross-entropy in bits over the UTF-8 bytes (characters) of the
  text the valid targets spell (each sequence's valid target tokens decoded, special tokens
  dropped), so that models with different tokenizers compare on the same text;
* at the stage's final evaluation (or every one with ``every_eval = true``), on the first
  ``dialogues`` dialogues of the split, from the model itself:
  ``hits@1``: the reference response ranked first among ``candidates`` responses by the total
  log-likelihood the model gives each after the dialogue's context (the other candidates are other
  dialogues' last responses, half of them answers to the same kind of recall question with another
  fact when the split has them, drawn from the recipe seed);
  ``token_f1``: word-level F1 of the greedy response against the reference (as in SQuAD and
  ConvAI2: lower-cased words, punctuation dropped);
  ``memory_recall``: share of recall questions whose greedy response contains the fact's value.
* in the stage summary: ``macs_per_token`` (the model's MACs on one sequence / its length) and
  ``train_tokens_per_s`` (input tokens per second of training steps, all processes together).
"""

from __future__ import annotations

import math
import re
import time

import attrs
import torch
import torch.nn.functional as F
from attrs import field
from attrs import validators as v

from kdlab import ModelOutput, hookimpl
from kdlab.methods.vocab_chunks import map_rows
from kdlab.models.generation import generate, response_tokens, sequence_logprob


@attrs.frozen(kw_only=True)
class LMMetricsConfig:
    dialogues: int = field(default=200, validator=v.ge(1))  # per split, for the generation metrics
    candidates: int = field(default=10, validator=v.ge(2))  # hits@1 out of this many
    max_new_tokens: int = field(default=32, validator=v.ge(1))
    every_eval: bool = False  # generation metrics at every evaluation, not only the final one


def token_sums(output: ModelOutput | torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(summed cross-entropy in nats, correct next tokens, valid targets) of one batch, float64;
    from a language model's hidden states a chunk of positions at a time (no batch x length x
    vocabulary logits)."""
    out = output if isinstance(output, ModelOutput) else ModelOutput(logits=output)
    flat = targets.flatten()

    def sums(logits, rows):
        target = flat[rows]
        nll = F.cross_entropy(logits.float(), target, reduction="sum")
        return torch.stack([nll.double(), (logits.argmax(-1) == target).sum().double()])

    rows = flat.ge(0).nonzero().squeeze(1)
    if len(rows) == 0:
        return torch.zeros(3, dtype=torch.float64, device=targets.device)
    nll, correct = map_rows(out, rows, sums)
    return torch.stack([nll, correct, torch.tensor(float(len(rows)), dtype=torch.float64, device=nll.device)])


def text_size(tokenizer, targets: torch.Tensor) -> tuple[int, int]:
    """(UTF-8 bytes, characters) of the text that each row's valid targets spell."""
    rows = [row[row >= 0].tolist() for row in targets.cpu()]
    texts = tokenizer.decode_batch(rows, skip_special_tokens=True)
    return sum(len(t.encode("utf-8")) for t in texts), sum(len(t) for t in texts)


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def token_f1(prediction: str, reference: str) -> float:
    """Word-overlap F1 of two strings (bags of lower-cased words)."""
    pred, ref = words(prediction), words(reference)
    common = sum(min(pred.count(w), ref.count(w)) for w in set(pred))
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def contains_fact(response: str, value: str) -> bool:
    """The fact's words appear in order as whole words of the response (case-insensitive)."""
    return re.search(r"(?<!\w)" + re.escape(value.lower()) + r"(?!\w)", response.lower()) is not None


def pick_candidates(split, n: int, count: int, generator: torch.Generator) -> list[list[int]]:
    """For each of the first ``n`` dialogues, ``count`` response indices: its own first, then
    others (half sharing its recall kind and differing in text, when there are such)."""
    total = len(split.responses)
    out = []
    for i in range(n):
        same = [j for j in range(total) if j != i and split.kinds[i] is not None and split.kinds[j] == split.kinds[i]
                and split.responses[j] != split.responses[i]]
        chosen: list[int] = []
        if same:
            order = torch.randperm(len(same), generator=generator)[: (count - 1) // 2]
            chosen = [same[k] for k in order.tolist()]
        rest = [j for j in torch.randperm(total, generator=generator).tolist()
                if j != i and j not in chosen and split.responses[j] != split.responses[i]]
        out.append([i] + chosen + rest[: count - 1 - len(chosen)])
    return out


def hits_at_1(model, split, text, n: int, count: int, seed: int, device, batch_size: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    cands = pick_candidates(split, n, count, generator)
    width = split.inputs.shape[1]
    encoded = {j: text.tokenizer.encode(" " + split.responses[j], add_special_tokens=False).ids + [text.end_id]
               for row in cands for j in row}
    rows, tgts = [], []
    for i, row in enumerate(cands):
        p = int(split.prompt_lens[i])
        prompt = split.inputs[i, :p].tolist()
        for j in row:
            seq = (prompt + encoded[j])[: width + 1]
            x = torch.full((width,), text.pad_id, dtype=torch.long)
            y = torch.full((width,), -1, dtype=torch.long)
            x[: len(seq) - 1] = torch.tensor(seq[:-1])
            y[p - 1: len(seq) - 1] = torch.tensor(seq[p:])
            rows.append(x)
            tgts.append(y)
    x, y = torch.stack(rows), torch.stack(tgts)
    scores = torch.cat([sequence_logprob(model, x[s: s + batch_size].to(device), y[s: s + batch_size].to(device)).cpu()
                        for s in range(0, len(x), batch_size)]).view(len(cands), -1)
    return float((scores.argmax(1) == 0).float().mean())


def greedy_responses(model, split, text, n: int, max_new_tokens: int, device, batch_size: int) -> list[str]:
    out = []
    for s in range(0, n, batch_size):
        x, p = split.inputs[s: min(n, s + batch_size)].to(device), split.prompt_lens[s: min(n, s + batch_size)]
        seq = generate(model, x, p, max_new_tokens=max_new_tokens, end_id=text.end_id, pad_id=text.pad_id)
        out += [text.tokenizer.decode(r).strip() for r in response_tokens(seq.cpu(), p, text.end_id, text.pad_id)]
    return out


def dialogue_metrics(model, split, text, cfg: LMMetricsConfig, seed: int, device, batch_size: int) -> dict[str, float]:
    n = min(cfg.dialogues, len(split.responses))
    metrics = {"hits@1": hits_at_1(model, split, text, n, min(cfg.candidates, len(split.responses)), seed, device,
                                   batch_size)}
    responses = greedy_responses(model, split, text, n, cfg.max_new_tokens, device, batch_size)
    metrics["token_f1"] = sum(token_f1(r, ref) for r, ref in zip(responses, split.responses)) / n
    recall = [(r, fact) for r, fact in zip(responses, split.recall[:n]) if fact is not None]
    if recall:
        metrics["memory_recall"] = sum(contains_fact(r, fact) for r, fact in recall) / len(recall)
    return metrics


class LMMetrics:
    default_enabled = True
    data_kinds = {"text"}
    config_class = LMMetricsConfig

    def __init__(self, config):
        self.config = config
        self.tokens, self.seconds, self.started, self.in_epoch = 0, 0.0, 0.0, 0
        self.sums: torch.Tensor | None = None
        self.sizes = [0, 0]  # bytes, characters of this evaluation's targets
        self.text_sizes: dict[str, tuple[int, int]] = {}  # per split: its targets do not change

    @hookimpl
    def kdlab_eval_start(self):
        self.sums, self.sizes = None, [0, 0]

    @hookimpl
    def kdlab_eval_batch(self, stage, split, batch, output):
        text = stage.data.extra.get("text")
        if text is None or len(output.logits_shape) != 3:
            return
        sums = token_sums(output, batch.targets)  # kept on the device
        self.sums = sums if self.sums is None else self.sums + sums
        if split not in self.text_sizes:
            size = text_size(text.tokenizer, batch.targets)
            self.sizes = [self.sizes[0] + size[0], self.sizes[1] + size[1]]

    @hookimpl
    def kdlab_eval_metrics(self, stage, split):
        text = stage.data.extra.get("text")
        if text is None or self.sums is None:
            return None
        nll, correct, count = self.sums.tolist()
        if split not in self.text_sizes:
            self.text_sizes[split] = tuple(self.sizes)
        n_bytes, n_chars = self.text_sizes[split]
        bits = nll / math.log(2)
        metrics = {"perplexity": math.exp(nll / max(count, 1)), "token_accuracy": correct / max(count, 1)}
        if n_bytes:
            metrics.update(bits_per_byte=bits / n_bytes, bits_per_char=bits / max(n_chars, 1))
        cfg = self.config
        final = stage.training_over  # the evaluations after training
        if split in text.splits and (final or cfg.every_eval):
            batch = getattr(stage.recipe.data.config, "eval_batch_size", 64)
            with torch.no_grad():
                metrics.update(dialogue_metrics(stage.student, text.splits[split], text, cfg,
                                                stage.recipe.seed, stage.device, batch))
        return metrics

    # -- training throughput ------------------------------------------------------------------

    @hookimpl
    def kdlab_epoch_start(self, stage):
        self.started, self.in_epoch = time.perf_counter(), 0

    @hookimpl
    def kdlab_step_end(self, stage):
        if stage.data.extra.get("text") is None:
            return
        self.tokens += sum(b.inputs.numel() for b in stage.micro_batches) * stage.world_size
        self.in_epoch += 1
        if self.in_epoch == stage.steps_per_epoch or stage.training_over:  # the epoch's last step: wait for the device once
            if stage.device.type == "cuda":
                torch.cuda.synchronize(stage.device)
            self.seconds += time.perf_counter() - self.started

    @hookimpl(tryfirst=True)  # before the writers read the metrics
    def kdlab_stage_summary(self, stage, metrics):
        if stage.data.extra.get("text") is None:
            return
        if "macs" in metrics:
            metrics["macs_per_token"] = metrics["macs"] / stage.data.input_shape[0]
        if self.seconds > 0:
            metrics["train_tokens_per_s"] = self.tokens / self.seconds
