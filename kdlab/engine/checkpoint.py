"""Atomic checkpoint files and exported models.

A save writes a temporary file in the same directory, flushes it to disk and renames it over the
target: a kill at any moment leaves either the old file or the new one, never a torn one.
Loading always uses ``weights_only=True``: a checkpoint can hold tensors and plain data, no code.
Before loading, every record's CRC-32 is checked: torch writes them into its zip format but does
not verify them on load, so a bit-flipped file would otherwise load silently. Then the structure
of what was loaded is checked (:func:`load_model_file`, :func:`check_resume_state`).
"""

from __future__ import annotations

import json
import os
import re
import zipfile
import tempfile
from pathlib import Path
from typing import Any

import torch

from kdlab.engine.errors import KdlabError, writing

MODEL_FORMAT = "kdlab.model/1"


def _atomic_write(path: Path, write) -> None:
    """A failed write (a full disk) is a :class:`WriteError` naming ``path``; the file that was
    there is kept as it was."""
    with writing(path):
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


def save_text(text: str, path: str | Path) -> None:
    """UTF-8 text to ``path`` atomically."""
    _atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))


def save_json(obj: Any, path: str | Path) -> None:
    """JSON to ``path`` atomically."""
    _atomic_write(Path(path), lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` after checking the file's checksums; one clear
    line for a missing, corrupted or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise KdlabError(f"{path}: no such checkpoint file")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every record and compares its CRC-32
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise KdlabError(f"{path}: not a readable torch file ({exc})") from exc
    if bad is not None:
        raise KdlabError(f"{path}: corrupted: the checksum of its record '{bad}' does not match")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        # torch's message for a refused object runs to five lines and suggests weights_only=False;
        # kdlab never loads code, so say what was refused in one line instead
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if refused:
            raise KdlabError(f"{path}: holds a Python object ({refused.group(1)}), not only weights and plain "
                             "data; kdlab does not load such files") from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise KdlabError(f"{path}: not a readable kdlab checkpoint ({type(exc).__name__}: {first})") from exc


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
    """An exported model file, checked: its fields have the right types, the weights are a
    mapping of names to finite tensors."""
    data = load(path)
    if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
        raise KdlabError(f"{path}: not an exported kdlab model (expected format {MODEL_FORMAT})")
    checks = {
        "arch": lambda x: isinstance(x, str) and x != "",
        "config": lambda x: isinstance(x, dict),
        "num_classes": lambda x: type(x) is int and x >= 1,
        "input_shape": lambda x: isinstance(x, list) and all(type(d) is int and d >= 1 for d in x),
        "classes": lambda x: isinstance(x, list) and all(isinstance(c, str) for c in x),
        "state_dict": lambda x: isinstance(x, dict) and all(isinstance(k, str) and torch.is_tensor(t)
                                                            for k, t in x.items()),
    }
    for key, ok in checks.items():
        if key not in data or not ok(data[key]):
            raise KdlabError(f"{path}: field '{key}' is missing or malformed; not a valid kdlab model file")
    bad = _non_finite(data["state_dict"])
    if bad is not None:
        raise KdlabError(f"{path}: weight '{bad}' holds NaN or infinite values")
    return data


def check_resume_state(state: Any, path: Path, epochs: int) -> dict:
    """A training checkpoint's structure: epoch within the stage's epochs, a non-negative step,
    the state mappings and the RNG state present."""
    def bad(what: str):
        return KdlabError(f"{path}: {what}; not a valid kdlab checkpoint (delete it to restart the stage)")

    if not isinstance(state, dict):
        raise bad("holds no mapping")
    for key in ("epoch", "step"):
        if type(state.get(key)) is not int:
            raise bad(f"field '{key}' is missing or not an integer")
    if not 0 <= state["epoch"] <= epochs:
        raise bad(f"epoch = {state['epoch']} is outside 0..{epochs}")
    if state["step"] < 0:
        raise bad(f"step = {state['step']} is negative")
    for key in ("student", "extra", "optimizer", "plugins", "rng"):
        if not isinstance(state.get(key), dict):
            raise bad(f"field '{key}' is missing or not a mapping")
    if not torch.is_tensor(state["rng"].get("torch")):
        raise bad("the random-number state is missing")
    for name, tensor in state["student"].items():
        if not torch.is_tensor(tensor):
            raise bad(f"student weight '{name}' is not a tensor")
    name = _non_finite(state["student"])
    if name is not None:
        raise bad(f"student weight '{name}' holds NaN or infinite values")
    return state


def _non_finite(state_dict: dict) -> str | None:
    """The name of the first floating-point tensor with a NaN or an infinity, if any."""
    return next((name for name, t in state_dict.items()
                 if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)


def load_weights(model: torch.nn.Module, state_dict: dict, where: str) -> None:
    """``model.load_state_dict`` with one clear line when the weights do not fit."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:  # another architecture or other sizes: one line, not torch's list
        raise KdlabError(f"{where}: the weights do not fit the model ({first_lines(exc)})") from exc


def first_lines(exc: BaseException) -> str:
    """The gist of a long exception message, on one line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # torch's load_state_dict message: a header line, then one line per problem
    return "; ".join(lines[1:3] if len(lines) > 1 else lines)[:300]
