"""Channels-last memory format for convolutional models (``methods.channels_last = {}``): the
student's and teachers' 4-D weights are stored NHWC, so convolutions use the tensor-core
friendly layout on GPUs; convolution outputs then follow the weights' format, so the inputs need
no conversion. Exports hold the same values (loading copies into any layout)."""

from __future__ import annotations

import torch

from kdlab import KdlabError, Requirements, hookimpl


class ChannelsLast:
    @staticmethod
    def requires(config, stage):
        return Requirements(terms=())

    @hookimpl(tryfirst=True)
    def kdlab_stage_start(self, stage):
        if "pruning" in stage.config.methods:  # torch's global pruning flattens weights with .view
            raise KdlabError(f"stages.{stage.name}.methods.channels_last: does not compose with pruning; "
                             "remove one of them")
        for model in [stage.student, *stage.teachers]:
            model.to(memory_format=torch.channels_last)
