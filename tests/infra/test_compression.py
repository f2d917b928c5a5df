import pytest

from kdlab import KdlabError
from kdlab.engine.runner import run
from tests.conftest import TINY


def test_ratios_against_the_baseline_stage(write_recipe, tmp_path, catalogue):
    path = write_recipe(TINY.replace("[plugins.progress]", "[plugins.compression]\nbaseline = \"teacher\"\n\n[plugins.progress]"))
    m = run(path, out=tmp_path / "runs", catalogue=catalogue).metrics
    assert m["teacher"]["params_ratio"] == 1.0
    student, teacher = m["student"], m["teacher"]
    assert student["params_ratio"] == pytest.approx(teacher["params"] / student["params"])
    assert student["macs_ratio"] == pytest.approx(teacher["macs"] / student["macs"]) and student["macs_ratio"] > 1


def test_no_ratios_without_a_baseline(write_recipe, tmp_path, catalogue):
    m = run(write_recipe(), out=tmp_path / "runs", catalogue=catalogue).metrics
    assert not any(k.endswith("_ratio") for k in m["student"])


def test_unknown_or_later_baseline_is_an_error(write_recipe, tmp_path, catalogue):
    for name, match in (("nope", "no stage 'nope'"), ("student", "stage 'student' must run before 'teacher'")):
        path = write_recipe(TINY.replace("[plugins.progress]", f"[plugins.compression]\nbaseline = \"{name}\"\n\n[plugins.progress]"))
        with pytest.raises(KdlabError, match=match):
            run(path, out=tmp_path / f"runs_{name}", catalogue=catalogue)
