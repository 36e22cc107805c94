"""An experiment report as a figure: the arms side by side with their 95% intervals.

Panels: weighted score, each objective's mean reward, thumbs-up rate, rating and preference win
rate (when there is feedback of that kind), and latency p50/p95. Needs matplotlib
(``pip install 'alignd[plot]'``); the rest of the client does not.
"""

from __future__ import annotations

import math
from pathlib import Path

from alignd.clients.types import ExperimentReport, MeanEstimate, RateEstimate


def _panels(report: ExperimentReport) -> list[tuple[str, list[MeanEstimate | RateEstimate]]]:
    arms = report.arms
    panels: list[tuple[str, list[MeanEstimate | RateEstimate]]] = [("weighted score", [a.weighted_score for a in arms])]
    for objective in sorted({o for a in arms for o in a.rewards}):
        panels.append(
            (
                f"reward: {objective}",
                [a.rewards.get(objective, MeanEstimate(math.nan, math.nan, math.nan, 0)) for a in arms],
            )
        )
    if any(a.thumbs_up.trials for a in arms):
        panels.append(("thumbs-up rate", [a.thumbs_up for a in arms]))
    if any(a.rating.count for a in arms):
        panels.append(("rating", [a.rating for a in arms]))
    if any(a.preference_wins.trials for a in arms):
        panels.append(("preference win rate", [a.preference_wins for a in arms]))
    return panels


def _value(estimate: MeanEstimate | RateEstimate) -> float:
    return estimate.mean if isinstance(estimate, MeanEstimate) else estimate.rate


def plot_report(report: ExperimentReport, path: str | Path) -> Path:
    """Write the figure (format from the file name: .png, .svg, .pdf) and return its path."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed on a server
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("plotting needs matplotlib: pip install 'alignd[plot]'") from None

    panels = _panels(report)
    columns = 3
    rows = math.ceil((len(panels) + 1) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    names = [a.name for a in report.arms]
    positions = list(range(len(names)))
    for axis, (title, estimates) in zip(axes.flat, panels):
        values = [_value(e) for e in estimates]
        # Error bars from the interval; an arm without an interval (fewer than 2 values) gets none.
        below = [max(v - e.low, 0.0) if math.isfinite(e.low) else 0.0 for v, e in zip(values, estimates)]
        above = [max(e.high - v, 0.0) if math.isfinite(e.high) else 0.0 for v, e in zip(values, estimates)]
        axis.bar(positions, values, yerr=[below, above], capsize=6, color="#8fb3d9", edgecolor="#2f5d8a")
        counts = [e.count if isinstance(e, MeanEstimate) else e.trials for e in estimates]
        axis.set_xticks(positions, [f"{n}\n(n={c})" for n, c in zip(names, counts)])
        axis.set_title(title)
    latency = axes.flat[len(panels)]
    width = 0.38
    latency.bar(
        [p - width / 2 for p in positions],
        [a.latency_p50_seconds for a in report.arms],
        width,
        label="p50",
        color="#a9d18e",
    )
    latency.bar(
        [p + width / 2 for p in positions],
        [a.latency_p95_seconds for a in report.arms],
        width,
        label="p95",
        color="#548235",
    )
    latency.set_xticks(positions, names)
    latency.set_title("latency (s)")
    latency.legend()
    for axis in list(axes.flat)[len(panels) + 1 :]:
        axis.axis("off")
    figure.suptitle(
        f"experiment {report.name}: {report.requests} requests, {report.feedback} feedback "
        "(bars: mean or rate, whiskers: 95% interval)"
    )
    figure.tight_layout()
    out = Path(path)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
