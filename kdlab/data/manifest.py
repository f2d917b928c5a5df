"""Speech corpora as manifests: JSON lines, one utterance each, paths relative to the file.

    {"audio": "clips/train/000001.wav", "phonemes": "p rʲ i vʲ e t", "speaker": "3f2a9c1d",
     "duration": 1.52, "split": "train"}

``phonemes`` is a space-separated sequence from the corpus inventory (``phonemes.txt`` next to
the manifest, one phoneme per line: the CTC output classes after the blank). ``split`` is
``train``, ``val`` or ``test``. ``kdlab data ru-phonemes`` writes one
(:mod:`kdlab.speech.ru_corpus`); ``kdlab data common-voice`` converts a Common Voice folder into
one (:mod:`kdlab.speech.common_voice`).
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs

from kdlab.data.files import read_utf8
from kdlab.engine.errors import KdlabError

SPLITS = ("train", "val", "test")
FIELDS = ("audio", "phonemes", "speaker", "duration", "split")


@attrs.frozen
class Utterance:
    audio: str
    phonemes: tuple[str, ...]
    speaker: str
    duration: float
    split: str
    line: int = 0


def write_manifest(path: str | Path, utterances: list[Utterance], inventory: list[str]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for u in utterances:
            f.write(json.dumps({"audio": u.audio, "phonemes": " ".join(u.phonemes), "speaker": u.speaker,
                                "duration": round(u.duration, 4), "split": u.split}, ensure_ascii=False) + "\n")
    (path.parent / "phonemes.txt").write_text("".join(f"{p}\n" for p in inventory), encoding="utf-8")


def read_inventory(manifest: Path) -> list[str]:
    path = manifest.parent / "phonemes.txt"
    if not path.is_file():
        raise KdlabError(f"{path}: missing (the phoneme inventory, one phoneme per line, next to the manifest)")
    phones = [line.strip() for line in read_utf8(path).splitlines() if line.strip()]
    if len(set(phones)) != len(phones):
        raise KdlabError(f"{path}: a phoneme is listed twice")
    return phones


def read_manifest(path: str | Path) -> tuple[list[Utterance], list[str]]:
    """Utterances and the inventory; a malformed line is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise KdlabError(f"data.manifest: {path} does not exist (`kdlab data ru-phonemes --out DIR` writes DIR/manifest.jsonl)")
    inventory = read_inventory(path)
    text = read_utf8(path)
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KdlabError(f"{where}: not JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise KdlabError(f"{where}: expected a JSON object with {', '.join(FIELDS)}, got {line.strip()[:40]}")
        missing = [k for k in FIELDS if k not in row]
        if missing:
            raise KdlabError(f"{where}: missing {', '.join(missing)}")
        if row["split"] not in SPLITS:
            raise KdlabError(f"{where}: split '{row['split']}' is not one of {', '.join(SPLITS)}")
        for key in ("audio", "phonemes", "speaker"):
            if not isinstance(row[key], str):
                raise KdlabError(f"{where}: {key} must be a string, got {row[key]!r}")
        duration = row["duration"]
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not 0 <= duration < 1e6:
            raise KdlabError(f"{where}: duration must be a number of seconds, got {duration!r}")
        out.append(Utterance(row["audio"], tuple(row["phonemes"].split()), row["speaker"], float(duration),
                             row["split"], n))
    return out, inventory
