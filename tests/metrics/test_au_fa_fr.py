import numpy as np
import pytest
import torch

from kdlab import ModelOutput
from kdlab.metrics.au_fa_fr import AuFaFr, au_fa_fr, au_fa_fr_class


def test_perfect_detector_has_zero_area():
    assert au_fa_fr(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 1, 0, 1])) == 0.0


def test_hand_computed_values():
    # one keyword at 0.2, one negative at 0.9: thresholds 0, .2, .9, 1
    # FA/N = .5 .5 .5 0, FR/N = 0 0 .5 .5 -> area .5 * .5
    assert au_fa_fr(np.array([0.9, 0.2]), np.array([0, 1])) == pytest.approx(0.25)
    # per-class normalisation (the course's variant) doubles both axes here
    assert au_fa_fr_class(np.array([0.9, 0.2]), np.array([0, 1])) == pytest.approx(1.0)
    # negatives .3 .6, keywords .5 .9 (N = 4): thresholds 0 .3 .5 .6 .9 1
    # FA = 2 2 1 1 0 0, FR = 0 0 0 1 1 2; the only area is FA 1 -> 0 at FR 1: (1/4) * (1/4)
    probs, labels = np.array([0.3, 0.5, 0.6, 0.9]), np.array([0, 1, 0, 1])
    assert au_fa_fr(probs, labels) == pytest.approx(1 / 16)


def test_plugin_only_for_two_classes():
    plugin = AuFaFr()
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    out = plugin.kdlab_eval_metrics(stage=None, split="val", output=ModelOutput(logits), targets=torch.tensor([0, 1]))
    assert out == {"au_fa_fr": 0.0, "au_fa_fr_class": 0.0}
    assert plugin.kdlab_eval_metrics(stage=None, split="val", output=ModelOutput(torch.zeros(2, 3)),
                                     targets=torch.tensor([0, 1])) is None
