"""Speech corpora as manifests: JSON lines, one utterance each, paths relative to the file.

    {"audio": "clips/train/000001.wav", "phonemes": "p rʲ i vʲ e t", "speaker": "3f2a9c1d",
     "duration": 1.52, "split": "train"}

``phonemes`` is a space-separated sequence from the corpus inventory (``phonemes.txt`` next to
the manifest, one phoneme per line: the CTC output classes after the blank). ``split`` is
``train``, ``val`` or ``test``. ``kdlab data ru-phonemes`` writes one; ``kdlab data
common-voice`` converts a Common Voice folder (TSV files + clips) into one.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import attrs

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
    phones = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(set(phones)) != len(phones):
        raise KdlabError(f"{path}: a phoneme is listed twice")
    return phones


def read_manifest(path: str | Path) -> tuple[list[Utterance], list[str]]:
    """Utterances and the inventory; a malformed line is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise KdlabError(f"data.manifest: {path} does not exist (`kdlab data ru-phonemes --out DIR` writes DIR/manifest.jsonl)")
    inventory = read_inventory(path)
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KdlabError(f"{where}: not JSON ({exc.msg})") from exc
        missing = [k for k in FIELDS if k not in row]
        if missing:
            raise KdlabError(f"{where}: missing {', '.join(missing)}")
        if row["split"] not in SPLITS:
            raise KdlabError(f"{where}: split '{row['split']}' is not one of {', '.join(SPLITS)}")
        out.append(Utterance(str(row["audio"]), tuple(str(row["phonemes"]).split()), str(row["speaker"]),
                             float(row["duration"]), row["split"], n))
    return out, inventory


def convert_common_voice(root: str | Path, out: str | Path, *, voice: str = "ru",
                         tsvs: dict[str, str] | None = None) -> dict:
    """Common Voice layout (``train.tsv``, ``dev.tsv``, ``test.tsv`` with ``client_id``, ``path``
    and ``sentence`` columns; audio in ``clips/``) -> ``out/manifest.jsonl``. Sentences are
    phonemised by espeak-ng with ``voice`` (the same engine as the synthetic corpus); the audio
    stays where it is (paths are written relative to the manifest) and is resampled on loading.
    Clips that cannot be read or are empty are reported and skipped."""
    import soundfile

    from kdlab.speech.espeak import engine

    root, out = Path(root), Path(out)
    tsvs = tsvs or {"train": "train.tsv", "val": "dev.tsv", "test": "test.tsv"}
    eng = engine()
    utterances, skipped, inventory = [], [], {}
    for split, name in tsvs.items():
        tsv = root / name
        if not tsv.is_file():
            raise KdlabError(f"{tsv}: missing (a Common Voice folder has train.tsv, dev.tsv and test.tsv)")
        with open(tsv, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            need = {"client_id", "path", "sentence"} - set(reader.fieldnames or [])
            if need:
                raise KdlabError(f"{tsv}:1: missing columns {', '.join(sorted(need))}")
            for n, row in enumerate(reader, start=2):
                clip = root / "clips" / row["path"]
                try:
                    info = soundfile.info(str(clip))
                    duration = info.frames / info.samplerate
                except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
                    skipped.append(f"{tsv}:{n}: {clip.name}: unreadable audio ({exc})")
                    continue
                if info.frames == 0:
                    skipped.append(f"{tsv}:{n}: {clip.name}: empty audio")
                    continue
                phones = tuple(eng.phonemes(row["sentence"], voice))
                if not phones:
                    skipped.append(f"{tsv}:{n}: empty transcript")
                    continue
                for p in phones:
                    inventory[p] = None
                rel = os.path.relpath(clip.resolve(), out.resolve())
                utterances.append(Utterance(str(rel), phones, row["client_id"][:16], duration, split))
    write_manifest(out / "manifest.jsonl", utterances, sorted(inventory))
    return {"utterances": len(utterances), "skipped": skipped, "phonemes": len(inventory)}
