import hashlib
import json
import subprocess
import sys



def _digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_generator_layout_and_determinism(tmp_path):
    # each corpus in a fresh process, as `kdlab data` makes it (espeak-ng keeps state per process)
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        subprocess.run([sys.executable, "-m", "kdlab", "data", "kws", "--out", str(tmp_path / name), "--clips", "40",
                        "--keyword-fraction", "0.3", "--seed", str(seed)], check=True, capture_output=True)
    a = json.loads((tmp_path / "a" / "corpus.json").read_text())
    root = tmp_path / "a"
    assert _digest(root) == _digest(tmp_path / "b")
    assert _digest(root) != _digest(tmp_path / "c")
    # Speech Commands layout: word folders, split lists, background noise
    val = (root / "validation_list.txt").read_text().split()
    test = (root / "testing_list.txt").read_text().split()
    assert all((root / rel).is_file() for rel in val + test)
    assert len(list((root / "_background_noise_").glob("*.wav"))) == 4
    assert (root / "sheila").is_dir()
    clips = [p for p in root.glob("*/*.wav") if p.parent.name != "_background_noise_"]
    assert len(clips) == 40
    # held-out voices: no speaker id of the test split appears in training
    speaker = lambda rel: rel.split("/")[-1].split("_nohash_")[0]  # noqa: E731
    train = {f"{p.parent.name}/{p.name}" for p in clips} - set(val) - set(test)
    assert {speaker(r) for r in test}.isdisjoint({speaker(r) for r in train})
    assert {speaker(r) for r in val}.isdisjoint({speaker(r) for r in train})
    summary = a
    assert summary["clips"] == 40 and summary["seed"] == 3
    assert sum(s["keyword"] for s in summary["splits"].values()) == len(list((root / "sheila").glob("*.wav")))
