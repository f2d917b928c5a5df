"""kdlab: a plugin-based experimentation engine for knowledge distillation in PyTorch.

The names a plugin author needs are importable from here (``from kdlab import hookimpl``).
They are loaded on first use, so that ``import kdlab.models.cnn`` (a plain ``nn.Module``) does
not load the plugin machinery.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "Batch": "kdlab.engine.types",
    "DataBundle": "kdlab.engine.types",
    "DeferredTerm": "kdlab.engine.types",
    "ModelOutput": "kdlab.engine.types",
    "Requirements": "kdlab.engine.types",
    "StageView": "kdlab.engine.types",
    "TopK": "kdlab.engine.types",
    "HiddenStates": "kdlab.engine.heads",
    "Stage": "kdlab.engine.types",
    "KdlabError": "kdlab.engine.errors",
    "hookimpl": "kdlab.engine.hookspecs",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'kdlab' has no attribute {name!r}")
