"""Seed 000's architecture search, by Optuna against the grid: the Pareto front of test accuracy
against MACs (mean of 3 seeds), its hypervolume as the search trains more epochs, and wall time.

    python -m benchmarks.search_vs_grid --out runs/search_vs_grid

Runs ``kdlab sweep recipes/digits_arch_search.toml --jobs 2`` (144 runs; shared stages on, so the
teacher trains once per seed) and ``kdlab search recipes/digits_arch_optuna.toml`` (one worker,
TPE seeded: deterministic) with ``--set search.trials=N`` for each N of ``--trials`` in turn
(the study grows; each budget's front is read when it is reached), then prints the comparison.
Run again, finished runs and trials are reused and only the comparison is printed (the wall
times are those recorded when they ran, in ``OUT/wall_times.json``).

Compute is counted in trained epochs (of every stage; reused stages count once, where they
trained). "Grid, no sharing" is the grid as kdlab ran it before shared stages: every run trains
its own teacher (144 x (15 + 15) epochs). The search optimises *validation* accuracy; both fronts
are shown on *test* accuracy. Hypervolume: the area dominated by the front between it and the
reference point (accuracy 0.5, 50,000 MACs), in accuracy x kMACs; larger is better.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from kdlab.studies.search import load_study, trained_epochs

ROOT = Path(__file__).resolve().parents[1]
REF = (0.5, 50_000.0)  # (accuracy, MACs): worse than every front point of interest


def pareto(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """(accuracy up, MACs down) points not dominated by another, by MACs."""
    front = []
    for acc, macs, label in sorted(points, key=lambda p: (p[1], -p[0])):
        if not front or acc > front[-1][0]:
            front.append((acc, macs, label))
    return front


def hypervolume(front: list[tuple[float, float, str]]) -> float:
    """Area dominated by a 2-D front up to REF. Written out: two objectives need a sweep over
    the sorted points, a few lines; Optuna's hypervolume is a private module."""
    area, prev_acc = 0.0, REF[0]
    for acc, macs, _ in sorted(front, key=lambda p: p[1]):  # cheapest first, accuracy rising
        if acc > prev_acc and macs < REF[1]:
            area += (acc - prev_acc) * (REF[1] - macs) / 1000.0
            prev_acc = acc
    return area


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def grid_points(grid_dir: Path) -> tuple[list, int]:
    groups: dict[str, list[dict]] = {}
    epochs = 0
    for metrics_path in sorted(grid_dir.glob("*/metrics.json")):
        run_dir = metrics_path.parent
        recipe = tomllib.loads((run_dir / "recipe.toml").read_text())
        st = recipe["stages"]["student"]
        label = (f"{st['model']['channels']} sep={st['model']['separable']} se={st['model']['se']} "
                 f"sp={st['methods']['pruning']['sparsity']} lr={st['optimizer']['lr']}")
        groups.setdefault(label, []).append(_metrics(run_dir)["student"])
        epochs += trained_epochs(run_dir)
    points = [(statistics.fmean(m["test/accuracy"] for m in ms), ms[0]["macs"], label) for label, ms in groups.items()]
    return points, epochs


def search_points(study_dir: Path):
    """Per complete trial in trial order: (test accuracy mean, MACs, label, cumulative epochs)."""
    study, _ = load_study(study_dir)
    seen, epochs, rows = set(), 0, []
    for t in sorted(study.get_trials(), key=lambda t: t.number):
        for d in t.user_attrs.get("runs", []):
            if d not in seen and Path(d).is_dir():
                seen.add(d)
                epochs += trained_epochs(Path(d))
        if t.state.name != "COMPLETE":
            continue
        ms = [_metrics(Path(d))["student"] for d in t.user_attrs["runs"]]
        p = t.params
        label = (f"#{t.number} {p['stages.student.model.channels']} sep={p['stages.student.model.separable']} "
                 f"se={p['stages.student.model.se']} sp={p['stages.student.methods.pruning.sparsity']} "
                 f"lr={p['stages.student.optimizer.lr']:.3g} T={p['stages.student.methods.logit_kd.temperature']:.2f} "
                 f"a={p['stages.student.methods.logit_kd.alpha']:.2f}")
        rows.append((statistics.fmean(m["test/accuracy"] for m in ms), ms[0]["macs"], label, epochs,
                     statistics.stdev(m["test/accuracy"] for m in ms)))
    return rows


def _timed(cmd: list[str], key: str, out: Path) -> None:
    """Run ``cmd`` and record its wall time under ``key``, unless it was recorded already."""
    path = out / "wall_times.json"
    times = json.loads(path.read_text()) if path.is_file() else {}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    if key not in times:
        times[key] = time.perf_counter() - start
        path.write_text(json.dumps(times, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/search_vs_grid")
    parser.add_argument("--trials", default="14,30", help="search budgets to reach in turn (default 14,30)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kdlab = [sys.executable, "-m", "kdlab"]
    quiet = ["--set", "plugins.progress.enabled=false"]
    # apart: the search trains its own teachers rather than reuse the grid's from a shared store
    _timed([*kdlab, "sweep", str(ROOT / "recipes/digits_arch_search.toml"), "--out", str(out / "grid"), "--jobs", "2",
            *quiet], "grid", out)
    budgets = [int(x) for x in args.trials.split(",")]
    for n in budgets:
        _timed([*kdlab, "search", str(ROOT / "recipes/digits_arch_optuna.toml"), "--out", str(out / "search"), *quiet,
                "--set", f"search.trials={n}"], f"search_{n}", out)
    times = json.loads((out / "wall_times.json").read_text())

    grid, grid_epochs = grid_points(out / "grid" / "digits_arch_search")
    grid_front = pareto(grid)
    unshared = len(list((out / "grid" / "digits_arch_search").glob("*/metrics.json"))) * 30
    rows = search_points(out / "search" / "digits_arch_optuna")
    print(f"grid: {len(grid)} settings x 3 seeds; {grid_epochs} epochs trained with shared stages "
          f"({unshared} without); wall {times['grid']:.0f} s (--jobs 2)")
    print(f"grid front hypervolume: {hypervolume(grid_front):.2f}\n")
    print("| search trials | epochs trained | vs grid (shared) | vs grid (no sharing) | front hypervolume | vs grid |")
    print("|---|---|---|---|---|---|")
    marks = sorted({*[b for b in budgets if b <= len(rows)], *range(5, len(rows), 5)})
    for k in marks:
        front = pareto([(r[0], r[1], r[2]) for r in rows[:k]])
        hv, ep = hypervolume(front), rows[k - 1][3]
        print(f"| {k} | {ep} | {ep / grid_epochs:.2f} | {ep / unshared:.2f} | {hv:.2f} | "
              f"{hv / hypervolume(grid_front):.3f} |")
    wall = ", ".join(f"{n} trials {times[f'search_{n}']:.0f} s" for n in budgets if f"search_{n}" in times)
    print(f"\nsearch wall time (1 worker, each budget's increment): {wall}")
    for title, front in (("grid", grid_front), (f"search ({len(rows)} trials)", pareto([r[:3] for r in rows]))):
        print(f"\n{title} front (test accuracy mean of 3 seeds, MACs):")
        for acc, macs, label in front:
            print(f"  {acc:.4f}  {macs:>8,.0f}  {label}")


if __name__ == "__main__":
    main()
