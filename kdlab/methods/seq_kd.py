"""Sequence-level knowledge distillation (Kim and Rush 2016, "Sequence-Level Knowledge
Distillation"): the teacher writes the response of every training dialogue once (greedy, or
sampled at ``temperature`` from a generator seeded by the recipe), and the student is trained
with next-token cross-entropy on the teacher's responses in the dialogue's context. Mix with
``lm`` on the references through ``loss_weights`` (Kim and Rush's "sequence-level interpolation"
picks among teacher beams instead; here both losses are kept).

The responses are generated at stage start for the text data set's training dialogues (their
last agent turn) and kept on the training device; with ``dir`` set they are also saved there, in
a file named by a key over the teacher's weights, the data and these settings, and read back
(``weights_only``) by a later run with the same key. Every process of ``--nproc N`` makes the
same responses (greedy, or the same seeded draws). Loss term: ``seq_kd``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import attrs
import torch
from attrs import field
from attrs import validators as v

from kdlab import Batch, KdlabError, Requirements, hookimpl
from kdlab.engine import checkpoint
from kdlab.methods.lm import lm_loss
from kdlab.models.generation import generate, gumbel_noise, response_mask

log = logging.getLogger("kdlab")


@attrs.frozen(kw_only=True)
class SeqKDConfig:
    temperature: float = field(default=0.0, validator=v.ge(0))  # 0: greedy
    max_new_tokens: int = field(default=32, validator=v.ge(1))
    dir: str | None = None  # where generated responses are kept between runs


def require_text(stage, method: str):
    """The text data set's dialogue information, or a one-line error naming the method."""
    text = stage.data.extra.get("text")
    if text is None or "train" not in text.splits:
        raise KdlabError(f"stages.{stage.name}.methods.{method} needs dialogues from the text data set "
                         "(data.dataset = \"text\" with .jsonl files)")
    return text


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, t in model.state_dict().items():
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def teacher_sequences(teacher, inputs: torch.Tensor, prompt_lens: torch.Tensor, *, text, cfg: SeqKDConfig,
                      seed: int, device, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of the prompts continued by the teacher; targets only on the response."""
    generator = torch.Generator().manual_seed(seed) if cfg.temperature > 0 else None
    rows = []
    for start in range(0, len(inputs), batch_size):
        x, p = inputs[start: start + batch_size].to(device), prompt_lens[start: start + batch_size]
        noise = None if generator is None else gumbel_noise(generator, len(x), cfg.max_new_tokens,
                                                              text.tokenizer.get_vocab_size(with_added_tokens=True))
        seq = generate(teacher, x, p, max_new_tokens=cfg.max_new_tokens, end_id=text.end_id, pad_id=text.pad_id,
                       temperature=cfg.temperature, noise=noise)
        # back to the data's width, so every row has the same shape (one extra position: targets shift)
        full = torch.full((len(x), inputs.shape[1] + 1), text.pad_id, dtype=torch.long, device=device)
        full[:, : seq.shape[1]] = seq
        rows.append(full)
    seqs = torch.cat(rows)
    targets = torch.where(response_mask(seqs, prompt_lens.to(device), text.end_id, text.pad_id), seqs[:, 1:], -1)
    return seqs[:, :-1].contiguous(), targets


class SeqKD:
    data_kinds = {"text"}  # kdlab validate refuses it on other data
    config_class = SeqKDConfig

    def __init__(self, config):
        self.config = config
        self.inputs = self.targets = None

    @staticmethod
    def requires(config, stage):
        return Requirements(teachers=1, terms={"seq_kd"})

    @hookimpl
    def kdlab_stage_start(self, stage):
        text = require_text(stage, "seq_kd")
        cfg, split = self.config, text.splits["train"]
        key = hashlib.sha256(json.dumps([weights_digest(stage.teachers[0]), stage.data.key, attrs.asdict(cfg),
                                         stage.recipe.seed], sort_keys=True, default=str).encode()).hexdigest()[:16]
        path = Path(cfg.dir) / f"seq_kd-{key}.pt" if cfg.dir else None
        if path is not None and path.is_file():
            saved = checkpoint.load(path, map_location=stage.device)
            self.inputs, self.targets = saved["inputs"], saved["targets"]
            log.info("seq_kd: teacher responses read from %s", path)
            return
        log.info("seq_kd: the teacher writes %d responses (up to %d tokens each)", len(split.inputs), cfg.max_new_tokens)
        self.inputs, self.targets = teacher_sequences(
            stage.teachers[0], split.inputs, split.prompt_lens, text=text, cfg=cfg, seed=stage.recipe.seed,
            device=stage.device, batch_size=getattr(stage.recipe.data.config, "eval_batch_size", 64))
        log.info("seq_kd: the teacher wrote %d responses (%d tokens)", len(self.inputs), int((self.targets >= 0).sum()))
        if path is not None and stage.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            checkpoint.save({"inputs": self.inputs.cpu(), "targets": self.targets.cpu()}, path)

    @hookimpl
    def kdlab_loss_terms(self, stage, batch):
        idx = batch.index.to(self.inputs.device)
        own = Batch(self.inputs[idx], self.targets[idx], batch.index)
        out = stage.hook.kdlab_student_forward(stage=stage, batch=own)
        return {"seq_kd": lm_loss(out, own.targets, divisor=stage.mean_divisor(own.targets >= 0), defer=True)}

    @hookimpl
    def kdlab_stage_end(self, stage):
        self.inputs = self.targets = None
