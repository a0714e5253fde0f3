"""Figures of runs and comparisons (matplotlib).

Everything here draws on matplotlib's Agg canvas directly (no pyplot, no global
backend switch), so plots work headless and inside other programs. The numbers come
from :mod:`jaxal.experiment.records` and :mod:`jaxal.experiment.stats`; this module only draws.

- :func:`plot_learning_curves`: one line per strategy, mean ± 1 std over seeds;
- :func:`plot_curves_ci`: learning curves of a grid with Student-t bands;
- :func:`plot_differences`: accuracy minus the reference's, paired per seed;
- :func:`plot_penalty`: the penalty matrix as a heatmap with its column means;
- :func:`plot_signals`: one run's accuracy and stopping signals against its labels.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxal.experiment.records import Curves, as_records, curve, curve_ci, difference_curves, group_by_strategy
from jaxal.experiment.stats import PenaltyMatrix

__all__ = ["plot_learning_curves", "plot_curves_ci", "plot_differences", "plot_penalty", "plot_signals"]


def _colours(labels: Iterable[str]) -> dict[str, Any]:
    """One stable colour per label (sorted order through tab10 / tab20)."""
    labels = sorted(labels)
    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}


def _new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (no pyplot state)."""
    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    return path


def _legend(ax: Any, **kwargs: Any) -> None:
    """A legend of every labeled line. Handles and labels are passed explicitly because
    matplotlib silently drops labels starting with ``_`` (a strategy may be named so)."""
    handles = [h for h in ax.get_lines() + ax.collections if h.get_label() and h.get_label() != "_nolegend_"
               and not h.get_label().startswith("_child")]
    if handles:
        ax.legend(handles, [h.get_label() for h in handles], **kwargs)


def _legend_outside(ax: Any) -> None:
    _legend(ax, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", frameon=False)


def plot_learning_curves(
    runs: Mapping[str, Sequence[Any]] | Sequence[Any],
    path: str | os.PathLike,
    *,
    metric: str = "test_accuracy",
    title: str | None = None,
) -> str:
    """Plot ``metric`` against the number of labels, one line per strategy.

    Args:
      runs: ``{strategy: [run_dir or records, ...]}``, or a flat list of run
        directories / record lists grouped by the strategy named in their records.
        With several runs per strategy (seeds) the line is the mean and the band ±1
        standard deviation.
      path: output image file (PNG by extension).
      metric: record field on the y axis.
      title: figure title (default: data set and model when the records say).

    Returns:
      ``path`` as a string.
    """
    if isinstance(runs, Mapping):
        groups = {name: [as_records(r) for r in rs] for name, rs in runs.items()}
    else:
        groups = group_by_strategy(runs)
    groups = {k: [r for r in v if r] for k, v in groups.items()}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        raise ValueError("runs holds no records to plot")

    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for name in sorted(groups):
        n, mean, std = curve(groups[name], metric)
        seeds = len(groups[name])
        label = name if seeds == 1 else f"{name} (n={seeds} seeds)"
        (line,) = ax.plot(n, mean, marker="o", markersize=3, label=label)
        if seeds > 1:
            ax.fill_between(n, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("labeled examples")
    ax.set_ylabel(metric.replace("_", " "))
    if title is None:
        first = next(iter(groups.values()))[0][0]
        bits = [str(first[k]) for k in ("dataset", "model") if k in first]
        title = " / ".join(bits) if bits else None
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend(ax, loc="lower right", fontsize="small")
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return path


def plot_curves_ci(
    curves: Curves,
    path: str | os.PathLike,
    *,
    reference: str | None = "random",
    ylabel: str = "test accuracy",
    title: str | None = None,
    level: float = 0.95,
) -> str:
    """Learning curves: mean over seeds with a ``level`` Student-t band, one line per label.

    The reference (random) is drawn dashed black. Returns ``path``.
    """
    if not curves:
        raise ValueError("curves is empty: nothing to plot")
    colours = _colours(curves)
    fig = _new_figure(7.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for label in sorted(curves, key=lambda lab: (lab != reference, lab)):
        n, mean, half = curve_ci(curves[label], level)
        is_ref = label == reference
        colour = "black" if is_ref else colours[label]
        ax.plot(n, mean, marker="o", markersize=2.5, color=colour, linestyle="--" if is_ref else "-",
                label=f"{label} ({len(curves[label])} seeds)")
        ax.fill_between(n, mean - half, mean + half, color=colour, alpha=0.15, linewidth=0)
    ax.set_xlabel("labeled examples")
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"learning curves, mean and {level:.0%} CI over seeds")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return _save(fig, path)


def plot_differences(
    curves: Curves,
    path: str | os.PathLike,
    *,
    reference: str = "random",
    title: str | None = None,
    level: float = 0.95,
    metric: str = "accuracy",
) -> str:
    """``metric`` (accuracy) minus the reference's (paired per seed), mean and ``level`` CI band.

    The look-ahead paper's Figure 2 style; zero is the reference. Returns ``path``.
    """
    diffs = difference_curves(curves, reference, level)
    if not diffs:
        raise ValueError(f"no label shares a seed with the reference {reference!r}: nothing to plot")
    colours = _colours(curves)
    fig = _new_figure(7.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.axhline(0.0, color="black", linestyle="--", linewidth=1, label=reference)
    for label in sorted(diffs):
        n, mean, half = diffs[label]
        ax.plot(n, mean, marker="o", markersize=2.5, color=colours[label], label=label)
        ax.fill_between(n, mean - half, mean + half, color=colours[label], alpha=0.15, linewidth=0)
    ax.set_xlabel("labeled examples")
    ax.set_ylabel(f"{metric} − {reference}")
    ax.set_title(title or f"difference to {reference}, paired over seeds, mean and {level:.0%} CI")
    ax.grid(alpha=0.3)
    _legend_outside(ax)
    return _save(fig, path)


def plot_penalty(pm: PenaltyMatrix, path: str | os.PathLike, *, title: str | None = None) -> str:
    """Heatmap of a :class:`jaxal.experiment.stats.PenaltyMatrix` with its column means below.

    Cell ``(i, j)``: the fraction of budgets at which row ``i`` is significantly more
    accurate than column ``j``. The bottom strip shows each column's mean (how often
    that strategy is beaten; lower is better). Returns ``path``.
    """
    k = len(pm.strategies)
    mat = np.asarray(pm.matrix, dtype=float)
    if mat.shape != (k, k):
        raise ValueError(f"penalty matrix of shape {mat.shape} does not match {k} strategies")
    size = 1.6 + 0.55 * k
    fig = _new_figure(size + 1.2, size + 0.9)
    grid = fig.add_gridspec(2, 2, height_ratios=[k, 1.0], width_ratios=[20, 1], hspace=0.08, wspace=0.05)
    ax = fig.add_subplot(grid[0, 0])
    ax_mean = fig.add_subplot(grid[1, 0], sharex=ax)
    cax = fig.add_subplot(grid[:, 1])
    im = ax.imshow(mat, cmap="Reds", vmin=0.0, vmax=1.0, aspect="auto")
    ax_mean.imshow(np.asarray(pm.column_means, dtype=float)[None, :], cmap="Reds", vmin=0.0, vmax=1.0, aspect="auto")
    small = "x-small" if k > 8 else "small"
    for i in range(k):
        for j in range(k):
            if i != j:
                ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=small,
                        color="white" if mat[i, j] > 0.6 else "black")
    for j, v in enumerate(pm.column_means):
        ax_mean.text(j, 0, f"{v:.2f}", ha="center", va="center", fontsize=small, color="white" if v > 0.6 else "black")
    ax.set_yticks(range(k), pm.strategies, fontsize=small)
    ax.tick_params(labelbottom=False)
    ax_mean.set_xticks(range(k), pm.strategies, rotation=45, ha="right", fontsize=small)
    ax_mean.set_yticks([0], ["column mean"], fontsize=small)
    ax.set_ylabel("row wins against column")
    fig.colorbar(im, cax=cax)
    budgets = ", ".join(str(b) for b in pm.budgets)
    ax.set_title(title or f"penalty matrix (paired t-test, budgets {budgets})", fontsize="medium")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


_SIGNAL_LABELS = {"kappa": "κ with the previous model", "change": "stop-set predictions changed",
                  "uncertainty": "mean normalised entropy"}


def plot_signals(records: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, title: str | None = None,
                 stops: Mapping[str, int] | None = None) -> str:
    """One run's accuracy (when measured) and stopping signals against the labels used.

    Args:
      records: the run's round records (``jaxal run`` or a labeling session).
      path: the PNG to write.
      title: the figure title.
      stops: ``{rule text: round}`` where stopping rules fired, drawn as vertical lines.
    """
    n = [int(r["n_labeled"]) for r in records]
    acc = [r.get("test_accuracy") for r in records]
    fig = _new_figure(9.0, 3.6)
    ax_acc, ax_sig = fig.subplots(1, 2)
    if any(a is not None for a in acc):
        ax_acc.plot([k for k, a in zip(n, acc) if a is not None], [a for a in acc if a is not None], "o-",
                    color="black", label="held-out accuracy")
    else:
        ax_acc.text(0.5, 0.5, "no held-out set", ha="center", va="center", transform=ax_acc.transAxes)
    ax_acc.set_xlabel("labels")
    ax_acc.set_ylabel("accuracy")
    colours = _colours(_SIGNAL_LABELS)
    for name, label in _SIGNAL_LABELS.items():
        pts = [(k, (r.get("signals") or {}).get(name)) for k, r in zip(n, records)]
        pts = [(k, v) for k, v in pts if v is not None]
        if pts:
            ax_sig.plot(*zip(*pts), "o-", color=colours[name], label=label, markersize=3)
    ax_sig.set_xlabel("labels")
    ax_sig.set_ylim(-0.02, 1.02)
    ax_sig.set_title("stopping signals (stop set)", fontsize=9)
    for i, (rule, r) in enumerate(sorted((stops or {}).items(), key=lambda kv: kv[1])):
        at = next((int(rec["n_labeled"]) for rec in records if int(rec["round"]) == r), None)
        if at is not None:
            for ax in (ax_acc, ax_sig):
                ax.axvline(at, color="grey", linestyle=":", linewidth=1)
            ax_sig.annotate(rule, (at, 0.02 + 0.08 * i), fontsize=7, rotation=90, va="bottom", ha="right")
    _legend(ax_sig, fontsize=7, loc="center right")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
