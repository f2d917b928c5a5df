"""kdlab: a plugin-based experimentation engine for knowledge distillation in PyTorch."""

from kdlab.engine.errors import KdlabError
from kdlab.engine.hookspecs import hookimpl
from kdlab.engine.types import Batch, DataBundle, ModelOutput, Stage

__all__ = ["Batch", "DataBundle", "KdlabError", "ModelOutput", "Stage", "hookimpl"]
__version__ = "0.1.0"
