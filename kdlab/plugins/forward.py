"""Default forward passes: the student, the teachers (under no_grad), and teacher loading."""

from __future__ import annotations

import torch

from kdlab import ModelOutput, hookimpl
from kdlab.engine.loop import load_model


class Forward:
    default_enabled = True

    @hookimpl(trylast=True)
    def kdlab_student_forward(self, stage, batch):
        logits = stage.student(batch.inputs)
        return ModelOutput(logits, stage.student_taps.collect())

    @hookimpl(wrapper=True, tryfirst=True)
    def kdlab_teacher_outputs(self, stage, batch):
        # Whoever supplies teacher outputs, no graph is built through the teachers.
        with torch.no_grad():
            return (yield)

    @hookimpl(trylast=True, specname="kdlab_teacher_outputs")
    def run_teachers(self, stage, batch):
        outs = []
        for teacher, taps in zip(stage.teachers, stage.teacher_taps):
            outs.append(ModelOutput(teacher(batch.inputs), taps.collect()))
        return outs

    @hookimpl(trylast=True)
    def kdlab_load_teachers(self, stage):
        return [load_model(stage, ref) for ref in stage.config.teachers]
