"""How good a draft model the student is for speculative decoding with its teacher as the target
(Leviathan et al. 2023, "Fast inference from transformers via speculative decoding"; Chen et al.
2023): ``methods.draft_acceptance = {}`` in a stage with a language-model teacher. It adds no
loss term, so a student trained without distillation is measured in the same way.

At every valid position of the evaluated split (the split's own text as the context, the
teacher's and the student's next-token distributions p and q there):

* ``acceptance``: the mean of sum_x min(p(x), q(x)) = 1 - TV(p, q), the probability that
  speculative sampling (temperature 1) accepts a token the draft proposes there;
* ``acceptance_greedy``: the share of positions where both models' most probable tokens agree,
  what greedy speculative decoding accepts;
* ``tokens_per_call``: (1 - a^(g+1)) / (1 - a) for a = ``acceptance`` and g = ``gamma`` drafted
  tokens, the expected tokens produced per call of the target (Leviathan et al., eq. 1, which
  takes the acceptances of a run as independent).

The contexts are the split's text (teacher forcing), not the draft's own continuations: the
rates are those of drafting along real text, as the published acceptance rates on a data set are.
Both models' logits are formed a chunk of positions at a time (as the vocabulary losses are), so
no (tokens x vocabulary) tensor of a batch is held. A teacher read from a top-k cache has no full
distribution: an error names the method.
"""

from __future__ import annotations

import attrs
import torch
from attrs import field
from attrs import validators as v

from kdlab import KdlabError, ModelOutput, Requirements, hookimpl
from kdlab.methods.vocab_chunks import map_rows, teacher_rows


@attrs.frozen(kw_only=True)
class DraftAcceptanceConfig:
    teacher_index: int = field(default=0, validator=v.ge(0))  # which teacher is the target model
    gamma: int = field(default=4, validator=v.ge(1))  # tokens drafted per target call, for tokens_per_call


def acceptance_sums(student: ModelOutput, teacher: ModelOutput, targets: torch.Tensor) -> torch.Tensor:
    """(sum of sum_x min(p, q), greedy agreements, positions) over a batch's valid targets, float64."""
    if teacher.topk is not None:
        raise KdlabError("draft_acceptance: the teacher's outputs are a top-k cache (teacher_cache topk), which "
                         "has no full distribution; evaluate with the live teacher (no topk)")
    rows = targets.flatten().ge(0).nonzero().squeeze(1)
    if len(rows) == 0:
        return torch.zeros(3, dtype=torch.float64, device=targets.device)

    def sums(logits, part):
        t = teacher_rows(teacher, part).float()
        if t.shape[-1] != logits.shape[-1]:
            raise KdlabError(f"draft_acceptance: the teacher has {t.shape[-1]} tokens, the student {logits.shape[-1]}; "
                             "a draft and its target share one vocabulary")
        q, p = torch.softmax(logits.float(), -1), torch.softmax(t, -1)
        return torch.stack([torch.minimum(p, q).sum().double(),
                            (logits.argmax(-1) == t.argmax(-1)).sum().double()])

    got = map_rows(student, rows, sums)
    return torch.cat([got, torch.tensor([float(len(rows))], dtype=torch.float64, device=got.device)])


class DraftAcceptance:
    data_kinds = {"text"}  # kdlab validate refuses it on other data
    config_class = DraftAcceptanceConfig

    def __init__(self, config):
        self.config = config
        self.sums: torch.Tensor | None = None

    @staticmethod
    def requires(config, stage):
        return Requirements(teachers=config.teacher_index + 1, terms=())

    @hookimpl
    def kdlab_eval_start(self):
        self.sums = None

    @hookimpl
    def kdlab_eval_batch(self, stage, batch, output, teacher_outputs):
        if len(output.logits_shape) != 3:
            raise KdlabError(f"stages.{stage.name}.methods.draft_acceptance: the student is not a language model "
                             f"(its output has shape {tuple(output.logits_shape)}, not batch x length x vocabulary)")
        sums = acceptance_sums(output, teacher_outputs[self.config.teacher_index], batch.targets)
        self.sums = sums if self.sums is None else self.sums + sums  # kept on the device

    @hookimpl
    def kdlab_eval_metrics(self, split):
        if self.sums is None:
            return None
        accepted, agreed, n = self.sums.tolist()
        a, g = accepted / max(n, 1), self.config.gamma
        return {"acceptance": a, "acceptance_greedy": agreed / max(n, 1),
                "tokens_per_call": float(g + 1) if a >= 1 else (1 - a ** (g + 1)) / (1 - a)}
