"""The command-line contract: run, validate, plugins, report, exit codes."""

from __future__ import annotations

from pathlib import Path

from kdlab.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_run_prints_table_and_report_reads_it(write_recipe, tmp_path, capsys):
    assert main(["run", str(write_recipe()), "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert header.startswith("| stage | test/accuracy | val/accuracy |") and "| params | nonzero_params | macs |" in header
    assert "| teacher |" in out and "| student |" in out
    run_dir = next((tmp_path / "runs" / "tiny").iterdir())
    assert f"run directory: {run_dir}" in out

    assert main(["report", str(run_dir), str(run_dir), "--format", "csv", "--per-run"]) == 0
    csv = capsys.readouterr().out.splitlines()
    assert csv[0].startswith("run,stage,test/accuracy,val/accuracy")
    assert len(csv) == 1 + 4 and csv[1].startswith(f"{run_dir},teacher,")
    assert main(["report", str(run_dir), "--per-run"]) == 0
    assert "| run | stage |" in capsys.readouterr().out


def test_report_on_a_non_run_is_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no metrics.json" in capsys.readouterr().err


def test_validate_prints_resolved_recipe_plugins_and_order(write_recipe, capsys):
    assert main(["validate", str(write_recipe()), "--set", "stages.student.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "[stages.student]\nepochs = 3" in out  # resolved, with the override and defaults merged
    assert "# stage student: plugins " in out and "logit_kd" in out
    assert "#   kdlab_loss_terms: logit_kd" in out
    assert "#   kdlab_teacher_outputs: forward (wrapper) -> forward" in out


def test_plugins_lists_fields(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "logit_kd  (method, table [stages.<s>.methods.logit_kd])" in out
    assert "- temperature: float (default 4.0)" in out
    assert "cnn (from kdlab.models.cnn:ARCH (kdlab 0.1.0)): channels:" in out


def test_missing_data_files_exit_2(write_recipe, tmp_path, capsys):
    text = open(write_recipe()).read().replace('dataset = "digits"', f'dataset = "cifar10"\nroot = "{tmp_path}/none"')
    assert main(["run", str(write_recipe(text)), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "cifar10 files not found under" in err and "Traceback" not in err


def test_every_shipped_recipe_validates(capsys):
    recipes = sorted((ROOT / "recipes").glob("*.toml"))
    assert recipes
    for recipe in recipes:
        assert main(["validate", str(recipe)]) == 0, capsys.readouterr().err
    assert main(["validate", str(ROOT / "recipes" / "digits_arch_search.toml")]) == 0
    assert "# sweep: 144 runs, every one valid" in capsys.readouterr().out


def test_kws_stream_prints_probabilities_plots_and_exports(tmp_path, capsys):
    import numpy as np
    import soundfile
    import torch

    from kdlab.engine import checkpoint
    from kdlab.models.crnn import CRNN, CRNNConfig

    torch.manual_seed(0)
    model = CRNN(CRNNConfig(hidden=16), 40, 2)
    checkpoint.export_model(tmp_path / "m.pt", model=model, arch="crnn", config={"hidden": 16}, num_classes=2,
                            input_shape=(40, 98))
    soundfile.write(tmp_path / "a.wav", (0.1 * np.random.default_rng(0).standard_normal(32000)).astype(np.float32), 16000)
    argv = ["kws-stream", str(tmp_path / "m.pt"), str(tmp_path / "a.wav"), "--threshold", "0.0",
            "--export", str(tmp_path / "stream.ts")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "time_s\tprob" and len(lines) == 1 + 20  # 2 s in 100 ms chunks
    assert lines[1].startswith("0.10\t") and lines[-1].startswith("2.00\t")
    assert "detections (p >= 0.0): 0.1 s" in captured.err
    assert (tmp_path / "a.kws.png").stat().st_size > 1000
    assert torch.jit.load(str(tmp_path / "stream.ts")) is not None
    # a model of another kind, and audio at the wrong rate, are exit-2 errors
    soundfile.write(tmp_path / "b.wav", np.zeros(8000, np.float32), 8000)
    assert main(["kws-stream", str(tmp_path / "m.pt"), str(tmp_path / "b.wav")]) == 2
    assert "b.wav: sample rate 8000 Hz, expected 16000 Hz" in capsys.readouterr().err
    # a clip with a NaN sample is refused naming it, not streamed to NaN probabilities
    nan_wave = np.zeros(16000, np.float32)
    nan_wave[10] = np.nan
    soundfile.write(tmp_path / "n.wav", nan_wave, 16000, subtype="FLOAT")
    assert main(["kws-stream", str(tmp_path / "m.pt"), str(tmp_path / "n.wav")]) == 2
    assert "n.wav: 1 samples are NaN or infinite" in capsys.readouterr().err
    # transcribe needs a CTC model
    assert main(["transcribe", str(tmp_path / "m.pt"), str(tmp_path / "a.wav")]) == 2
    assert "a 'crnn' model; transcribe needs wav2vec2_ctc or conformer_ctc" in capsys.readouterr().err


def test_nproc_below_one_is_refused(write_recipe, capsys):
    import pytest

    for bad in ("0", "-2", "two"):
        with pytest.raises(SystemExit) as exit_info:
            main(["run", str(write_recipe()), "--nproc", bad])
        assert exit_info.value.code == 2
        assert "--nproc: must be" in capsys.readouterr().err


def test_tensorboard_hint_only_when_tensorboard_wrote(write_recipe, tmp_path, capsys):
    recipe = str(write_recipe())
    assert main(["run", recipe, "--out", str(tmp_path / "on")]) == 0
    assert "tensorboard --logdir" in capsys.readouterr().out
    assert main(["run", recipe, "--out", str(tmp_path / "off"), "--set", "plugins.tensorboard.enabled=false"]) == 0
    assert "tensorboard --logdir" not in capsys.readouterr().out
