"""Reports over run directories the test writes: grouping by seed, statistics, Pareto, plots."""

from __future__ import annotations

import csv
import json
import statistics

import pytest
import tomli_w

from kdlab.cli import main
from kdlab.studies.aggregate import aggregate, find_runs, group_by_seed, pareto_front


def write_run(root, name, *, seed, width, acc, macs, history):
    d = root / name
    (d / "history").mkdir(parents=True)
    recipe = {"name": "x", "seed": seed, "stages": {"student": {"model": {"arch": "cnn", "channels": [width]},
                                                                "monitor": "val/accuracy", "monitor_mode": "max"}}}
    (d / "recipe.toml").write_text(tomli_w.dumps(recipe))
    (d / "metrics.json").write_text(json.dumps({"student": {"test/accuracy": acc, "macs": macs, "params": width * 10,
                                                            "bytes": width * 40}}))
    (d / "history" / "student.jsonl").write_text("".join(json.dumps({"epoch": i + 1, "val/accuracy": v}) + "\n"
                                                         for i, v in enumerate(history)))
    return d


@pytest.fixture
def runs(tmp_path):
    write_run(tmp_path, "a0", seed=0, width=4, acc=0.90, macs=100, history=[0.5, 0.8, 0.7])
    write_run(tmp_path, "a1", seed=1, width=4, acc=0.94, macs=100, history=[0.6, 0.9, 0.85])
    write_run(tmp_path, "b0", seed=0, width=8, acc=0.95, macs=300, history=[0.7, 0.95])
    write_run(tmp_path, "c0", seed=0, width=16, acc=0.80, macs=300, history=[0.1])  # dominated by b0
    return tmp_path


def test_groups_stats_best_and_last(runs):
    rows = aggregate(group_by_seed(find_runs([runs])))
    by_group = {r["group"]: r for r in rows}
    assert set(by_group) == {"channels=[4]", "channels=[8]", "channels=[16]"}
    a = by_group["channels=[4]"]
    assert a["seeds"] == 2
    assert statistics.mean(a["values"]["test/accuracy"]) == pytest.approx(0.92)
    assert a["values"]["best val/accuracy"] == [0.8, 0.9]
    assert a["values"]["best epoch"] == [2, 2]
    assert a["values"]["last val/accuracy"] == [0.7, 0.85]


def test_pareto_front_by_hand():
    # (cost, metric): a dominated by b; c and d on the front; e ties d's cost with a lower metric
    points = [(10, 0.5), (5, 0.6), (20, 0.9), (1, 0.2), (20, 0.8)]
    assert pareto_front(points) == [1, 2, 3]


def test_report_markdown_csv_and_plots(runs, tmp_path, capsys):
    assert main(["report", str(runs), "--plots", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr()
    table = out.out.splitlines()
    assert table[0].startswith("| group | stage | seeds | test/accuracy |")
    row_a = next(line for line in table if "channels=[4]" in line)
    assert "| 2 | 0.9200 ± 0.0283 |" in row_a  # sample std of 0.90 and 0.94: 0.04 / sqrt(2) and row_a.rstrip().endswith("| macs, params, bytes |")
    row_c = next(line for line in table if "channels=[16]" in line)
    assert row_c.rstrip().endswith("|  |")  # not on any front
    for name in ("test_accuracy_vs_macs", "test_accuracy_vs_params", "test_accuracy_vs_bytes", "curves"):
        png = tmp_path / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / "plots" / "tb").glob("events.out.tfevents.*"))
    assert main(["report", str(runs), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("group,stage,seeds,test/accuracy mean,test/accuracy std")
    row = next(r for r in csv.reader(lines) if r[0] == "channels=[4]")
    assert row[1:3] == ["student", "2"] and float(row[3]) == pytest.approx(0.92) and float(row[4]) == pytest.approx(0.04 / 2**0.5)


def test_pareto_front_for_error_metrics_prefers_lower_values():
    rows = [{"stage": s, "values": {"test/au_fa_fr": [e], "macs": [c]}}
            for s, e, c in (("big", 0.001, 100.0), ("small", 0.002, 10.0), ("bad", 0.005, 50.0))]
    from kdlab.studies import aggregate as agg

    marks = agg.pareto_marks(rows, "test/au_fa_fr", ["macs"], None)
    assert sorted(marks) == [0, 1]  # "bad" costs more than "small" and errs more
    assert agg.lower_is_better("test/fp16_au_fa_fr") and agg.lower_is_better("val/per")
    assert not agg.lower_is_better("test/accuracy")


def test_a_repeated_seed_is_one_measurement_and_epochs_are_whole(runs, capsys):
    write_run(runs, "a0-again", seed=0, width=4, acc=0.96, macs=100, history=[0.5, 0.8, 0.9])
    rows = aggregate(group_by_seed(find_runs([runs])))
    a = next(r for r in rows if r["group"] == "channels=[4]")
    assert a["seeds"] == 2 and sorted(a["values"]["test/accuracy"]) == [0.94, 0.96]  # the later seed-0 run
    assert main(["report", str(runs), "--stages", "student"]) == 0
    table = capsys.readouterr().out
    head = table.splitlines()[0].split(" | ")
    row_b = next(line for line in table.splitlines() if "channels=[8]" in line).split(" | ")
    assert row_b[head.index("best epoch")] == "2"  # one seed: a whole epoch, not 2.0
