"""Reference outputs of the peers' own code for kdlab's methods checked against them (issue #31
item 3): loss values and gradients (inputs and the method's modules) on small seeded inputs,
written to ``tests/methods/fixtures/peer_parity.json``, which tests/methods/test_peer_parity.py
compares kdlab's code with (to 1e-5, float32).

    git clone https://github.com/HobbitLong/RepDistiller   /tmp/peers/RepDistiller   # at b84f547
    git clone https://github.com/yzd-v/cls_KD              /tmp/peers/cls_KD         # at 1e5d48f
    git clone https://github.com/zhengli97/CTKD            /tmp/peers/CTKD           # at 7d52522
    python -m benchmarks.parity_peers --repdistiller /tmp/peers/RepDistiller --cls-kd /tmp/peers/cls_KD \\
        --ctkd /tmp/peers/CTKD [--write tests/methods/fixtures/peer_parity.json]

Cases: FSP, AB (with its connectors), KDSVD (RepDistiller's distiller_zoo), FitNets' hint
regressor (its models/util.py ConvReg, with the MSE of distiller_zoo/FitNet.py); NKD, USKD (with its
weak classifier; cls_KD's mmcls/models/dis_losses); CTKD (its global temperature with the
gradient reversal, models/temp_global.py, and its KD loss, distiller_zoo/KD.py). Only torch is
needed: the peers' CUDA calls (``.cuda()``) are made no-ops and cls_KD's mmcls registry is a
stub, so that their loss code runs unchanged on the CPU. Nothing of kdlab is imported here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent.parent / "tests" / "methods" / "fixtures" / "peer_parity.json"
N, CLASSES = 4, 10


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tensor(t: torch.Tensor) -> dict:
    return {"shape": list(t.shape), "data": [float(f"{x:.9g}") for x in t.detach().reshape(-1).tolist()]}  # float32's digits


def _inputs(seed: int, **shapes) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(*s, generator=g) * 2).requires_grad_() for k, s in shapes.items()}


def _grads(loss: torch.Tensor, named: dict[str, torch.Tensor]) -> dict:
    grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
    return {k: _tensor(g if g is not None else torch.zeros_like(t)) for (k, t), g in zip(named.items(), grads)}


def repdistiller_cases(root: Path) -> dict:
    sys.path.insert(0, str(root))
    fsp_mod = _load(root / "distiller_zoo" / "FSP.py", "rd_fsp")
    ab_mod = _load(root / "distiller_zoo" / "AB.py", "rd_ab")
    svd_mod = _load(root / "distiller_zoo" / "KDSVD.py", "rd_kdsvd")
    util = _load(root / "models" / "util.py", "rd_util")
    cases = {}

    # FSP: three taps each, student and teacher of equal channels, sizes 8, 8, 4
    x = _inputs(1, s0=(N, 3, 8, 8), s1=(N, 5, 8, 8), s2=(N, 5, 4, 4), t0=(N, 3, 8, 8), t1=(N, 5, 8, 8),
                t2=(N, 5, 4, 4))
    s, t = [x["s0"], x["s1"], x["s2"]], [x["t0"], x["t1"], x["t2"]]
    fsp = fsp_mod.FSP([f.shape for f in s], [f.shape for f in t])
    loss = sum(fsp(s, t))
    cases["fsp"] = {"inputs": {k: _tensor(v) for k, v in x.items()}, "value": loss.item(),
                    "grads": _grads(loss, {k: x[k] for k in ("s0", "s1", "s2")})}

    # AB: pair 1 needs a connector (3 -> 5 channels at 8x8), pair 2 none (equal shapes)
    x = _inputs(2, s0=(N, 3, 8, 8), s1=(N, 5, 4, 4), t0=(N, 5, 8, 8), t1=(N, 5, 4, 4))
    s, t = [x["s0"], x["s1"]], [x["t0"], x["t1"]]
    torch.manual_seed(3)
    connector = util.Connector([f.shape for f in s], [f.shape for f in t]).train()
    ab = ab_mod.ABLoss(len(s), margin=1.0)
    loss = sum(ab(connector(s), t))
    named = {"s0": x["s0"], "s1": x["s1"], **{f"connector.{k}": p for k, p in connector.named_parameters()}}
    cases["ab"] = {"inputs": {k: _tensor(v) for k, v in x.items()},
                   "modules": {k: _tensor(v) for k, v in connector.state_dict().items() if v.is_floating_point()},
                   "value": loss.item(), "grads": _grads(loss, named)}

    # FitNets: the hint regressor (ConvReg with ReLU) and MSE, a map twice the teacher's size and half
    for name, s_size, t_size in (("fitnets_down", 8, 4), ("fitnets_up", 4, 8)):
        x = _inputs(11, s=(N, 3, s_size, s_size), t=(N, 5, t_size, t_size))
        torch.manual_seed(12)
        reg = util.ConvReg(x["s"].shape, x["t"].shape, use_relu=True).train()
        loss = torch.nn.functional.mse_loss(reg(x["s"]), x["t"])
        named = {"s": x["s"], **{f"regressor.{k}": p for k, p in reg.named_parameters()}}
        cases[name] = {"inputs": {k: _tensor(v) for k, v in x.items()},
                       "modules": {k: _tensor(v) for k, v in reg.state_dict().items() if v.is_floating_point()},
                       "value": loss.item(), "grads": _grads(loss, named)}

    # KDSVD: three square taps of equal channels in student and teacher
    x = _inputs(4, s0=(N, 6, 4, 4), s1=(N, 6, 4, 4), s2=(N, 8, 2, 2), t0=(N, 6, 4, 4), t1=(N, 6, 4, 4),
                t2=(N, 8, 2, 2))
    kdsvd = svd_mod.KDSVD(k=1)
    loss = sum(kdsvd([x["s0"], x["s1"], x["s2"]], [x["t0"], x["t1"], x["t2"]]))
    cases["kdsvd"] = {"inputs": {k: _tensor(v) for k, v in x.items()}, "value": loss.item(),
                      "grads": _grads(loss, {k: x[k] for k in ("s0", "s1", "s2")})}
    return cases


def cls_kd_cases(root: Path) -> dict:
    # cls_KD's losses import mmcls's registry for a decorator only: a stub stands in for it
    registry = types.ModuleType("mmcls.registry")
    registry.MODELS = types.SimpleNamespace(register_module=lambda *a, **k: (lambda cls: cls))
    sys.modules.setdefault("mmcls", types.ModuleType("mmcls"))
    sys.modules["mmcls.registry"] = registry
    nkd_mod = _load(root / "mmcls" / "models" / "dis_losses" / "nkd.py", "clskd_nkd")
    uskd_mod = _load(root / "mmcls" / "models" / "dis_losses" / "uskd.py", "clskd_uskd")
    cases = {}
    g = torch.Generator().manual_seed(5)
    targets = torch.randint(0, CLASSES, (N,), generator=g)
    for temp, gamma in ((1.0, 1.5), (2.0, 1.0)):
        x = _inputs(6, s=(N, CLASSES), t=(N, CLASSES))
        loss = nkd_mod.NKDLoss("nkd", True, temp=temp, gamma=gamma)(x["s"], x["t"], targets)
        cases[f"nkd_T{temp:g}_g{gamma:g}"] = {
            "inputs": {k: _tensor(v) for k, v in x.items()}, "targets": targets.tolist(),
            "settings": {"temperature": temp, "gamma": gamma}, "value": loss.item(), "grads": _grads(loss, {"s": x["s"]})}
    x = _inputs(7, feature=(N, 12), logits=(N, CLASSES))
    torch.manual_seed(8)
    uskd = uskd_mod.USKDLoss("uskd", True, channel=12, alpha=1.0, beta=0.1, mu=0.005, num_classes=CLASSES)
    loss = uskd(x["feature"], x["logits"], targets)
    named = {"feature": x["feature"], "logits": x["logits"], **{f"fc.{k}": p for k, p in uskd.fc.named_parameters()}}
    cases["uskd"] = {"inputs": {k: _tensor(v) for k, v in x.items()}, "targets": targets.tolist(),
                     "modules": {k: _tensor(v) for k, v in uskd.fc.state_dict().items()},
                     "value": loss.item(), "grads": _grads(loss, named)}
    return cases


def ctkd_cases(root: Path) -> dict:
    temp_mod = _load(root / "models" / "temp_global.py", "ctkd_temp")
    kd_mod = _load(root / "distiller_zoo" / "KD.py", "ctkd_kd")
    train = root / "train_student.py"
    # CosineDecay is defined in train_student.py, which runs a program on import: its class
    # is read from the file's source alone
    source = train.read_text()
    start = source.index("class CosineDecay")
    end = source.index("\nclass ", start + 1)
    scope = {"math": math}
    exec(compile(source[start:end], str(train), "exec"), scope)  # noqa: S102 - the peer's own code
    decay = scope["CosineDecay"](max_value=0.0, min_value=-1.0, num_loops=10)
    cases = {}
    for epoch in (1, 4, 12):
        x = _inputs(9, s=(N, CLASSES), t=(N, CLASSES))
        torch.manual_seed(10)
        mlp = temp_mod.Global_T()
        lam = decay.get_value(epoch)
        temp = 1.0 + 20.0 * torch.sigmoid(mlp(x["t"], x["s"], lam))
        loss = 0.9 * kd_mod.DistillKL()(x["s"], x["t"].detach(), temp)
        cases[f"ctkd_epoch{epoch}"] = {"inputs": {k: _tensor(v) for k, v in x.items()}, "epoch": epoch,
                                       "lambda": lam, "temperature": temp.item(), "value": loss.item(),
                                       "grads": _grads(loss, {"s": x["s"], "theta": mlp.global_T})}
    return cases


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repdistiller", type=Path, required=True)
    parser.add_argument("--cls-kd", type=Path, required=True)
    parser.add_argument("--ctkd", type=Path, required=True)
    parser.add_argument("--write", type=Path, help=f"write the references there (the test's: {OUT})")
    args = parser.parse_args()
    torch.Tensor.cuda = lambda self, *a, **k: self  # the peers' .cuda() calls: stay on the CPU
    cases = {**repdistiller_cases(args.repdistiller), **cls_kd_cases(args.cls_kd), **ctkd_cases(args.ctkd)}
    for name, case in cases.items():
        print(f"{name}: {case['value']:.7g}")
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(json.dumps({"peers": {"RepDistiller": "b84f547", "cls_KD": "1e5d48f", "CTKD": "7d52522"},
                                          "cases": cases}) + "\n")
        print(f"wrote {len(cases)} cases to {args.write}")


if __name__ == "__main__":
    main()
