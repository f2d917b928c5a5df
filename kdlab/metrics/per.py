"""Phoneme error rate for CTC models, on by default for sequence outputs.

PER = sum of edit distances (torchaudio.functional.edit_distance) between decoded and reference
phoneme sequences / sum of reference lengths, both summed batch by batch. Greedy decoding is vectorised over the batch
(argmax per frame, repeats merged, blanks dropped, frames past the valid length ignored). With
``[plugins.per] beam_size = N`` (N > 0), the test split is also decoded by torchaudio's
flashlight-text beam search (``ctc_decoder``, lexicon-free, no language model) and reported as
``beam_per``. (ctcdecode, the usual choice, has no wheels and its sdist downloads its
dependencies at build time, which these machines cannot; flashlight-text ships wheels.)
"""

from __future__ import annotations

import attrs
import torch
from attrs import field
from attrs import validators as v

from kdlab import hookimpl
from kdlab.speech.ctc_decoding import beam_decode, greedy_decode, require_beam_search


@attrs.frozen(kw_only=True)
class PERConfig:
    enabled: bool = True
    beam_size: int = field(default=0, validator=v.ge(0))  # 0: greedy decoding only
    beam_splits: tuple[str, ...] = ("test",)


def references(targets: torch.Tensor) -> list[list[int]]:
    return [row[row >= 0].tolist() for row in targets]


def edit_distance(hyps: list[list[int]], refs: list[list[int]]) -> int:
    """The summed edit distance of the pairs."""
    import torchaudio  # here, not at import: a torchaudio that fails to load stops only speech runs

    return sum(torchaudio.functional.edit_distance(r, h) for h, r in zip(hyps, refs))


def error_rate(hyps: list[list[int]], refs: list[list[int]]) -> float:
    return edit_distance(hyps, refs) / max(1, sum(len(r) for r in refs))


class PER:
    default_enabled = True
    data_kinds = {"ctc"}

    config_class = PERConfig

    def __init__(self, config):
        self.config = config
        self.counts: dict[str, tuple[int, int]] = {}

    @hookimpl
    def kdlab_stage_start(self, stage):
        if self.config.beam_size:
            require_beam_search("plugins.per.beam_size")

    @hookimpl
    def kdlab_eval_start(self):
        self.counts = {}  # metric -> [edit distance, reference length], summed over the batches

    @hookimpl
    def kdlab_eval_batch(self, split, batch, output):
        if output.lengths is None or output.logits.ndim != 3:
            return
        refs = references(batch.targets)
        self._add("per", greedy_decode(output.logits, output.lengths), refs)
        cfg = self.config
        if cfg.beam_size and split in cfg.beam_splits:
            self._add("beam_per", beam_decode(output.logits, output.lengths, cfg.beam_size), refs)

    def _add(self, name: str, hyps: list[list[int]], refs: list[list[int]]) -> None:
        errors, length = self.counts.get(name, (0, 0))
        self.counts[name] = (errors + edit_distance(hyps, refs), length + sum(len(r) for r in refs))

    @hookimpl
    def kdlab_eval_metrics(self):
        if not self.counts:
            return None
        return {name: errors / max(1, length) for name, (errors, length) in self.counts.items()}
