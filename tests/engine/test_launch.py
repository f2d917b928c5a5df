"""The --nproc launcher (kdlab.engine.launch): a worker's error line is handed over and the
first one is printed once."""

from __future__ import annotations

from kdlab.engine import launch


def test_the_first_workers_error_is_the_one_printed(tmp_path, monkeypatch):
    monkeypatch.setenv(launch.ENV, str(tmp_path))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert launch.hand_over(["kdlab: error: rank 1's"])
    (tmp_path / "rank0").write_text("1.0\nkdlab: error: rank 0's, earlier\n")
    assert launch.first_error(tmp_path) == ["kdlab: error: rank 0's, earlier"]
    (tmp_path / "rank0").unlink()
    assert launch.first_error(tmp_path) == ["kdlab: error: rank 1's"]


def test_outside_the_launcher_errors_are_printed(tmp_path, monkeypatch):
    monkeypatch.delenv(launch.ENV, raising=False)
    assert not launch.hand_over(["kdlab: error: x"])
    monkeypatch.setenv(launch.ENV, str(tmp_path))
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: nobody to hand it to
    assert not launch.hand_over(["kdlab: error: x"])
    assert launch.first_error(tmp_path) == []
