import pytest
import torch

from kdlab import KdlabError
from kdlab.engine.stats import count_macs
from kdlab.models.crnn import CRNN, CRNNConfig


def test_reference_size_and_shapes():
    model = CRNN(CRNNConfig(), 40, 2)
    # seed 001's teacher: about 70k parameters
    assert 65_000 < sum(p.numel() for p in model.parameters()) < 75_000
    assert model(torch.randn(3, 40, 98)).shape == (3, 2)


def test_macs_include_the_gru():
    # conv: 8 x 18 x 10 outputs, 100 MACs each; GRU: 10 steps of 3 gates (input and hidden)
    model = CRNN(CRNNConfig(), 40, 2).train(False)
    conv = 8 * 18 * 10 * 5 * 20
    gru = 10 * 3 * (144 * 64 + 64 * 64) + 10 * 3 * (64 * 64 + 64 * 64)
    macs = count_macs(model, torch.zeros(1, 40, 98))
    assert macs >= conv + gru
    assert macs < 1.1 * (conv + gru)


def test_smaller_settings_are_smaller():
    big = CRNN(CRNNConfig(), 40, 2)
    small = CRNN(CRNNConfig(conv_channels=2, gru_layers=1, hidden=22, attention=8), 40, 2)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(big) > 10 * count(small)


def test_too_short_input_is_an_error():
    with pytest.raises(KdlabError, match="fewer than the kernel's 20"):
        CRNN(CRNNConfig(), 40, 2)(torch.zeros(1, 40, 10))
