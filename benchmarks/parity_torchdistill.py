"""Parity of kdlab's loss functions with torchdistill 1.1.5's, on the same tensors.

    python3 -m venv /tmp/tdenv
    /tmp/tdenv/bin/pip install torch==2.14.1 torchvision==0.29.1 torchdistill==1.1.5
    python -m benchmarks.parity_torchdistill --torchdistill-python /tmp/tdenv/bin/python

For every method both implement (Hinton KD, logit standardisation, DIST, attention transfer,
SP, RKD, PKT, CC, VID, CRD, ReviewKD's hierarchical context loss), seeded random logits, feature maps and embeddings of a CIFAR-100-like
batch (64 samples, 100 classes; maps 16 and 32 channels at 8x8; embeddings 64 and 128 wide) go
to kdlab's pure loss here and to torchdistill's loss module in its own environment (it needs
torch >= 2.12). Printed: both values and their largest relative difference, first as each library
computes by default, then with the documented difference of convention applied (the "converted"
rows), which must agree to float32 rounding; and the gradients of each loss with respect to the
student's inputs and the method's own module parameters (VID's regressor and variances, with the
same weights on both sides: comparing values of pure functions alone missed the bias kdlab's
regressor carried). DKD and NST are not in torchdistill.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

T, BATCH, CLASSES = 4.0, 64, 100


def tensors() -> dict[str, torch.Tensor]:
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    return {
        "s_logits": torch.randn(BATCH, CLASSES, generator=g) * 3,
        "t_logits": torch.randn(BATCH, CLASSES, generator=g) * 5,
        "targets": torch.randint(0, CLASSES, (BATCH,), generator=g),
        "s_map": torch.relu(torch.randn(BATCH, 16, 8, 8, generator=g)),
        "t_map": torch.relu(torch.randn(BATCH, 32, 8, 8, generator=g)),
        "s_emb": torch.randn(BATCH, 64, generator=g),
        "t_emb": torch.randn(BATCH, 128, generator=g),
        "vid_var": torch.rand(32, generator=g) + 0.5,
        "vid_mean": torch.randn(BATCH, 32, 8, 8, generator=g),
        # CRD: unit embeddings, both memory banks (200 training samples), the batch's indices and negatives
        "crd_s": F.normalize(torch.randn(BATCH, 16, generator=g), dim=1),
        "crd_t": F.normalize(torch.randn(BATCH, 16, generator=g), dim=1),
        "crd_mem_s": F.normalize(torch.randn(200, 16, generator=g), dim=1),
        "crd_mem_t": F.normalize(torch.randn(200, 16, generator=g), dim=1),
        "crd_index": torch.randperm(200, generator=g)[:BATCH],
        "crd_negatives": torch.randint(0, 200, (BATCH, 50), generator=g),
        # VID with its regressor (three 1x1 convolutions, 16 -> 32 -> 32 -> 32) and its variances
        "vid_w0": torch.randn(32, 16, 1, 1, generator=g) * 0.25,
        "vid_w2": torch.randn(32, 32, 1, 1, generator=g) * 0.18,
        "vid_w4": torch.randn(32, 32, 1, 1, generator=g) * 0.18,
        "vid_log_scale": torch.full((32,), math.log(math.expm1(5.0 - 1e-5))),
    }

# what each side differentiates: the student's inputs and the method's own module parameters
STUDENT = ("s_logits", "s_map", "s_emb", "vid_mean", "vid_var", "crd_s", "vid_w0", "vid_w2", "vid_w4",
           "vid_log_scale")


def kdlab_side(x: dict) -> dict[str, torch.Tensor]:

    from kdlab.methods.attention import attention_loss
    from kdlab.methods.cc import CCConfig, cc_loss
    from kdlab.methods.crd import contrast, nce_loss
    from kdlab.methods.reviewkd import hcl_loss
    from kdlab.methods.dist import dist_loss
    from kdlab.methods.logit_kd import hinton_kd_loss, standardize
    from kdlab.methods.pkt import pkt_loss
    from kdlab.methods.rkd import RKDConfig, rkd_loss
    from kdlab.methods.sp import sp_loss
    from kdlab.methods.vid import vid_loss

    ce = F.cross_entropy(x["s_logits"], x["targets"])
    unit_s, unit_t = F.normalize(x["s_emb"], dim=1), F.normalize(x["t_emb"], dim=1)
    rows = torch.cat([x["crd_index"][:, None], x["crd_negatives"]], dim=1)
    out_s = contrast(x["crd_s"], x["crd_mem_t"], rows, 0.07)
    out_t = contrast(x["crd_t"], x["crd_mem_s"], rows, 0.07)
    # the normalising constants Z: from the first batch, constants (as kdlab's crd plugin keeps them)
    z_s, z_t = float(out_s.mean()) * 200, float(out_t.mean()) * 200
    crd = nce_loss(out_s / z_s, 200) + nce_loss(out_t / z_t, 200)
    return {
        # kdlab: (1 - alpha) CE + alpha T^2 KL; torchdistill's KDLoss: alpha CE + (1 - alpha) T^2 KL
        "kd (alpha 0.3)": (1 - 0.3) * ce + 0.3 * hinton_kd_loss(x["s_logits"], x["t_logits"], temperature=T),
        "logit standardisation (alpha 0.5)": 0.5 * ce + 0.5 * hinton_kd_loss(
            standardize(x["s_logits"]), standardize(x["t_logits"]), temperature=T),
        "dist": dist_loss(x["s_logits"], x["t_logits"], temperature=T, beta=1.0, gamma=2.0),
        "attention": attention_loss(x["s_map"], x["t_map"], 2.0),
        "sp": sp_loss(x["s_map"], x["t_map"]),
        "sp, converted": sp_loss(x["s_map"], x["t_map"]),
        "rkd": rkd_loss(x["s_emb"], x["t_emb"], RKDConfig(distance_weight=25.0, angle_weight=50.0)),
        "pkt": pkt_loss(x["s_emb"], x["t_emb"]),
        "cc": cc_loss(x["s_emb"], x["t_emb"], CCConfig(gamma=0.4)),
        "cc, converted": cc_loss(unit_s, unit_t, CCConfig(gamma=0.4)).sqrt(),
        "vid": vid_loss(x["vid_mean"], x["vid_var"], x["t_map"]),
        "vid, with its regressor": vid_with_head(x),
        "crd (one step)": crd,
        "reviewkd HCL (one level)": hcl_loss([x["s_map"][:, :16]], [x["t_map"][:, :16]]),
    }


def vid_with_head(x: dict) -> torch.Tensor:
    """kdlab's VIDHead (its own module and code) on the student map, with the shared weights."""
    from kdlab.methods.vid import VIDHead, vid_loss

    head = VIDHead(16, 32, init_var=5.0, eps=1e-5)
    for path, key in (("mean.0.weight", "vid_w0"), ("mean.2.weight", "vid_w2"), ("mean.4.weight", "vid_w4"),
                      ("log_scale", "vid_log_scale")):
        share(head, path, x[key])  # a parameter not shared (a bias) would stay the module's own
    return vid_loss(head.mean(x["s_map"]), head.variance(), x["t_map"])


def share(module: torch.nn.Module, path: str, tensor: torch.Tensor) -> None:
    """Replace the parameter at ``path`` by ``tensor`` (so that gradients reach ``tensor``)."""
    *parents, name = path.split(".")
    for part in parents:
        module = getattr(module, part)
    delattr(module, name)
    setattr(module, name, tensor)


def torchdistill_side(x: dict) -> dict[str, torch.Tensor]:
    from torchdistill.losses.mid_level import (ATLoss, CCKDLoss, CRDLoss, DISTLoss, HierarchicalContextLoss, KDLoss,
                                               LogitStdKDLoss, PKTLoss, RKDLoss, SPKDLoss, VIDLoss)

    def io(**tensors):
        return {name: {"output": t} for name, t in tensors.items()}

    s = io(logits=x["s_logits"], map=x["s_map"], emb=x["s_emb"], unit=F.normalize(x["s_emb"], dim=1),
           vid=(x["vid_mean"], x["vid_var"].view(1, -1, 1, 1)), crd=x["crd_s"], hcl=(x["s_map"][:, :16], None))
    s["empty"] = {"input": {"pos_idx": x["crd_index"],
                            "contrast_idx": torch.cat([x["crd_index"][:, None], x["crd_negatives"]], dim=1)}}
    t = io(logits=x["t_logits"], map=x["t_map"], emb=x["t_emb"], unit=F.normalize(x["t_emb"], dim=1), crd=x["crd_t"],
           hcl=x["t_map"][:, :16])
    from torchdistill.models.wrapper import Regressor4VID

    regressor = Regressor4VID(16, 32, 32, eps=1e-5, init_pred_var=5.0)
    for path, key in (("regressor.0.weight", "vid_w0"), ("regressor.2.weight", "vid_w2"),
                      ("regressor.4.weight", "vid_w4"), ("soft_plus_param", "vid_log_scale")):
        share(regressor, path, x[key])
    crd = CRDLoss("crd", "empty", "crd", input_size=16, output_size=200, num_negative_samples=50, num_samples=200)
    crd.memory_v1.copy_(x["crd_mem_s"])  # torchdistill: v1 the student's bank, v2 the teacher's
    crd.memory_v2.copy_(x["crd_mem_t"])
    logit_paths = {"student_module_path": "logits", "student_module_io": "output",
                   "teacher_module_path": "logits", "teacher_module_io": "output"}
    pair = {"p": {"student": {"path": "map", "io": "output"}, "teacher": {"path": "map", "io": "output"}}}
    vid_pair = {"p": {"student": {"path": "vid", "io": "output"}, "teacher": {"path": "map", "io": "output"}}}
    pkt = {"student_module_path": "emb", "student_module_io": "output", "teacher_module_path": "emb",
           "teacher_module_io": "output"}
    gauss = {"type": "gaussian", "gamma": 0.4, "max_p": 2}
    sp_l2 = SPKDLoss("map", "map", reduction="batchmean")
    sp_l2.matmul_and_normalize = lambda z: F.normalize(z.flatten(1) @ z.flatten(1).t(), p=2, dim=1)
    return {
        "kd (alpha 0.3)": KDLoss(temperature=T, alpha=0.7, **logit_paths)(s, t, x["targets"]),
        "logit standardisation (alpha 0.5)": LogitStdKDLoss(temperature=T, alpha=0.5, **logit_paths)(s, t, x["targets"]),
        "dist": DISTLoss(beta=1.0, gamma=2.0, tau=T, **logit_paths)(s, t),
        "attention": ATLoss(pair, mode="code")(s, t),
        "sp": SPKDLoss("map", "map", reduction="batchmean")(s, t),
        "sp, converted": sp_l2(s, t),
        "rkd": RKDLoss("emb", "emb", dist_factor=25.0, angle_factor=50.0, reduction="mean")(s, t),
        "pkt": PKTLoss(**pkt)(s, t),
        "cc": CCKDLoss("emb", "emb", gauss, reduction="batchmean")(s, t),
        # the exact kernel is the Taylor series' limit; on unit vectors exp(-g|a-b|^2) is it
        "cc, converted": CCKDLoss("unit", "unit", {**gauss, "max_p": 30}, reduction="batchmean")(s, t) * BATCH,
        "vid": VIDLoss(vid_pair)(s, t),
        "vid, with its regressor": VIDLoss(vid_pair)({**s, "vid": {"output": regressor(x["s_map"])}}, t),
        "crd (one step)": crd(s, t),
        "reviewkd HCL (one level)": HierarchicalContextLoss("hcl", "output", "hcl", "output")(s, t),
    }


NOTES = {
    "sp": "torchdistill calls normalize(G, 1), which is p = 1: rows scaled to unit L1 norm; the paper and "
          "RepDistiller scale them to unit L2 norm, as kdlab does",
    "sp, converted": "torchdistill's SPKDLoss with its row normalisation made L2",
    "kd (alpha 0.3)": "alpha weighs KD in kdlab, CE in torchdistill: kdlab 0.3 = torchdistill 0.7",
    "cc": "kdlab: exact Gaussian kernel on L2-normalised embeddings, squared Frobenius norm / b^2; "
          "torchdistill: 2nd-order Taylor series on raw embeddings, Frobenius norm / b^2",
    "cc, converted": "both on unit vectors, torchdistill's series to order 30, kdlab's value square-rooted x b",
    "pkt": "kdlab normalises with max(|x|, eps), torchdistill with |x| + eps (eps 1e-7)",
    "crd (one step)": "the same banks, indices and negatives (torchdistill takes contrast_idx); z from this batch",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torchdistill-python", help="python of an environment with torchdistill 1.1.5")
    parser.add_argument("--side", choices=["torchdistill"], help=argparse.SUPPRESS)
    parser.add_argument("--io", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        x = torch.load(args.io[0], weights_only=True)
        torch.save(values_and_grads(torchdistill_side, x), args.io[1])
        return
    root = Path(__file__).resolve().parents[1]
    x = tensors()
    ours = values_and_grads(kdlab_side, x)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(x, Path(tmp) / "in.pt")
        done = subprocess.run([args.torchdistill_python, "-m", "benchmarks.parity_torchdistill", "--side",
                               "torchdistill", "--io", str(Path(tmp) / "in.pt"), str(Path(tmp) / "out.pt")],
                              capture_output=True, text=True, cwd=root, env={"PYTHONPATH": str(root), "PATH": ""})
        if done.returncode:
            sys.exit(done.stderr)
        theirs = torch.load(Path(tmp) / "out.pt", weights_only=True)
    print("| loss | kdlab | torchdistill 1.1.5 | relative difference | gradients: relative difference | convention |")
    print("|---|---|---|---|---|---|")
    for name, (value, grads) in ours.items():
        other, other_grads = theirs[name]
        rel = abs(value - other) / max(abs(other), 1e-12)
        # of every student input and module parameter either side differentiates (a missing one: 1)
        worst = max((float((grads[k] - other_grads[k]).abs().max() / other_grads[k].abs().max().clamp_min(1e-12))
                     if k in grads and k in other_grads else 1.0) for k in {*grads, *other_grads})
        print(f"| {name} | {value:.7g} | {other:.7g} | {rel:.1e} | {worst:.1e} | {NOTES.get(name, 'same')} |")


def values_and_grads(side, x: dict) -> dict[str, tuple[float, dict[str, torch.Tensor]]]:
    """Each loss of ``side``: its value and its gradients with respect to the student's inputs and
    the method's module parameters that it reaches."""
    x = {k: v.clone().requires_grad_(k in STUDENT) for k, v in x.items()}
    out = {}
    for name, loss in side(x).items():
        inputs = [k for k in STUDENT]
        grads = torch.autograd.grad(loss, [x[k] for k in inputs], retain_graph=True, allow_unused=True)
        out[name] = (float(loss.detach()), {k: g.detach() for k, g in zip(inputs, grads) if g is not None})
    return out


if __name__ == "__main__":
    main()
