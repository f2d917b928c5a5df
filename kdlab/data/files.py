"""Reading a data set's text files (lists, manifests, corpora, inventories) so that a file that is
not text is one line naming it, never a UnicodeDecodeError traceback."""

from __future__ import annotations

from pathlib import Path

from kdlab.engine.errors import KdlabError


def read_utf8(path: str | Path, what: str = "") -> str:
    """The file's text; a KdlabError naming ``what`` (e.g. ``"data.root: "``) and the file when it is
    not UTF-8 or holds NUL bytes (a binary file under a text file's name)."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise KdlabError(f"{what}{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                         "save it as UTF-8") from None
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        raise KdlabError(f"{what}{path}:{line}: a NUL byte; this is a binary file, not text")
    return text
