"""Attention transfer, SP, RKD, PKT, CC and NST: the pure losses against values computed by hand
(plain Python over small tensors), their published invariances, and each method's round trip
through kdlab.testing (alone, with logit KD, and interrupted then resumed)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from kdlab.methods.attention import attention_loss
from kdlab.methods.cc import CCConfig, cc_loss
from kdlab.methods.nst import nst_loss
from kdlab.methods.pkt import pkt_loss
from kdlab.methods.rkd import RKDConfig, rkd_loss
from kdlab.methods.sp import sp_loss

ES = [[1.0, 0.0], [0.5, 2.0], [-1.0, 1.0]]  # 3 student embeddings
ET = [[0.0, 1.0, 1.0], [2.0, 0.5, 0.0], [1.0, -1.0, 0.5]]  # 3 teacher embeddings, another width


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _norm(a):
    return math.sqrt(_dot(a, a))


def _unit(a):
    return [x / _norm(a) for x in a]


def _huber(a, b):
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def test_sp_compares_row_normalised_gram_matrices():
    def g(e):
        rows = [[_dot(a, b) for b in e] for a in e]
        return [_unit(r) for r in rows]

    gs, gt = g(ES), g(ET)
    want = sum((gt[i][j] - gs[i][j]) ** 2 for i in range(3) for j in range(3)) / 9
    assert sp_loss(torch.tensor(ES), torch.tensor(ET)).item() == pytest.approx(want, rel=1e-5)


def test_rkd_distance_and_angle_terms():
    def dist(e):
        d = [[_norm([x - y for x, y in zip(a, b)]) for b in e] for a in e]
        mu = sum(v for r in d for v in r if v > 0) / 6
        return [v / mu for r in d for v in r]

    def angles(e):
        out = []
        for j, i, k in itertools.product(range(3), repeat=3):
            u = [x - y for x, y in zip(e[i], e[j])]
            w = [x - y for x, y in zip(e[k], e[j])]
            out.append(_dot(_unit(u), _unit(w)) if _norm(u) and _norm(w) else 0.0)
        return out

    d = sum(_huber(a, b) for a, b in zip(dist(ES), dist(ET))) / 9
    a = sum(_huber(x, y) for x, y in zip(angles(ES), angles(ET))) / 27
    got = rkd_loss(torch.tensor(ES), torch.tensor(ET), RKDConfig(distance_weight=2.0, angle_weight=3.0))
    assert got.item() == pytest.approx(2.0 * d + 3.0 * a, rel=1e-5)
    # distances are scale-free: a student that is the teacher scaled scores zero
    scaled = rkd_loss(torch.tensor(ET) * 5, torch.tensor(ET), RKDConfig())
    assert scaled.item() == pytest.approx(0, abs=1e-5)
    emb = torch.tensor(ES, requires_grad=True)
    rkd_loss(emb, torch.tensor(ET), RKDConfig()).backward()
    assert torch.isfinite(emb.grad).all()  # zero distances on the diagonal do not poison it


def test_pkt_matches_conditional_similarity_distributions():
    def cond(e):
        k = [[(_dot(_unit(a), _unit(b)) + 1) / 2 for b in e] for a in e]
        return [[v / sum(r) for v in r] for r in k]

    ps, pt = cond(ES), cond(ET)
    eps = 1e-7
    want = sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps)) for i in range(3) for j in range(3)) / 9
    assert pkt_loss(torch.tensor(ES), torch.tensor(ET)).item() == pytest.approx(want, rel=1e-4)


def test_cc_compares_gaussian_kernel_correlations():
    gamma = 0.7

    def corr(e):
        u = [_unit(a) for a in e]
        return [[math.exp(-gamma * sum((x - y) ** 2 for x, y in zip(a, b))) for b in u] for a in u]

    cs, ct = corr(ES), corr(ET)
    want = sum((ct[i][j] - cs[i][j]) ** 2 for i in range(3) for j in range(3)) / 9
    assert cc_loss(torch.tensor(ES), torch.tensor(ET), CCConfig(gamma=gamma)).item() == pytest.approx(want, rel=1e-5)


MS = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[0.5, 0.0], [1.0, 3.0]]]])  # (1, 2, 2, 2) student map
MT = torch.tensor([[[[0.0, 1.0], [2.0, 1.0]], [[1.0, 1.0], [0.0, 2.0]], [[3.0, 0.0], [1.0, 0.0]]]])  # 3 channels


def test_attention_transfer_compares_normalised_channel_energy():
    def at(m):
        flat = [sum(m[0][c].flatten()[i].item() ** 2 for c in range(m.shape[1])) / m.shape[1] for i in range(4)]
        return _unit(flat)

    want = sum((a - b) ** 2 for a, b in zip(at(MS), at(MT))) / 4
    assert attention_loss(MS, MT, 2.0).item() == pytest.approx(want, rel=1e-5)
    # a larger teacher map is pooled to the student's size
    big = torch.nn.functional.interpolate(MT, scale_factor=2, mode="nearest")
    assert attention_loss(MS, big, 2.0).item() == pytest.approx(want, rel=1e-5)


def test_nst_is_the_polynomial_mmd_between_channel_distributions():
    def chans(m):
        return [_unit(m[0][c].flatten().tolist()) for c in range(m.shape[1])]

    s, t = chans(MS), chans(MT)

    def k(a, b):
        return sum(_dot(x, y) ** 2 for x in a for y in b) / (len(a) * len(b))

    want = k(t, t) + k(s, s) - 2 * k(s, t)
    assert nst_loss(MS, MT).item() == pytest.approx(want, rel=1e-5)
    assert nst_loss(MT, MT).item() == pytest.approx(0, abs=1e-6)


def test_nst_is_a_per_sample_mean_so_count_weighted_shares_give_the_batch_gradient():
    torch.manual_seed(0)
    s = torch.relu(torch.randn(51, 8, 2, 2)).requires_grad_()
    t = torch.relu(torch.randn(51, 8, 2, 2))
    whole = torch.autograd.grad(nst_loss(s, t), s)[0]
    shares = torch.autograd.grad(nst_loss(s[:26], t[:26]) * 26 / 51 + nst_loss(s[26:], t[26:]) * 25 / 51, s)[0]
    assert torch.allclose(whole, shares, atol=1e-7)


def test_vid_is_the_gaussian_negative_log_likelihood_per_channel():
    from kdlab.methods.vid import VIDHead, vid_loss

    mean, var = MS[:, :2], torch.tensor([0.5, 2.0])
    target = MT[:, :2]
    want = sum(0.5 * ((mean[0, c].flatten()[i].item() - target[0, c].flatten()[i].item()) ** 2 / var[c].item()
                      + math.log(var[c].item())) for c in range(2) for i in range(4)) / 8
    assert vid_loss(mean, var, target).item() == pytest.approx(want, rel=1e-6)
    head = VIDHead(2, 3, init_var=5.0, eps=1e-5)
    assert torch.allclose(head.variance(), torch.full((3,), 5.0))
    assert head.mean(MS).shape == MT.shape
    # the regressor is three bias-free 1x1 convolutions (the paper's, RepDistiller's): a zero
    # student feature maps to a zero mean, and the parameters are the weights and variances alone
    assert head.mean(torch.zeros_like(MS)).abs().max() == 0
    assert sum(p.numel() for p in head.parameters()) == 2 * 3 + 3 * 3 + 3 * 3 + 3


def test_crd_nce_contrast_and_memory_update_by_hand():
    from kdlab.methods.crd import contrast, nce_loss, update_memory

    scores = [[0.5, 0.1, 0.3], [2.0, 0.2, 0.05]]  # positive first, K = 2 negatives
    n = 10
    noise = 2 / n
    want = -sum(math.log(r[0] / (r[0] + noise + 1e-7)) + sum(math.log(noise / (x + noise + 1e-7)) for x in r[1:])
                for r in scores) / 2
    assert nce_loss(torch.tensor(scores), n).item() == pytest.approx(want, rel=1e-6)
    memory = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    anchor = torch.tensor([[0.8, 0.6]])
    got = contrast(anchor, memory, torch.tensor([[2, 0, 1]]), temperature=0.5)
    assert got[0].tolist() == pytest.approx([math.exp(0.96 / 0.5), math.exp(0.8 / 0.5), math.exp(0.6 / 0.5)], rel=1e-6)
    update_memory(memory, torch.tensor([1]), torch.tensor([[1.0, 0.0]]), momentum=0.5)
    assert memory[1].tolist() == pytest.approx([math.sqrt(0.5), math.sqrt(0.5)])
    assert memory[0].tolist() == [1.0, 0.0]  # other rows untouched


def test_reviewkd_defaults_are_mdistillers_cifar100_config():
    from kdlab.methods.reviewkd import ReviewKDConfig

    # mdistiller configs/cifar100/reviewkd.yaml: REVIEWKD_WEIGHT 5.0; engine/cfg.py: WARMUP_EPOCHS 20
    assert (ReviewKDConfig().weight, ReviewKDConfig().warmup_epochs) == (5.0, 20)


def test_reviewkd_hcl_by_hand_and_fusion_shapes():
    from kdlab.methods.reviewkd import ReviewHead, hcl_loss

    fs, ft = MS, MT[:, :2]  # (1, 2, 2, 2): only the 1x1 pool is smaller than the map
    mse = ((fs - ft) ** 2).mean().item()
    pooled = ((fs.mean((2, 3)) - ft.mean((2, 3))) ** 2).mean().item()
    assert hcl_loss([fs], [ft]).item() == pytest.approx((mse + 0.5 * pooled) / 1.5, rel=1e-6)
    big_s, big_t = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    levels = [((big_s - big_t) ** 2).mean().item()] + [
        ((torch.nn.functional.adaptive_avg_pool2d(big_s, k) - torch.nn.functional.adaptive_avg_pool2d(big_t, k)) ** 2)
        .mean().item() for k in (4, 2, 1)]
    want = (levels[0] + levels[1] / 2 + levels[2] / 4 + levels[3] / 8) / (1 + 1 / 2 + 1 / 4 + 1 / 8)
    assert hcl_loss([big_s], [big_t]).item() == pytest.approx(want, rel=1e-5)
    # fused student maps take the teacher's channels and sizes, deepest (a vector) first
    head = ReviewHead([4, 8, 16], [6, 12, 24], max_mid=512)
    student = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4), torch.randn(2, 16, 1, 1)]
    fused = head(student, [(8, 8), (4, 4), (1, 1)])
    assert [tuple(f.shape) for f in fused] == [(2, 6, 8, 8), (2, 12, 4, 4), (2, 24, 1, 1)]


# Each method's round trip (alone, composed, every kind of stop and resume) is
# tests/methods/test_conformance.py::test_method_passes_check_method.


def test_nst_and_vid_take_several_tap_pairs_and_sum_them(tmp_path):
    """NST and VID over a list of tap pairs (as published over three stages): the recipe keys
    take a list, and the term is the sum over the pairs (one VID regressor per pair)."""
    import attrs

    from kdlab import ModelOutput
    from kdlab.engine.recipe import CONVERTER
    from kdlab.methods.nst import NSTConfig, NST, nst_loss
    from kdlab.methods.vid import VID, VIDConfig

    g = torch.Generator().manual_seed(0)
    feats = {"a": torch.randn(4, 3, 4, 4, generator=g), "b": torch.randn(4, 5, 2, 2, generator=g)}
    tfeats = {"a": torch.randn(4, 6, 4, 4, generator=g), "b": torch.randn(4, 2, 2, 2, generator=g)}
    student, teachers = ModelOutput(torch.zeros(4, 2), feats), [ModelOutput(torch.zeros(4, 2), tfeats)]
    cfg = CONVERTER.structure({"student": ["a", "b"], "teacher": ["a", "b"]}, NSTConfig)
    assert cfg.student == ("a", "b")
    got = NST(cfg).kdlab_loss_terms(None, None, student, teachers)["nst"]
    want = 50.0 * (nst_loss(feats["a"], tfeats["a"]) + nst_loss(feats["b"], tfeats["b"]))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    one = CONVERTER.structure({"student": "a", "teacher": "a"}, VIDConfig)
    two = attrs.evolve(one, student=("a", "b"), teacher=("a", "b"))
    vid_one, vid_two = VID(one), VID(two)
    heads = vid_two.kdlab_extra_modules(None, (student, teachers))["vid"]
    assert len(heads) == 2
    stage = type("S", (), {"extra": {"vid": heads}})()
    single = type("S", (), {"extra": {"vid": heads[0]}})()
    both = vid_two.kdlab_loss_terms(stage, None, student, teachers)["vid"]
    first = vid_one.kdlab_loss_terms(single, None, student, teachers)["vid"]
    second = VID(attrs.evolve(one, student="b", teacher="b")).kdlab_loss_terms(
        type("S", (), {"extra": {"vid": heads[1]}})(), None, student, teachers)["vid"]
    assert both.item() == pytest.approx((first + second).item(), rel=1e-6)
