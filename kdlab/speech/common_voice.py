"""``kdlab data common-voice``: a Common Voice folder (TSV files + clips) -> a phoneme manifest
(:mod:`kdlab.data.manifest`), the sentences phonemised by espeak-ng."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from kdlab.data.manifest import Utterance, write_manifest
from kdlab.engine.errors import KdlabError


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
