from __future__ import annotations

import torch

from kdlab import hookimpl
from kdlab.engine.registry import discover
from kdlab.engine.runner import run
from tests.conftest import TINY


class Dtypes:
    default_enabled = True
    seen: list = []

    @hookimpl
    def kdlab_loss_terms(self, student_out, teacher_outs):
        Dtypes.seen.append((student_out.logits.dtype, [t.logits.dtype for t in teacher_outs]))


def test_bf16_autocast_on_cpu_reaches_student_and_teacher(write_recipe, tmp_path):
    Dtypes.seen = []
    text = TINY.replace('methods.logit_kd = { temperature = 4.0, alpha = 0.5 }',
                        'methods.logit_kd = { temperature = 4.0, alpha = 0.5 }\nmethods.amp = {}')
    result = run(write_recipe(text), out=tmp_path / "runs", catalogue=discover(extra={"dtypes": Dtypes}))
    teacher_steps = [s for s in Dtypes.seen if not s[1]]
    student_steps = [s for s in Dtypes.seen if s[1]]
    assert all(s[0] == torch.float32 for s in teacher_steps)  # teacher stage: no amp
    assert student_steps and all(s == (torch.bfloat16, [torch.bfloat16]) for s in student_steps)
    assert result.metrics["student"]["test/accuracy"] > 0.2  # it still learns
    # the exported weights stay in float32
    state = torch.load(result.run_dir / "models/student.pt", weights_only=True)["state_dict"]
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())


class GradProbe:
    default_enabled = True
    nonzero: list = []

    @hookimpl(trylast=True)  # after amp has unscaled the gradients
    def kdlab_before_optimizer_step(self, stage):
        if stage.name == "student":
            grads = [p.grad for p in stage.student.parameters() if p.grad is not None]
            GradProbe.nonzero.append(sum(int((g != 0).sum()) for g in grads) / sum(g.numel() for g in grads))


def test_fp16_on_the_cpu_scales_the_loss(write_recipe, tmp_path):
    # a loss this small underflows in float16 gradients unless it is scaled first
    GradProbe.nonzero = []
    text = TINY.replace('methods.logit_kd = { temperature = 4.0, alpha = 0.5 }',
                        'methods.logit_kd = { temperature = 4.0, alpha = 0.5 }\nmethods.amp = { dtype = "fp16" }\n'
                        'loss_weights = { kd = 1e-6, ce = 1e-6 }')
    result = run(write_recipe(text), out=tmp_path / "runs", catalogue=discover(extra={"probe": GradProbe}))
    assert GradProbe.nonzero and min(GradProbe.nonzero) > 0.5
    state = torch.load(result.run_dir / "checkpoints/student/last.pt", weights_only=True)
    assert state["plugins"]["amp"]["scaler"]["scale"] > 1  # the scaler's state is checkpointed
