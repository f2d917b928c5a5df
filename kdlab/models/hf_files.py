"""Loading a local Hugging Face model directory (``hf_dir`` of a model): a damaged, truncated or
unsafe weights file is one error naming the directory and the file, never a traceback."""

from __future__ import annotations

import pickle
from pathlib import Path

from kdlab.engine.errors import KdlabError

WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def from_pretrained(cls, path: str | Path, key: str, **kwargs):
    """``cls.from_pretrained`` of the local directory ``path`` (no download). transformers reads
    ``.bin`` weights with ``torch.load(weights_only=True)``: a pickle that would run code is
    refused, here as one line. ``key`` names the recipe key in the message."""
    path = Path(path)
    try:
        return cls.from_pretrained(str(path), local_files_only=True, **kwargs)
    except Exception as exc:
        if not _a_bad_file(exc):
            raise
        weights = sorted(p.name for p in path.iterdir() if p.suffix in WEIGHTS) if path.is_dir() else []
        what = f"{path / weights[0]}" if len(weights) == 1 else f"{path}"
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, pickle.UnpicklingError):
            why = "a pickle that is not plain tensors (it could run code), refused"
        raise KdlabError(f"{key}: cannot load {what}: {why[:200]}") from exc


def _a_bad_file(exc: Exception) -> bool:
    # safetensors raises its own SafetensorError (an Exception subclass from Rust) for a damaged
    # file; transformers raises OSError / ValueError for a missing or malformed one
    return (isinstance(exc, (OSError, ValueError, EOFError, UnicodeDecodeError, pickle.UnpicklingError))
            or type(exc).__name__ == "SafetensorError")
