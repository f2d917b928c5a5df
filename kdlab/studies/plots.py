"""Report plots as PNG files, and the same figures as TensorBoard images: a metric against a cost
(MACs, parameters, bytes) with the Pareto front marked, and training curves overlaid."""

from __future__ import annotations

from pathlib import Path

from kdlab.engine.errors import missing_extra
from kdlab.studies.aggregate import lower_is_better, mean_std, pareto_front

try:
    import matplotlib
except ImportError as exc:  # an optional dependency: say which extra brings it
    raise missing_extra("plots", "matplotlib", "kdlab report --plots") from exc

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def metric_vs_cost(rows: list[dict], metric: str, cost: str, stages: set[str] | None = None):
    """Scatter of mean metric (with std bars) against mean cost; the Pareto front joined."""
    pts = [(mean_std(r["values"][cost]), mean_std(r["values"][metric]), f"{r['group']} / {r['stage']}")
           for r in rows if metric in r["values"] and cost in r["values"] and (stages is None or r["stage"] in stages)]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    if not pts:
        ax.text(0.5, 0.5, f"no run has both {metric} and {cost}", ha="center")
        return fig
    xs, ys = [p[0][0] for p in pts], [p[1][0] for p in pts]
    ax.errorbar(xs, ys, yerr=[p[1][1] for p in pts], fmt="o", color="0.6", ecolor="0.8", label="runs (mean ± std)")
    sign = -1.0 if lower_is_better(metric) else 1.0
    front = sorted(pareto_front([(x, sign * y) for x, y in zip(xs, ys)]), key=lambda i: xs[i])
    ax.plot([xs[i] for i in front], [ys[i] for i in front], "o-", color="tab:red", label="Pareto front")
    # number the front's points on the plot; their settings are listed under it
    for k, i in enumerate(front, 1):
        ax.annotate(str(k), (xs[i], ys[i]), fontsize=8, color="tab:red", xytext=(4, -10), textcoords="offset points")
    legend = [f"{k}: {pts[i][2]}  ({metric} {ys[i]:.4g}, {cost} {xs[i]:,.0f})" for k, i in enumerate(front, 1)]
    fig.set_size_inches(9, 5.5 + 0.18 * len(legend))
    fig.text(0.01, 0.01, "\n".join(legend), fontsize=7, va="bottom", family="monospace")
    if min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(cost)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.subplots_adjust(left=0.08, right=0.98, top=0.97, bottom=(0.6 + 0.18 * len(legend)) / (5.5 + 0.18 * len(legend)))
    return fig


def curves(runs, metric: str, stages: set[str] | None = None):
    """``metric`` per epoch of every (run, stage) with a history, overlaid."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for run in runs:
        for stage in run.metrics:
            if stages is not None and stage not in stages:
                continue
            hist = [h for h in run.history(stage) if metric in h]
            if hist:
                ax.plot([h["epoch"] for h in hist], [h[metric] for h in hist], lw=1,
                        label=f"{run.run_dir.name} / {stage}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if len(ax.lines) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write(figures: dict[str, object], out: Path) -> list[Path]:
    """Save each figure as ``<out>/<name>.png`` and all of them as TensorBoard images in ``<out>/tb``."""
    from torch.utils.tensorboard import SummaryWriter

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with SummaryWriter(log_dir=str(out / "tb")) as writer:
        for name, fig in figures.items():
            path = out / f"{name}.png"
            fig.savefig(path, dpi=120)
            writer.add_figure(f"report/{name}", fig, close=True)
            paths.append(path)
    return paths
