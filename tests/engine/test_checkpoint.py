"""Files kdlab loads are checked before use: record checksums, structure, fit to the model."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch

from kdlab import KdlabError
from kdlab.engine import checkpoint
from kdlab.engine.runner import run
from tests.conftest import TINY

ONE_EPOCH = TINY.replace("epochs = 2", "epochs = 1")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, catalogue):
    """One finished tiny run (teacher and student, one epoch each)."""
    tmp = tmp_path_factory.mktemp("trained")
    recipe = tmp / "recipe.toml"
    recipe.write_text(ONE_EPOCH)
    torch.set_num_threads(1)
    return run(recipe, out=tmp / "runs", run_id="r", catalogue=catalogue).run_dir


def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def test_a_bit_flip_anywhere_in_the_weights_is_detected(trained, tmp_path):
    path = _copy(trained / "models/teacher.pt", tmp_path / "t.pt")
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = os.urandom(64)  # inside a weight record
    path.write_bytes(bytes(data))
    with pytest.raises(KdlabError, match=r"t.pt: corrupted: the checksum of its record .* does not match"):
        checkpoint.load_model_file(path)


def test_a_corrupted_last_checkpoint_is_not_resumed(trained, tmp_path, write_recipe, catalogue):
    run_dir = tmp_path / "runs/tiny/r"
    recipe = write_recipe(ONE_EPOCH)
    run(recipe, out=tmp_path / "runs", run_id="r", catalogue=catalogue)
    (run_dir / "models/student.pt").unlink()  # the student stage resumes from last.pt
    last = run_dir / "checkpoints/student/last.pt"
    data = bytearray(last.read_bytes())
    # a bit in the middle of the largest record's bytes (not in the zip's alignment padding,
    # which holds no data: a flip there changes nothing that is loaded)
    import struct
    import zipfile

    with zipfile.ZipFile(last) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + info.file_size // 2] ^= 0x01
    last.write_bytes(bytes(data))
    with pytest.raises(KdlabError, match="last.pt: corrupted"):
        run(recipe, out=tmp_path / "runs", run_id="r", catalogue=catalogue)


@pytest.mark.parametrize(("change", "message"), [
    ({"epoch": 99}, r"epoch = 99 is outside 0..1"),
    ({"epoch": -5}, r"epoch = -5 is outside 0..1"),
    ({"step": -1}, "step = -1 is negative"),
    ({"epoch": "1"}, "field 'epoch' is missing or not an integer"),
    ({"rng": {}}, "the random-number state is missing"),
    ({"student": {"conv.weight": torch.tensor([float("nan")])}}, "holds NaN"),
])
def test_a_crafted_resume_state_is_refused(trained, tmp_path, change, message):
    state = checkpoint.load(trained / "checkpoints/student/last.pt")
    checkpoint.save({**state, **change}, tmp_path / "last.pt")
    with pytest.raises(KdlabError, match=message):
        checkpoint.check_resume_state(checkpoint.load(tmp_path / "last.pt"), tmp_path / "last.pt", epochs=1)


def test_a_model_file_with_a_missing_or_malformed_field_is_refused(trained, tmp_path):
    data = checkpoint.load(trained / "models/student.pt")
    for key, value in [("state_dict", None), ("num_classes", -3), ("input_shape", "8x8")]:
        broken = {**data, key: value} if value is not None else {k: v for k, v in data.items() if k != key}
        checkpoint.save(broken, tmp_path / "m.pt")
        with pytest.raises(KdlabError, match=f"field '{key}' is missing or malformed"):
            checkpoint.load_model_file(tmp_path / "m.pt")


class Payload:
    pass


def test_a_pickled_object_is_refused_in_one_line_without_torch_advice(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "kdlab.model/1", "obj": Payload()}, path)
    with pytest.raises(KdlabError) as info:
        checkpoint.load(path)
    message = str(info.value)
    assert "holds a Python object (tests.engine.test_checkpoint.Payload)" in message
    assert "\n" not in message and "weights_only=False" not in message


def test_a_non_torch_file_is_refused(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(KdlabError, match="not a readable torch file"):
        checkpoint.load(path)


def test_init_from_another_architecture_is_one_line_exit_2(trained, write_recipe, tmp_path):
    recipe = write_recipe(ONE_EPOCH + f'\n[stages.again]\ninit = "{trained / "models/teacher.pt"}"\n'
                          'methods.supervised = {}\n')
    result = subprocess.run([sys.executable, "-m", "kdlab", "run", str(recipe), "--out", str(tmp_path)],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2
    assert "stages.again.init" in result.stderr and "weights do not fit the model" in result.stderr
    assert "Traceback" not in result.stderr
