"""Phoneme error rate for CTC models, on by default for sequence outputs.

PER = sum of edit distances (torchaudio.functional.edit_distance) between decoded and reference
phoneme sequences / sum of reference lengths. Greedy decoding is vectorised over the batch
(argmax per frame, repeats merged, blanks dropped, frames past the valid length ignored). With
``[plugins.per] beam_size = N`` (N > 0), the test split is also decoded by torchaudio's
flashlight-text beam search (``ctc_decoder``, lexicon-free, no language model) and reported as
``beam_per``. (ctcdecode, the usual choice, has no wheels and its sdist downloads its
dependencies at build time, which these machines cannot; flashlight-text ships wheels.)
"""

from __future__ import annotations

import attrs
import torch
import torchaudio
from attrs import field
from attrs import validators as v

from kdlab import KdlabError, hookimpl
from kdlab.plugins.ctc import BLANK


@attrs.frozen(kw_only=True)
class PERConfig:
    enabled: bool = True
    beam_size: int = field(default=0, validator=v.ge(0))  # 0: greedy decoding only
    beam_splits: tuple[str, ...] = ("test",)


def greedy_decode(logits: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Best path per utterance: argmax per frame, merge repeats, drop blanks and padding."""
    best = logits.argmax(-1)  # (B, T)
    frames = torch.arange(best.shape[1], device=best.device)[None]
    changed = torch.ones_like(best, dtype=torch.bool)
    changed[:, 1:] = best[:, 1:] != best[:, :-1]
    keep = changed & (best != BLANK) & (frames < lengths[:, None])
    counts = keep.sum(1).tolist()
    return [seq.tolist() for seq in torch.split(best[keep], counts)]


def references(targets: torch.Tensor) -> list[list[int]]:
    return [row[row >= 0].tolist() for row in targets]


def error_rate(hyps: list[list[int]], refs: list[list[int]]) -> float:
    errors = sum(torchaudio.functional.edit_distance(r, h) for h, r in zip(hyps, refs))
    return errors / max(1, sum(len(r) for r in refs))


def beam_decode(logits: torch.Tensor, lengths: torch.Tensor, beam_size: int) -> list[list[int]]:
    from torchaudio.models.decoder import ctc_decoder

    # tokens are class indices as strings; the silence token is required by the decoder and
    # must be in the token set, so it is the blank (lexicon-free decoding never inserts it)
    tokens = [str(i) for i in range(logits.shape[-1])]
    decoder = ctc_decoder(lexicon=None, tokens=tokens, beam_size=beam_size, blank_token=str(BLANK),
                          sil_token=str(BLANK), nbest=1, log_add=True)
    emissions = torch.log_softmax(logits.float(), -1).cpu().contiguous()
    results = decoder(emissions, lengths.cpu().to(torch.int32))
    return [[int(t) for t in r[0].tokens.tolist() if int(t) != BLANK] for r in results]


class PER:
    default_enabled = True

    @hookimpl
    def kdlab_config_class(self):
        return PERConfig

    @hookimpl
    def kdlab_stage_start(self, stage):
        if stage.config_for(self).beam_size:
            try:
                import flashlight.lib.text  # noqa: F401 - what torchaudio's ctc_decoder needs
            except ImportError as exc:
                raise KdlabError("plugins.per.beam_size needs the flashlight-text package "
                                 "(pip install flashlight-text), or set beam_size = 0") from exc

    @hookimpl
    def kdlab_eval_metrics(self, stage, split, output, targets):
        if output.lengths is None or output.logits.ndim != 3:
            return None
        refs = references(targets)
        metrics = {"per": error_rate(greedy_decode(output.logits, output.lengths), refs)}
        cfg = stage.config_for(self)
        if cfg.beam_size and split in cfg.beam_splits:
            metrics["beam_per"] = error_rate(beam_decode(output.logits, output.lengths, cfg.beam_size), refs)
        return metrics
