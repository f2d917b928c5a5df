"""Reference outputs of the peers' own code for kdlab's methods checked against them (issue #31
item 3): loss values and gradients (inputs and the method's modules) on small seeded inputs,
written to ``tests/methods/fixtures/peer_parity.json``, which tests/methods/test_peer_parity.py
compares kdlab's code with (to 1e-5, float32).

    git clone https://github.com/HobbitLong/RepDistiller   /tmp/peers/RepDistiller   # at b84f547
    git clone https://github.com/yzd-v/cls_KD              /tmp/peers/cls_KD         # at 1e5d48f
    git clone https://github.com/zhengli97/CTKD            /tmp/peers/CTKD           # at 7d52522
    git clone https://github.com/megvii-research/mdistiller /tmp/peers/mdistiller   # at a08d46f
    git clone https://github.com/Jin-Ying/Multi-Level-Logit-Distillation /tmp/peers/MLKD  # at 5ee473f
    git clone https://github.com/yoshitomo-matsubara/torchdistill /tmp/peers/torchdistill  # at 3e4373c
    python -m benchmarks.parity_peers --repdistiller /tmp/peers/RepDistiller --cls-kd /tmp/peers/cls_KD \\
        --ctkd /tmp/peers/CTKD --mdistiller /tmp/peers/mdistiller --mlkd /tmp/peers/MLKD \\
        --torchdistill /tmp/peers/torchdistill [--write tests/methods/fixtures/peer_parity.json]

Cases: FSP, AB (with its connectors), KDSVD (RepDistiller's distiller_zoo), FitNets' hint
regressor (its models/util.py ConvReg, with the MSE of distiller_zoo/FitNet.py); NKD, USKD (with its
weak classifier; cls_KD's mmcls/models/dis_losses); CTKD (its global temperature with the
gradient reversal, models/temp_global.py, and its KD loss, distiller_zoo/KD.py); FT (RepDistiller's
paraphraser, translator and FactorTransfer); SRRL and ViTKD (cls_KD, with their modules); OFD
(mdistiller's connectors and margins); MLKD (the authors' KD_ours); DIST+ (torchdistill's
DISTPlusLoss). Only torch (and scipy, which mdistiller's OFD imports) is needed: the peers' CUDA calls (``.cuda()``) are made no-ops and cls_KD's mmcls registry is a
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
MDISTILLER, TORCHDISTILL = "a08d46f", "3e4373c"  # the commits the references were computed at


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


def _package(name: str, path: Path | None = None) -> types.ModuleType:
    """An empty package in sys.modules (its ``__init__`` not run), so that a peer's file imports
    its siblings relatively without importing the whole peer."""
    module = types.ModuleType(name)
    module.__path__ = [str(path)] if path is not None else []
    sys.modules[name] = module
    return module


def _load_in(package: str, path: Path, name: str):
    spec = importlib.util.spec_from_file_location(f"{package}.{name}", path / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def repdistiller_ft_case(root: Path) -> dict:
    """FT: the paraphraser's reconstruction loss (its init phase) and the factor loss with the
    translator, a student map twice the teacher's size (the peer pools the larger factor)."""
    util = _load(root / "models" / "util.py", "rd_util_ft")
    ft_mod = _load(root / "distiller_zoo" / "FT.py", "rd_ft")
    x = _inputs(13, s=(N, 4, 8, 8), t=(N, 8, 4, 4))
    torch.manual_seed(14)
    paraphraser = util.Paraphraser(x["t"].shape).train()
    translator = util.Translator(x["s"].shape, x["t"].shape).train()
    _, rec = paraphraser(x["t"].detach())
    rec_loss = torch.nn.MSELoss()(rec, x["t"].detach())
    rec_grads = _grads(rec_loss, {f"paraphraser.{k}": p for k, p in paraphraser.named_parameters()})
    factor_t = paraphraser(x["t"], is_factor=True)
    loss = 200 * ft_mod.FactorTransfer()(translator(x["s"]), factor_t.detach())
    named = {"s": x["s"], **{f"translator.{k}": p for k, p in translator.named_parameters()}}
    return {"ft": {"inputs": {k: _tensor(v) for k, v in x.items()},
                   "paraphraser": {k: _tensor(v) for k, v in paraphraser.state_dict().items()},
                   "translator": {k: _tensor(v) for k, v in translator.state_dict().items() if v.is_floating_point()},
                   "reconstruction": rec_loss.item(), "reconstruction_grads": rec_grads,
                   "value": loss.item(), "grads": _grads(loss, named)}}


def cls_kd_more_cases(root: Path) -> dict:
    """SRRL (its connector; the teacher's linear head applied to the pooled, connected student
    map as cls_KD's distiller.py does) and ViTKD (all its modules; the mask drawn after a seed)."""
    losses = root / "mmcls" / "models" / "dis_losses"
    srrl_mod = _load(losses / "srrl.py", "clskd_srrl")
    vitkd_mod = _load(losses / "vitkd.py", "clskd_vitkd")
    cases = {}
    x = _inputs(15, s=(N, 6, 4, 4), t=(N, 8, 4, 4), logits_t=(N, CLASSES))
    torch.manual_seed(16)
    srrl = srrl_mod.SRRLLoss("srrl", True, student_channels=6, teacher_channels=8, alpha=1.0, beta=5.0).train()
    head = torch.nn.Linear(8, CLASSES).requires_grad_(False)
    aligned = srrl.Connectors(x["s"])
    logit_st = head(aligned.mean(dim=(2, 3)))  # the teacher's neck (global average pooling) and fc
    loss = srrl(aligned, x["t"], logit_st, x["logits_t"])
    named = {"s": x["s"], **{f"connector.{k}": p for k, p in srrl.Connectors.named_parameters()}}
    cases["srrl"] = {"inputs": {k: _tensor(v) for k, v in x.items()},
                     "modules": {k: _tensor(v) for k, v in srrl.Connectors.state_dict().items() if v.is_floating_point()},
                     "head": {k: _tensor(v) for k, v in head.state_dict().items()},
                     "value": loss.item(), "grads": _grads(loss, named)}
    for name, (ds, dt) in (("vitkd_align", (6, 8)), ("vitkd_same", (8, 8))):
        x = _inputs(17, low_s=(N, 2, 16, ds), low_t=(N, 2, 16, dt), high_s=(N, 16, ds), high_t=(N, 16, dt))
        torch.manual_seed(18)
        vitkd = vitkd_mod.ViTKDLoss("vitkd", True, student_dims=ds, teacher_dims=dt)
        with torch.no_grad():  # a mask token that is not zero, so that its gradient path is checked
            vitkd.mask_token.normal_()
        torch.manual_seed(19)
        loss = vitkd([x["low_s"], x["high_s"]], [x["low_t"], x["high_t"]])
        named = {"low_s": x["low_s"], "high_s": x["high_s"], **{f"vitkd.{k}": p for k, p in vitkd.named_parameters()}}
        cases[name] = {"inputs": {k: _tensor(v) for k, v in x.items()}, "mask_seed": 19,
                       "modules": {k: _tensor(v) for k, v in vitkd.state_dict().items()},
                       "value": loss.item(), "grads": _grads(loss, named)}
    return cases


def mdistiller_ofd_case(root: Path) -> dict:
    """OFD: mdistiller's connectors, its margins from two BatchNorms and its loss over two pairs."""
    _package("md_distillers", root / "mdistiller" / "distillers")
    ofd_mod = _load_in("md_distillers", root / "mdistiller" / "distillers", "OFD")
    x = _inputs(20, s0=(N, 4, 8, 8), s1=(N, 6, 4, 4), t0=(N, 8, 8, 8), t1=(N, 12, 8, 8))
    torch.manual_seed(21)
    bns = [torch.nn.BatchNorm2d(8), torch.nn.BatchNorm2d(12)]
    with torch.no_grad():
        for bn in bns:  # some channels past the margin rule's 0.001 cut-off (very negative bias)
            bn.weight.normal_()
            bn.bias.normal_().mul_(2)
            bn.bias[0] = -8 * bn.weight[0].abs()
    distiller = ofd_mod.OFD.__new__(ofd_mod.OFD)
    torch.nn.Module.__init__(distiller)
    distiller.init_ofd_modules(tea_channels=[8, 12], stu_channels=[4, 6], bn_before_relu=bns, kernel_size=1)
    distiller.connectors.train()
    loss = 1e-3 * distiller.ofd_loss([x["s0"], x["s1"]], [x["t0"], x["t1"]])
    named = {"s0": x["s0"], "s1": x["s1"], **{f"connectors.{k}": p for k, p in distiller.connectors.named_parameters()}}
    return {"ofd": {"inputs": {k: _tensor(v) for k, v in x.items()},
                    "bns": [{k: _tensor(v) for k, v in bn.state_dict().items() if v.is_floating_point()} for bn in bns],
                    "margins": [_tensor(m) for m in distiller.margins],
                    "modules": {k: _tensor(v) for k, v in distiller.connectors.state_dict().items() if v.is_floating_point()},
                    "value": loss.item(), "grads": _grads(loss, named)}}


def mlkd_case(root: Path) -> dict:
    """MLKD: the authors' KD_ours.forward_train, its two views the same batch (as kdlab feeds it),
    students and teacher standing in as modules that return given logits; the sum of its kd, cc
    and bc losses (its CE is kdlab's supervised term)."""
    sys.modules.setdefault("turtle", types.SimpleNamespace(st=None))  # an unused import of tkinter's turtle
    _package("mlkd_distillers", root / "mdistiller" / "distillers")
    ours = _load_in("mlkd_distillers", root / "mdistiller" / "distillers", "KD_ours")
    n = 16
    x = _inputs(22, s=(n, CLASSES), t=(n, CLASSES))

    class Given(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, image):
            return self.logits, {}

    cfg = types.SimpleNamespace(KD=types.SimpleNamespace(TEMPERATURE=4, LOSS=types.SimpleNamespace(CE_WEIGHT=0.1, KD_WEIGHT=0.9)))
    distiller = ours.KD_ours(Given(x["s"]), Given(x["t"].detach()), cfg)
    image = torch.zeros(n, 1)
    _, losses = distiller.forward_train(image, image, torch.zeros(n, dtype=torch.long))
    loss = losses["loss_kd"] + losses["loss_cc"] + losses["loss_bc"]
    return {"mlkd": {"inputs": {k: _tensor(v) for k, v in x.items()}, "value": loss.item(),
                     "grads": _grads(loss, {"s": x["s"]})}}


def torchdistill_dist_plus_case(root: Path) -> dict:
    """DIST+: torchdistill's DISTPlusLoss (its registry and logger stubbed); its channel-relation
    value and gradient are kept apart, since kdlab uses 1 - it (see kdlab/methods/dist_plus.py)."""
    _package("torchdistill")
    _package("torchdistill.losses", root / "torchdistill" / "losses")
    _package("torchdistill.common")
    registry = types.ModuleType("torchdistill.losses.registry")
    registry.register_loss_wrapper = registry.register_mid_level_loss = lambda cls: cls
    sys.modules["torchdistill.losses.registry"] = registry
    constant = types.ModuleType("torchdistill.common.constant")
    constant.def_logger = __import__("logging").getLogger("torchdistill")
    sys.modules["torchdistill.common.constant"] = constant
    mid = _load_in("torchdistill.losses", root / "torchdistill" / "losses", "mid_level")
    x = _inputs(23, s=(N, CLASSES), t=(N, CLASSES), f_s=(N, 6, 4, 4), f_t=(N, 6, 4, 4))
    loss_fn = mid.DISTPlusLoss("s", "o", "t", "o", "fs", "o", "ft", "o", beta=1.0, gamma=1.0, iota=1.0, kappa=1.0,
                               tau=1.0)
    loss = loss_fn({"s": {"o": x["s"]}, "fs": {"o": x["f_s"]}}, {"t": {"o": x["t"]}, "ft": {"o": x["f_t"]}})
    channel = loss_fn.channel_relation(x["f_s"], x["f_t"])
    named = {"s": x["s"], "f_s": x["f_s"]}
    return {"dist_plus": {"inputs": {k: _tensor(v) for k, v in x.items()}, "value": loss.item(),
                          "grads": _grads(loss, named), "channel": channel.item(),
                          "channel_grads": _grads(channel, named)}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repdistiller", type=Path, required=True)
    parser.add_argument("--cls-kd", type=Path, required=True)
    parser.add_argument("--ctkd", type=Path, required=True)
    parser.add_argument("--mdistiller", type=Path, required=True)
    parser.add_argument("--mlkd", type=Path, required=True)
    parser.add_argument("--torchdistill", type=Path, required=True)
    parser.add_argument("--write", type=Path, help=f"write the references there (the test's: {OUT})")
    args = parser.parse_args()
    torch.Tensor.cuda = lambda self, *a, **k: self  # the peers' .cuda() calls: stay on the CPU
    cases = {**repdistiller_cases(args.repdistiller), **cls_kd_cases(args.cls_kd), **ctkd_cases(args.ctkd),
             **repdistiller_ft_case(args.repdistiller), **cls_kd_more_cases(args.cls_kd),
             **mdistiller_ofd_case(args.mdistiller), **mlkd_case(args.mlkd),
             **torchdistill_dist_plus_case(args.torchdistill)}
    for name, case in cases.items():
        print(f"{name}: {case['value']:.7g}")
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(json.dumps({"peers": {"RepDistiller": "b84f547", "cls_KD": "1e5d48f", "CTKD": "7d52522",
                                                    "mdistiller": MDISTILLER, "MLKD": "5ee473f",
                                                    "torchdistill": TORCHDISTILL},
                                          "cases": cases}) + "\n")
        print(f"wrote {len(cases)} cases to {args.write}")


if __name__ == "__main__":
    main()
