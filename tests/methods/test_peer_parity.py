"""kdlab's FSP, AB, KDSVD, the FitNets regressor, NKD, USKD, CTKD, FT, SRRL, ViTKD, OFD, MLKD and DIST+ against
the peers' own code: the values and gradients (inputs and the methods' modules) that RepDistiller's,
cls_KD's, CTKD's, mdistiller's, the MLKD authors' and torchdistill's code
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
from kdlab.methods.dist_plus import dist_plus_loss
from kdlab.methods.ft import Paraphraser, ft_loss, translator
from kdlab.methods.mlkd import mlkd_loss
from kdlab.methods.ofd import connector as ofd_connector
from kdlab.methods.ofd import margins, ofd_loss
from kdlab.methods.srrl import connector as srrl_connector
from kdlab.methods.srrl import srrl_loss
from kdlab.methods.vitkd import ViTKDModules, vitkd_loss

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


def _params(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": p for k, p in module.named_parameters()}


def _load_state(module: torch.nn.Module, state: dict) -> None:
    """The peer's state, every tensor of it used and every one of kdlab's module set (but the
    BatchNorm step counters, which the fixtures leave out)."""
    missing, unexpected = module.load_state_dict({k: _t(v) for k, v in state.items()}, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)


def test_ft_matches_repdistiller_with_its_paraphraser_and_translator():
    case = CASES["ft"]
    x = _inputs(case)
    paraphraser = Paraphraser(8, 0.5)
    _load_state(paraphraser, case["paraphraser"])  # the same module layout: the state dicts load as they are
    t = x["t"].detach()
    rec = torch.nn.functional.mse_loss(paraphraser(t), t)
    _check({"value": case["reconstruction"], "grads": case["reconstruction_grads"]}, rec,
           _params("paraphraser", paraphraser))
    trans = translator(4, 8, 0.5).train()
    # kdlab's translator convolutions have no bias (the BatchNorm after each cancels it): the
    # peer's biases are left out, and the loss and gradients still agree
    _load_state(trans, {k.removeprefix("encoder."): v for k, v in case["translator"].items()
                        if not (k.endswith(".bias") and k.removeprefix("encoder.").split(".")[0] in ("0", "3", "6"))})
    with torch.no_grad():
        factor_t = paraphraser.encoder(t)
    loss = 200 * ft_loss(trans(x["s"]), factor_t)
    _check(case, loss, {"s": x["s"], **_params("translator.encoder", trans)})


def test_srrl_matches_cls_kd_with_its_connector_and_the_teachers_head():
    case = CASES["srrl"]
    x = _inputs(case)
    conn = srrl_connector(6, 8).train()
    _load_state(conn, {k: v for k, v in case["modules"].items()})
    head = torch.nn.Linear(8, 10).requires_grad_(False)
    _load_state(head, case["head"])
    loss = srrl_loss(conn(x["s"]), x["t"], x["logits_t"], head, alpha=1.0, beta=5.0)
    _check(case, loss, {"s": x["s"], **_params("connector", conn)})


@pytest.mark.parametrize("name", ["vitkd_align", "vitkd_same"])
def test_vitkd_matches_cls_kd_with_its_modules_and_mask(name):
    case = CASES[name]
    x = _inputs(case)
    ds, dt = x["high_s"].shape[-1], x["high_t"].shape[-1]
    modules = ViTKDModules(ds, dt, 2)
    # cls_KD's layout: align2.*, align.*, mask_token, generation.* (ReLU in place at 1: the same keys)
    modules.load_state_dict({k: _t(v) for k, v in case["modules"].items()})
    torch.manual_seed(case["mask_seed"])
    loss = vitkd_loss(modules, [x["low_s"][:, 0], x["low_s"][:, 1]], [x["low_t"][:, 0], x["low_t"][:, 1]],
                      x["high_s"], x["high_t"])
    _check(case, loss, {"low_s": x["low_s"], "high_s": x["high_s"], **_params("vitkd", modules)})


def test_ofd_matches_mdistiller_with_its_margins_and_connectors():
    case = CASES["ofd"]
    x = _inputs(case)
    bns = []
    for channels, state in zip((8, 12), case["bns"]):
        bn = torch.nn.BatchNorm2d(channels)
        _load_state(bn, state)
        bns.append(bn)
    got = [margins(bn) for bn in bns]
    for m, want in zip(got, case["margins"]):
        assert torch.allclose(m, _t(want), rtol=1e-6, atol=1e-6)
    conns = torch.nn.ModuleList([ofd_connector(4, 8, 1), ofd_connector(6, 12, 1)]).train()
    # mdistiller's ConnectorConvBN: connectors.<i>.<0 conv | 1 bn>, kdlab's ModuleList: <i>.<0 | 1>
    _load_state(conns, {k.removeprefix("connectors."): v for k, v in case["modules"].items()})
    loss = 1e-3 * ofd_loss([c(s) for c, s in zip(conns, (x["s0"], x["s1"]))], [x["t0"], x["t1"]], got)
    _check(case, loss, {"s0": x["s0"], "s1": x["s1"], **{f"connectors.connectors.{k}": p for k, p in conns.named_parameters()}})


def test_mlkd_matches_the_authors_code_with_the_batch_as_both_views():
    case = CASES["mlkd"]
    x = _inputs(case)
    _check(case, mlkd_loss(x["s"], x["t"]), {"s": x["s"]})


def test_dist_plus_matches_torchdistill_but_for_the_sign_of_its_channel_term():
    case = CASES["dist_plus"]
    x = _inputs(case)
    loss = dist_plus_loss(x["s"], x["t"], x["f_s"], x["f_t"])
    # kdlab: + (1 - channel) where torchdistill adds + channel (kdlab/methods/dist_plus.py says why)
    want = {"value": case["value"] - 2 * case["channel"] + 1,
            "grads": {k: {"shape": g["shape"], "data": [a - 2 * b for a, b in zip(g["data"], case["channel_grads"][k]["data"])]}
                      for k, g in case["grads"].items()}}
    _check(want, loss, {"s": x["s"], "f_s": x["f_s"]})
