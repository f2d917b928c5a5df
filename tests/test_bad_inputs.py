"""Bad input, one table: each case ends with one line per problem naming the file, key or line,
exit code 2, and no traceback (``--debug`` shows it). Cases found by a battery of wrong inputs;
cases that need a trained model or real-format files live beside the code they exercise
(tests/engine/test_checkpoint.py, tests/data/*, tests/infra/test_teacher_cache.py)."""

from __future__ import annotations

import pytest
import torch

from kdlab.cli import main
from tests.conftest import TINY


def _recipe(tmp_path, text=TINY, name="recipe.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _latin1(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_bytes(TINY.replace('name = "tiny"', 'name = "tiny" # caf\xe9').encode("latin-1"))
    return ["validate", str(path)], "not UTF-8 text (byte 0xe9"


def _model_file_without_weights(tmp_path):
    torch.save({"format": "kdlab.model/1", "arch": "cnn", "config": {}, "num_classes": 10, "input_shape": [1, 8, 8],
                "classes": []}, tmp_path / "teacher.pt")
    text = TINY.split("[stages.teacher]")[0] + f'[stages.student]\nepochs = 1\nteachers = ["{tmp_path / "teacher.pt"}"]\n' \
        'methods.logit_kd = {}\n'
    return ["run", str(_recipe(tmp_path, text)), "--out", str(tmp_path / "runs")], "field 'state_dict' is missing or malformed"


def _stored_config(arch, config, command, expected):
    """A model file whose stored settings this installation's model class cannot take."""
    def case(tmp_path):
        torch.save({"format": "kdlab.model/1", "arch": arch, "config": config, "num_classes": 2,
                    "input_shape": [40, 40], "classes": ["a", "b"], "state_dict": {}}, tmp_path / "m.pt")
        if command == "run":
            text = TINY.split("[stages.teacher]")[0] + f'[stages.student]\nepochs = 1\nteachers = ["{tmp_path / "m.pt"}"]\n' \
                'methods.logit_kd = {}\n'
            return ["run", str(_recipe(tmp_path, text)), "--out", str(tmp_path / "runs")], f"{tmp_path / 'm.pt'}: {expected}"
        (tmp_path / "a.wav").write_bytes(b"")
        return [command, str(tmp_path / "m.pt"), str(tmp_path / "a.wav")], f"{tmp_path / 'm.pt'}: {expected}"
    return case


def _edit(old, new, expected, command="validate"):
    def case(tmp_path):
        assert old in TINY
        return [command, str(_recipe(tmp_path, TINY.replace(old, new)))], expected
    return case


def _set(override, expected):
    return lambda tmp_path: (["validate", str(_recipe(tmp_path)), "--set", override], expected)


CASES = {
    "non-UTF-8 recipe": _latin1,
    "sweep = 5": _edit('name = "tiny"', 'name = "tiny"\nsweep = 5', "sweep must be a table", command="sweep"),
    "seed beyond 64 bits": _set("seed=99999999999999999999", "seed must be a 64-bit integer"),
    "batch size beyond 64 bits": _set("data.batch_size=18446744073709551616", "batch_size must be a 64-bit integer"),
    "inf learning rate": _edit("lr = 0.01", "lr = inf", "recipe.toml:15: lr must be a finite number, got inf"),
    "nan temperature": _edit("temperature = 4.0", "temperature = nan", "temperature must be a finite number"),
    "inf loss weight": _edit("methods.logit_kd", "loss_weights = { kd = inf }\nmethods.logit_kd",
                             "kd must be a finite number, got inf @ $.stages.student.loss_weights.kd"),
    "conformer width and heads": _edit('model = { arch = "cnn", channels = [8, 16] }',
                                       'model = { arch = "conformer_ctc", dim = 10, heads = 4 }',
                                       "dim: must be divisible by heads (4), got 10"),
    "negative milestone": _edit("epochs = 2", 'epochs = 2\nscheduler = { name = "multistep", milestones = [-1] }',
                                "recipe.toml:15: milestones must be >= 1, got -1"),
    "teachers as a string": _edit('teachers = ["teacher"]', 'teachers = "teacher"',
                                  "teachers must be a list, got 'teacher' @ $.stages.student.teachers"),
    "bad name": _edit('name = "tiny"', 'name = "a b"', "name: may contain only letters, digits and _ . -"),
    "monitor nobody reports": _edit("methods.supervised = {}", 'methods.supervised = {}\nmonitor = "val/acc"',
                                    "stages.teacher.monitor = 'val/acc': no plugin reports this metric", command="run"),
    "teacher file without weights": _model_file_without_weights,
    "teacher file with an unknown stored key": _stored_config(
        "cnn", {"channels": [4, 8], "colour": 1}, "run",
        "its stored model settings do not fit this installation's CompactCNNConfig: unknown key 'colour'"),
    "teacher file with a wrongly typed stored key": _stored_config(
        "cnn", {"channels": "wide"}, "run", "its stored model settings do not fit this installation's CompactCNNConfig: channels must be a list"),
    "streamed model with an unknown stored key": _stored_config(
        "crnn", {"bogus": 1}, "kws-stream", "its stored model settings do not fit this installation's CRNNConfig: unknown key 'bogus'"),
    "transcribed model with an unknown stored key": _stored_config(
        "conformer_ctc", {"bogus": 1}, "transcribe", "its stored model settings do not fit this installation's ConformerConfig: unknown key"),
    "output under a file": lambda tmp_path: (
        ["run", str(_recipe(tmp_path)), "--out", str(_recipe(tmp_path, "x", "file.txt") / "runs")], "file.txt"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_is_one_line_with_exit_2(case, tmp_path, capsys):
    argv, expected = CASES[case](tmp_path)
    if argv[0] == "run" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "runs")]
    code = main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("kdlab: error:")]
    assert code == 2, err
    assert "Traceback" not in err
    assert errors and any(expected in line for line in errors), err


def test_debug_shows_the_traceback(tmp_path):
    argv, _ = _set("seed=-1", "")(tmp_path)
    from kdlab.engine.errors import RecipeError

    with pytest.raises(RecipeError):
        main(["--debug", *argv])
