"""Default forward passes: the student, the teachers (under no_grad), and teacher loading.

A model is called on ``batch.inputs``, unless it defines ``forward_batch(batch) -> (logits,
lengths)``: sequence models read what they need from the batch that way (a wav2vec2 teacher the
raw audio in ``batch.extra["wave"]``, a Conformer student the features and their lengths), and
their outputs carry the valid ``lengths``.
"""

from __future__ import annotations

import torch

from kdlab import ModelOutput, hookimpl
from kdlab.engine.loop import load_model
from kdlab.engine.types import run_model


class Forward:
    default_enabled = True

    @hookimpl(trylast=True)
    def kdlab_student_forward(self, stage, batch):
        logits, lengths = stage.run_student(batch)
        return ModelOutput(logits, stage.student_taps.collect(), lengths)

    @hookimpl(wrapper=True, tryfirst=True)
    def kdlab_teacher_outputs(self, stage, batch):
        # Whoever supplies teacher outputs, no graph is built through the teachers.
        with torch.no_grad():
            return (yield)

    @hookimpl(trylast=True, specname="kdlab_teacher_outputs")
    def run_teachers(self, stage, batch):
        outs = []
        for teacher, taps in zip(stage.teachers, stage.teacher_taps):
            logits, lengths = run_model(teacher, batch)
            outs.append(ModelOutput(logits, taps.collect(), lengths))
        return outs

    @hookimpl(trylast=True)
    def kdlab_load_teachers(self, stage):
        return [load_model(stage, ref) for ref in stage.config.teachers]
