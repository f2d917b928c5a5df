"""Atomic checkpoint files and exported models.

A save writes a temporary file in the same directory, flushes it to disk and renames it over the
target: a kill at any moment leaves either the old file or the new one, never a torn one.
Loading always uses ``weights_only=True``: a checkpoint can hold tensors and plain data, no code.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from kdlab.engine.errors import KdlabError

MODEL_FORMAT = "kdlab.model/1"


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically."""
    _atomic_write(Path(path), lambda f: torch.save(obj, f))


def save_json(obj: Any, path: str | Path) -> None:
    _atomic_write(Path(path), lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``; a clear error for a missing or broken file."""
    path = Path(path)
    if not path.is_file():
        raise KdlabError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise KdlabError(f"{path}: not a readable kdlab checkpoint ({type(exc).__name__}: {exc})") from exc


def export_model(path: str | Path, *, model: torch.nn.Module, arch: str, config: dict, num_classes: int,
                 input_shape: tuple[int, ...], classes: tuple[str, ...] = ()) -> None:
    """Write a self-describing model file: architecture, settings, weights, and the class names
    when the data has them (a CTC model's phonemes, for ``kdlab transcribe``)."""
    save(
        {
            "format": MODEL_FORMAT,
            "arch": arch,
            "config": config,
            "num_classes": num_classes,
            "input_shape": list(input_shape),
            "classes": list(classes),
            "state_dict": model.state_dict(),
        },
        path,
    )


def load_model_file(path: str | Path) -> dict:
    data = load(path)
    if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
        raise KdlabError(f"{path}: not an exported kdlab model (expected format {MODEL_FORMAT})")
    return data
