"""kdlab's FSP, AB, KDSVD, the FitNets regressor, NKD, USKD and CTKD against the peers' own code: the values and
gradients (inputs and the methods' modules) that RepDistiller's, cls_KD's and CTKD's code
computed on the same inputs (fixtures/peer_parity.json, written by benchmarks/parity_peers.py,
which says how to re-make it), to float32 rounding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdlab.methods.ab import ab_loss
from kdlab.methods.ctkd import CTKDConfig, Temperature, ctkd_loss, curriculum
from kdlab.methods.feature_kd import feature_hint_loss, make_adapter
from kdlab.methods.feature_pairs import conv_regressor
from kdlab.methods.fsp import fsp_loss
from kdlab.methods.kdsvd import kdsvd_loss
from kdlab.methods.nkd import nkd_loss
from kdlab.methods.uskd import uskd_loss

CASES = json.loads((Path(__file__).parent / "fixtures" / "peer_parity.json").read_text())["cases"]


def _t(d: dict, grad: bool = False) -> torch.Tensor:
    return torch.tensor(d["data"], dtype=torch.float32).reshape(d["shape"]).requires_grad_(grad)


def _inputs(case) -> dict[str, torch.Tensor]:
    return {k: _t(v, grad=True) for k, v in case["inputs"].items()}


def _check(case, loss: torch.Tensor, named: dict[str, torch.Tensor]) -> None:
    assert loss.item() == pytest.approx(case["value"], rel=1e-5, abs=1e-6)
    grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
    for (name, tensor), g in zip(named.items(), grads):
        want = _t(case["grads"][name])
        got = torch.zeros_like(tensor) if g is None else g
        scale = max(1.0, want.abs().max().item())
        assert (got - want).abs().max().item() <= 1e-5 * scale, name


def test_fsp_matches_repdistiller():
    case = CASES["fsp"]
    x = _inputs(case)
    loss = fsp_loss([x["s0"], x["s1"], x["s2"]], [x["t0"], x["t1"], x["t2"]])
    _check(case, loss, {k: x[k] for k in ("s0", "s1", "s2")})


def test_ab_matches_repdistiller_with_its_connector():
    case = CASES["ab"]
    x = _inputs(case)
    conv = conv_regressor(x["s0"], x["t0"], relu=False).train()
    # RepDistiller's ConvReg names: conv.*, bn.*; kdlab's Sequential: 0.*, 1.*
    state = {k.replace("conv.", "0.").replace("bn.", "1."): _t(v) for k, v in case["modules"].items()}
    state = {k.removeprefix("connectors.0."): v for k, v in state.items() if k.startswith("connectors.0.")}
    conv.load_state_dict(state, strict=False)
    loss = ab_loss([conv(x["s0"]), x["s1"]], [x["t0"], x["t1"]], margin=1.0) * 0.003
    named = {"s0": x["s0"], "s1": x["s1"], "connector.connectors.0.conv.weight": conv[0].weight,
             "connector.connectors.0.conv.bias": conv[0].bias, "connector.connectors.0.bn.weight": conv[1].weight,
             "connector.connectors.0.bn.bias": conv[1].bias}
    _check(case, loss, named)


@pytest.mark.parametrize("name", ["fitnets_down", "fitnets_up"])
def test_the_fitnets_regressor_matches_repdistillers(name):
    case = CASES[name]
    x = _inputs(case)
    reg = make_adapter(x["s"], x["t"]).train()  # the default: the published regressor
    names = {"conv.": "0.", "bn.": "1."}
    state = {}
    for k, v in case["modules"].items():
        for a, b in names.items():
            k = k.replace(a, b)
        state[k] = _t(v)
    reg.load_state_dict(state, strict=False)
    loss = feature_hint_loss(x["s"], x["t"], reg)
    _check(case, loss, {"s": x["s"], "regressor.conv.weight": reg[0].weight, "regressor.conv.bias": reg[0].bias,
                        "regressor.bn.weight": reg[1].weight, "regressor.bn.bias": reg[1].bias})


def test_kdsvd_matches_repdistiller():
    case = CASES["kdsvd"]
    x = _inputs(case)
    loss = kdsvd_loss([x["s0"], x["s1"], x["s2"]], [x["t0"], x["t1"], x["t2"]], k=1)
    _check(case, loss, {k: x[k] for k in ("s0", "s1", "s2")})


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("nkd_")])
def test_nkd_matches_cls_kd(name):
    case = CASES[name]
    x = _inputs(case)
    loss = nkd_loss(x["s"], x["t"], torch.tensor(case["targets"]), **case["settings"])
    _check(case, loss, {"s": x["s"]})


def test_uskd_matches_cls_kd_with_its_weak_classifier():
    case = CASES["uskd"]
    x = _inputs(case)
    fc = torch.nn.Linear(12, 10)
    fc.load_state_dict({k: _t(v) for k, v in case["modules"].items()})
    loss = uskd_loss(x["feature"], x["logits"], torch.tensor(case["targets"]), fc)
    _check(case, loss, {"feature": x["feature"], "logits": x["logits"], "fc.weight": fc.weight, "fc.bias": fc.bias})


@pytest.mark.parametrize("name", [n for n in CASES if n.startswith("ctkd_")])
def test_ctkd_matches_the_authors_code_including_the_reversed_temperature_gradient(name):
    case = CASES[name]
    x = _inputs(case)
    cfg = CTKDConfig()
    assert curriculum(case["epoch"], cfg) == pytest.approx(case["lambda"], abs=1e-12)
    module = Temperature()
    tau = module(curriculum(case["epoch"], cfg), cfg.t_start, cfg.t_end)
    assert tau.item() == pytest.approx(case["temperature"], rel=1e-6)
    loss = cfg.weight * ctkd_loss(x["s"], x["t"].detach(), tau)
    _check(case, loss, {"s": x["s"], "theta": module.theta})
