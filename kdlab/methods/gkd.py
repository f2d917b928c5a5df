"""On-policy distillation of language models (GKD, Agarwal et al. 2024, "On-Policy
Distillation of Language Models: Learning from Self-Generated Mistakes").

In a share ``fraction`` of the training steps (GKD's lambda; drawn per step from the recipe seed,
so every process of ``--nproc N`` agrees) the student writes the response of each dialogue in the
batch (sampled at ``sample_temperature``, no gradient), the teacher scores that sequence, and the
loss is the divergence between the two next-token distributions on the student's own response
tokens. In the other steps the same divergence is taken on the data's response tokens (the
teacher's outputs for the batch, cached or not). The divergence is one of :mod:`token_kd`'s
(default GKD's generalised JSD with beta = 0.5). Loss term: ``gkd``.

``on_policy = "sampled_reverse_kl"``: the on-policy steps take instead the per-token reverse KL
of the sampled tokens as the advantage (the "on-policy distillation" recipe of Lu et al. 2025,
Thinking Machines; also the estimator of MiniLLM's policy gradient without its length terms): for
each response token x_t the student sampled, A_t = log p_teacher(x_t) - log p_student(x_t), and
the term is the mean of -sg(A_t) log p_student(x_t). Its gradient is the score-function estimate
of the gradient of the sequence-level reverse KL (the samples come from the current student:
no importance ratio), and it needs only the log-probabilities of the sampled tokens, not a
divergence over the vocabulary at each position (the teacher's logits are still formed a chunk
at a time here). The off-policy steps (``fraction`` < 1) keep ``divergence``: GKD's mixture.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from attrs import field
from attrs import validators as v

from kdlab import Batch, ModelOutput, Requirements, hookimpl
from kdlab.data.loader import batch_seed
from kdlab.engine.types import run_model
from kdlab.methods.lm import check_token_logits
from kdlab.methods.seq_kd import require_text
from kdlab.methods.token_kd import Divergence, token_kd_term
from kdlab.methods.vocab_chunks import RowsTerm, teacher_rows
from kdlab.models.generation import generate, gumbel_noise, response_mask


@attrs.frozen(kw_only=True)
class GKDConfig:
    fraction: float = field(default=0.5, validator=[v.ge(0), v.le(1)])  # share of on-policy steps (lambda)
    divergence: Divergence = "jsd"
    beta: float = field(default=0.5, validator=[v.gt(0), v.lt(1)])
    alpha: float = field(default=0.1, validator=[v.gt(0), v.lt(1)])
    temperature: float = field(default=1.0, validator=v.gt(0))  # of the divergence
    sample_temperature: float = field(default=1.0, validator=v.ge(0))  # of the student's responses; 0: greedy
    max_new_tokens: int = field(default=32, validator=v.ge(1))
    # the loss of the on-policy steps: the divergence above, or the sampled tokens' reverse KL as the advantage
    on_policy: Literal["divergence", "sampled_reverse_kl"] = "divergence"


def on_policy_step(seed: int, step: int, fraction: float) -> bool:
    """Whether training step ``step`` samples from the student: the same answer in every process."""
    draw = torch.rand((), generator=torch.Generator().manual_seed(batch_seed(seed, -2, step)))
    return bool(draw < fraction)


class GKD:
    data_kinds = {"text"}  # kdlab validate refuses it on other data
    config_class = GKDConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return Requirements(teachers=1, terms={"gkd"})

    @hookimpl
    def kdlab_stage_start(self, stage):
        require_text(stage, "gkd")

    @hookimpl
    def kdlab_loss_terms(self, stage, batch, student_out, teacher_outs):
        cfg = self.config
        check_token_logits(student_out, batch.targets, "methods.gkd")
        div = {"divergence": cfg.divergence, "temperature": cfg.temperature, "beta": cfg.beta, "alpha": cfg.alpha}
        if not on_policy_step(stage.recipe.seed, stage.step, cfg.fraction):
            mask = batch.targets >= 0
            divisor = stage.mean_divisor(mask)
            return {"gkd": token_kd_term(student_out, teacher_outs, mask, divisor=divisor, defer=True, **div)}
        text = stage.data.extra["text"]
        prompts = text.splits["train"].prompt_lens[batch.index]
        noise = None
        if cfg.sample_temperature > 0:
            # drawn for the whole global batch, then this rank's rows: N processes sample like one
            sizes = stage.shard_sizes or [len(batch.index)]
            generator = torch.Generator().manual_seed(batch_seed(stage.recipe.seed, -3, stage.step))
            first = sum(sizes[: stage.rank])
            noise = gumbel_noise(generator, sum(sizes), cfg.max_new_tokens,
                                 student_out.logits_shape[-1])[first: first + len(batch.index)]
        was_training = stage.student.training
        stage.student.train(False)  # the student's policy, without dropout
        seq = generate(stage.student, batch.inputs, prompts, max_new_tokens=cfg.max_new_tokens, end_id=text.end_id,
                       pad_id=text.pad_id, temperature=cfg.sample_temperature, noise=noise)
        stage.student.train(was_training)
        mask = response_mask(seq, prompts, text.end_id, text.pad_id)
        x = seq[:, :-1]
        own = Batch(x, torch.where(mask, seq[:, 1:], -1), batch.index)
        out = stage.hook.kdlab_student_forward(stage=stage, batch=own)
        with torch.no_grad():
            scores = [run_model(teacher, own)[0] for teacher in stage.teachers]  # hidden states, if it splits its head
        divisor = stage.mean_divisor(mask)
        if cfg.on_policy == "sampled_reverse_kl":
            return {"gkd": sampled_reverse_kl_term(out, scores, own.targets, divisor=divisor, defer=True)}
        return {"gkd": token_kd_term(out, scores, mask, divisor=divisor, defer=True, **div)}


def sampled_reverse_kl_term(student, teachers: list, targets: torch.Tensor, *, divisor=None, defer: bool = False):
    """The mean over the positions with a target (>= 0) and over ``teachers`` of
    -sg(log p_t(x) - log p_s(x)) * log p_s(x), x the target token (one the student sampled): a
    term whose gradient is the score-function estimate of the reverse KL's (see the module doc)."""
    flat = targets.flatten()
    teachers = [t if isinstance(t, ModelOutput) else ModelOutput(logits=t) for t in teachers]

    def per_token(logits, rows):
        x = flat[rows]
        log_s = torch.log_softmax(logits.float(), -1).gather(-1, x[:, None]).squeeze(-1)
        total = 0.0
        for teacher in teachers:
            with torch.no_grad():
                log_t = torch.log_softmax(teacher_rows(teacher, rows).float(), -1).gather(-1, x[:, None]).squeeze(-1)
            total = total - (log_t - log_s.detach()) * log_s
        return total / len(teachers)

    term = RowsTerm(student, targets >= 0, per_token, divisor)
    return term if defer else term.value()
