import pytest
import torch

from kdlab.metrics.per import error_rate, references
from kdlab.speech.ctc_decoding import beam_decode, greedy_decode


def _frames(labels, classes=4):
    logits = torch.full((len(labels), classes), -10.0)
    logits[torch.arange(len(labels)), torch.tensor(labels)] = 10.0
    return logits


def test_greedy_decoding_merges_repeats_drops_blanks_and_padding():
    batch = torch.stack([_frames([1, 1, 0, 2, 2, 0, 2, 3]), _frames([0, 3, 3, 3, 0, 0, 1, 1])])
    assert greedy_decode(batch, torch.tensor([8, 8])) == [[1, 2, 2, 3], [3, 1]]
    assert greedy_decode(batch, torch.tensor([5, 4])) == [[1, 2], [3]]


def test_per_is_edit_distance_over_reference_length():
    refs = references(torch.tensor([[1, 2, 3, -1], [3, 1, -1, -1]]))
    assert refs == [[1, 2, 3], [3, 1]]
    # one insertion in the first (1 error), one substitution in the second (1 error), 5 phonemes
    assert error_rate([[1, 2, 2, 3], [3, 2]], refs) == pytest.approx(2 / 5)
    assert error_rate(refs, refs) == 0.0


def test_beam_search_decoder_on_a_tiny_example():
    batch = torch.stack([_frames([1, 1, 0, 2, 2, 0, 2, 3])])
    assert beam_decode(batch, torch.tensor([8]), beam_size=4) == [[1, 2, 2, 3]]
    # where greedy picks frame by frame, the beam sums paths: two frames that each prefer blank
    # slightly (0.45) but together make label 1 likely (1 - 0.45^2 > 0.55^2)
    probs = torch.tensor([[[0.45, 0.55, 0.0], [0.45, 0.55, 0.0]]]) + 1e-6
    assert greedy_decode(probs.log(), torch.tensor([2])) == [[1]]
    probs = torch.tensor([[[0.55, 0.45, 0.0], [0.55, 0.45, 0.0]]]) + 1e-6
    assert greedy_decode(probs.log(), torch.tensor([2])) == [[]]
    assert beam_decode(probs.log(), torch.tensor([2]), beam_size=4) == [[1]]
