"""CTC decoding, shared by the ``per`` metric and ``kdlab transcribe``: greedy best path
(vectorised over the batch) and beam search through torchaudio's ``ctc_decoder``
(flashlight-text, lexicon-free, no language model; the ``speech`` extra).

Class 0 is the CTC blank: the phoneme data set puts ``<blank>`` first in its classes.
"""

from __future__ import annotations

import torch

from kdlab.engine.errors import missing_extra

BLANK = 0


def greedy_decode(logits: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Best path per utterance: argmax per frame, merge repeats, drop blanks and padding."""
    best = logits.argmax(-1)  # (B, T)
    frames = torch.arange(best.shape[1], device=best.device)[None]
    changed = torch.ones_like(best, dtype=torch.bool)
    changed[:, 1:] = best[:, 1:] != best[:, :-1]
    keep = changed & (best != BLANK) & (frames < lengths[:, None])
    counts = keep.sum(1).tolist()
    return [seq.tolist() for seq in torch.split(best[keep], counts)]





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


def require_beam_search(feature: str) -> None:
    """Fail early, naming the extra, when flashlight-text (beam search) is not installed."""
    try:
        import flashlight.lib.text  # noqa: F401 - what torchaudio's ctc_decoder needs
    except ImportError as exc:
        raise missing_extra("speech", "flashlight-text", feature) from exc
