"""``torch.compile`` of the stage's student and teachers (``methods.compile = {}``), in place
(``nn.Module.compile``): parameter names, checkpoints and exports stay those of the plain model.

Runs on the CPU too (Inductor generates C++ there, which needs a C++ compiler). The first steps
pay for compilation: worth it for long stages, not for a short test. The model statistics at the
stage's end are measured on the plain forward.
"""

from __future__ import annotations

from typing import Literal

import attrs

from kdlab import Requirements, hookimpl


@attrs.frozen(kw_only=True)
class CompileConfig:
    mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    dynamic: bool | None = None  # None: torch decides after the first shape change (the last batch)
    teachers: bool = True  # compile the teachers as well


class Compile:
    config_class = CompileConfig

    def __init__(self, config):
        self.config = config

    @staticmethod
    def requires(config, stage):
        return Requirements(terms=())

    @hookimpl(trylast=True)  # after other plugins changed the models (channels_last, pruning)
    def kdlab_stage_start(self, stage):
        cfg = self.config
        for model in [stage.student, *(stage.teachers if cfg.teachers else [])]:
            model.compile(mode=cfg.mode, dynamic=cfg.dynamic)

    @hookimpl
    def kdlab_stage_end(self, stage):
        # back to eager for the export's statistics (the flop counter traces the plain forward)
        for model in [stage.student, *stage.teachers]:
            model._compiled_call_impl = None  # what nn.Module.compile set; no public way to undo it
