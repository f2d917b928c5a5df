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


def test_plugin_accumulates_the_split_batch_by_batch_and_only_for_two_classes():
    from kdlab import Batch

    plugin = AuFaFr()
    torch.manual_seed(0)
    logits, labels = torch.randn(10, 2), torch.arange(10) % 2
    plugin.kdlab_eval_start()
    for part in torch.arange(10).split(4):
        plugin.kdlab_eval_batch(batch=Batch(None, labels[part], part), output=ModelOutput(logits[part]))
    probs = torch.softmax(logits, 1)[:, 1].numpy()
    assert plugin.kdlab_eval_metrics() == {"au_fa_fr": pytest.approx(au_fa_fr(probs, labels.numpy())),
                                           "au_fa_fr_class": pytest.approx(au_fa_fr_class(probs, labels.numpy()))}
    assert au_fa_fr(probs, labels.numpy()) > 0
    plugin.kdlab_eval_start()
    plugin.kdlab_eval_batch(batch=Batch(None, labels[:2], torch.arange(2)), output=ModelOutput(torch.zeros(2, 3)))
    assert plugin.kdlab_eval_metrics() is None
