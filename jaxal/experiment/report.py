"""The evaluation bundle of a comparison: plots, CSV tables and a Markdown summary.

:func:`write_report` reads runs (directories or ``runs[label][seed] = records``) and
writes into one directory:

- ``curves.png``: learning curves, mean and 95% CI over seeds;
- ``diff_to_random.png``: accuracy − random's, paired per seed (look-ahead paper,
  Figure 2 style);
- ``aubc.csv``: AUBC per strategy (mean accuracy over rounds and the trapezoid form
  normalised by the budget), 95% CIs, paired difference and t-test against random;
- ``penalty.png`` / ``penalty.csv``: the pairwise penalty matrix of
  :func:`jaxal.experiment.stats.penalty_matrix` with its column means;
- ``stopping.csv``: where each stopping rule of :mod:`jaxal.stopping` would have stopped
  each arm (when the runs recorded their round signals);
- ``summary.md``: the AUBC table, the penalty column means, the stopping rules and the
  notes (what was skipped and why).

Regression runs (records with ``"task": "regression"``) are judged by ``test_rmse``
instead of accuracy: lower is better, so the AUBC ranks, the verdicts and the penalty
matrix's wins turn round (:func:`jaxal.experiment.records.headline_metric`).

Without a ``random`` arm the difference curves, the p-values and the penalty matrix
are skipped (the penalty budgets are defined by random's saturation) and the summary
says so. The numbers come from :mod:`jaxal.experiment.records` and :mod:`jaxal.experiment.stats`,
the figures from :mod:`jaxal.experiment.plots`; this module only formats and writes.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from jaxal import stopping
from jaxal.experiment import plots
from jaxal.experiment import records as ev
from jaxal.experiment.stats import PenaltyMatrix, penalty_matrix

__all__ = ["Report", "write_report", "aubc_markdown", "write_aubc_csv", "write_penalty_csv", "write_stopping_csv",
           "summary_markdown"]

FILES = ("curves.png", "diff_to_random.png", "aubc.csv", "penalty.png", "penalty.csv", "stopping.csv", "summary.md")


class Report(NamedTuple):
    """What :func:`write_report` computed and wrote.

    Attributes:
      files: ``{name: path}`` of the files written (a skipped output is absent).
      rows: :class:`jaxal.experiment.records.AubcRow` per label, best AUBC first.
      budgets: labeled-set sizes the AUBC is taken over.
      penalty: the :class:`~jaxal.experiment.stats.PenaltyMatrix`, or ``None`` when skipped.
      notes: human-readable remarks (skipped outputs, incomplete runs).
      meta: dataset, model, design (initial size, query size), seeds per label.
      stops: :func:`jaxal.stopping.summarize` per label and rule (empty when the runs
        carry no round signals).
    """

    files: dict[str, str]
    rows: list[ev.AubcRow]
    budgets: list[int]
    penalty: PenaltyMatrix | None
    notes: list[str]
    meta: dict[str, Any]
    stops: tuple[stopping.StopSummary, ...] = ()


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_ci(mean: float, half: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if half > 0 else f"{mean:.{digits}f}"


def _fmt_p(p: float) -> str:
    if math.isnan(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def verdict(row: ev.AubcRow, alpha: float = 0.05, higher_is_better: bool = True) -> str:
    """``better`` / ``worse`` than the reference when the paired test rejects at ``alpha``, else ``n.s.``."""
    if math.isnan(row.pvalue):
        return "–"
    if row.pvalue < alpha:
        return "better" if (row.diff > 0) == higher_is_better else "worse"
    return "n.s."


def write_aubc_csv(rows: Sequence[ev.AubcRow], budgets: Sequence[int], path: str | os.PathLike) -> str:
    """One line per label: seeds, AUBC and trapezoid AUBC with 95% CI half-widths,
    paired difference to the reference with its CI, the p-value, and the budget span."""
    path = os.fspath(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["strategy", "seeds", "aubc", "aubc_ci95", "aubc_trapezoid", "aubc_trapezoid_ci95",
                    "diff_vs_reference", "diff_ci95", "pvalue_vs_reference", "first_budget", "last_budget", "rounds"])
        for r in rows:
            w.writerow([r.label, r.seeds, repr(r.aubc), repr(r.aubc_ci), repr(r.trapezoid), repr(r.trapezoid_ci),
                        repr(r.diff), repr(r.diff_ci), repr(r.pvalue), budgets[0], budgets[-1], len(budgets)])
    return path


def write_stopping_csv(rows: Sequence[stopping.StopSummary], path: str | os.PathLike) -> str:
    """``stopping.csv``: one row per (strategy, rule), :class:`jaxal.stopping.StopSummary`'s fields."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(list(stopping.StopSummary._fields) + ["verdict"])
        for r in rows:
            w.writerow(list(r) + [r.verdict])
    return os.fspath(path)


def write_penalty_csv(pm: PenaltyMatrix, path: str | os.PathLike) -> str:
    """The matrix (row beats column, fraction of budgets), then a ``column_mean`` row
    and a ``budgets`` row."""
    path = os.fspath(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["row_beats_column"] + list(pm.strategies))
        for name, line in zip(pm.strategies, pm.matrix):
            w.writerow([name] + [repr(float(v)) for v in line])
        w.writerow(["column_mean"] + [repr(float(v)) for v in pm.column_means])
        w.writerow(["budgets"] + [" ".join(str(b) for b in pm.budgets)])
    return path


def aubc_markdown(rows: Sequence[ev.AubcRow], penalty: PenaltyMatrix | None = None, *, reference: str = "random",
                  alpha: float = 0.05, metric: ev.Metric = ev.ACCURACY) -> str:
    """The AUBC table as Markdown: AUBC ± 95% CI, trapezoid AUBC, Δ and p vs the
    reference, the verdict and (when computed) the penalty column mean."""
    col_mean = {} if penalty is None else dict(zip(penalty.strategies, penalty.column_means))
    mean_of = "mean acc." if metric == ev.ACCURACY else f"mean {metric.name}, lower better"
    head = ["strategy", "seeds", f"AUBC ({mean_of})", "AUBC (trapezoid)", f"Δ AUBC vs {reference}",
            f"p vs {reference}", "verdict"]
    if penalty is not None:
        head.append("penalty (col. mean, lower better)")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        cells = [r.label, str(r.seeds), _fmt_ci(r.aubc, r.aubc_ci), _fmt_ci(r.trapezoid, r.trapezoid_ci),
                 _fmt_ci(r.diff, r.diff_ci), _fmt_p(r.pvalue), verdict(r, alpha, metric.higher_is_better)]
        if penalty is not None:
            cells.append(_fmt(float(col_mean[r.label]), 2) if r.label in col_mean else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_markdown(report: Report, *, reference: str = "random", alpha: float = 0.05, title: str | None = None) -> str:
    """The whole ``summary.md`` text."""
    m = report.meta
    b = report.budgets
    metric = m.get("metric", ev.ACCURACY)
    better = "more accurate" if metric.higher_is_better else f"lower in {metric.name}"
    seeds = sorted({s for ss in m["seeds"].values() for s in ss})
    out = [
        f"# {title}" if title else f"# Active-learning comparison: {m['dataset']} / {m['model']}",
        "",
        f"Data set `{m['dataset']}`, model `{m['model']}`; {len(report.rows)} strategies, seeds {seeds}; initial labeled set {m['initial']}, "
        f"{m['batch'] if m['batch'] is not None else '–'} per query; AUBC over {len(b)} rounds "
        f"({b[0]} to {b[-1]} labels). Intervals: 95% Student-t over seeds. p: two-sided paired t-test of "
        f"the per-seed AUBC against {reference} (α = {alpha}).",
        "",
        "## AUBC",
        "",
        aubc_markdown(report.rows, report.penalty, reference=reference, alpha=alpha, metric=metric),
        "",
    ]
    if report.penalty is not None:
        pm = report.penalty
        order = sorted(range(len(pm.strategies)), key=lambda i: pm.column_means[i])
        out += [
            "## Penalty matrix",
            "",
            f"Paired t-test over seeds at budgets {', '.join(map(str, pm.budgets))} "
            f"(M + 2^(m−1)·B until {reference} reaches 99% of its final {metric.name}); a row wins against a "
            f"column when it is significantly {better} (α = {alpha}); each win adds 1/{len(pm.budgets)}. "
            "Column mean: how often a strategy is beaten (lower is better).",
            "",
            "| strategy | " + " | ".join(pm.strategies[i] for i in order) + " |",
            "|---|" + "---:|" * len(order),
            "| column mean | " + " | ".join(f"{pm.column_means[i]:.2f}" for i in order) + " |",
            "",
            "Full matrix: `penalty.csv`, `penalty.png`.",
            "",
        ]
    if report.stops:
        out += [
            "## Where each stopping rule would have stopped",
            "",
            "Means over seeds; a rule that never fired counts at the run's last round. Rules and signals: "
            "`jaxal.stopping`.",
            "",
            stopping.markdown(report.stops),
            "",
        ]
    out += ["## Files", ""] + [f"- `{name}`" for name in report.files if name != "summary.md"] + ["- `summary.md`"]
    if report.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(out) + "\n"


def _meta(runs: ev.Runs) -> dict[str, Any]:
    first = next(iter(next(iter(runs.values())).values()))[0]
    initial, batch = ev.design(runs)
    return {
        "dataset": str(first.get("dataset", "?")),
        "model": str(first.get("model", "?")),
        "initial": initial,
        "batch": batch,
        "seeds": {label: sorted(by_seed) for label, by_seed in runs.items()},
        "metric": ev.headline_metric(runs),
    }


def write_report(
    runs: Mapping[str, Mapping[int, Sequence[Mapping[str, Any]]]] | Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    reference: str = "random",
    alpha: float = 0.05,
    title: str | None = None,
) -> Report:
    """Compute the evaluation of a comparison and write its files into ``out_dir``.

    Args:
      runs: ``runs[label][seed] = records`` or run / comparison directories
        (:func:`jaxal.experiment.records.load_runs`).
      out_dir: where the files go (created).
      reference: the baseline arm (``random``).
      alpha: significance level of the paired tests.
      title: heading of the summary and prefix of the plot titles.

    Returns:
      The :class:`Report`.
    """
    if not isinstance(runs, Mapping):
        runs = ev.load_runs(runs)
    if not runs:
        raise ValueError("runs is empty: nothing to evaluate")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    meta = _meta(runs)
    metric = meta["metric"]
    curves = ev.to_curves(runs, metric.key)
    rows, budgets = ev.aubc_rows(curves, reference=reference, higher_is_better=metric.higher_is_better)
    notes: list[str] = []
    rounds = {label: {s: len(c) for s, c in by_seed.items()} for label, by_seed in curves.items()}
    longest = max(n for by_seed in rounds.values() for n in by_seed.values())
    short = sorted(f"{lab} seed {s}" for lab, by_seed in rounds.items() for s, n in by_seed.items() if n < longest)
    if short:
        notes.append(f"incomplete runs ({', '.join(short)}): AUBC is taken over the {len(budgets)} rounds every run reached")
    tag = title or f"{meta['dataset']} / {meta['model']}"
    files = {"curves.png": plots.plot_curves_ci(curves, os.path.join(out_dir, "curves.png"), reference=reference,
                                                ylabel=f"test {metric.name}",
                                                title=f"{tag}: mean and 95% CI over seeds")}
    penalty = None
    if reference not in curves:
        notes.append(f"no `{reference}` runs: the difference-to-{reference} curves, the p-values and the penalty "
                     f"matrix (whose budgets end where {reference} saturates) are skipped")
    else:
        if len(curves) > 1:
            files["diff_to_random.png"] = plots.plot_differences(
                curves, os.path.join(out_dir, "diff_to_random.png"), reference=reference, metric=metric.name,
                title=f"{tag}: {metric.name} − {reference}, paired, 95% CI")
        ordered = {r.label: curves[r.label] for r in rows}  # matrix rows in AUBC order
        penalty, why = _penalty(ordered, meta, reference, alpha)
        if penalty is None:
            notes.append(f"penalty matrix skipped: {why}")
    files["aubc.csv"] = write_aubc_csv(rows, budgets, os.path.join(out_dir, "aubc.csv"))
    if penalty is not None:
        files["penalty.png"] = plots.plot_penalty(penalty, os.path.join(out_dir, "penalty.png"),
                                                  title=f"{tag}: penalty matrix, budgets "
                                                        + ", ".join(map(str, penalty.budgets)))
        files["penalty.csv"] = write_penalty_csv(penalty, os.path.join(out_dir, "penalty.csv"))
    if min(len(s) for s in meta["seeds"].values()) < 2:
        notes.append("fewer than two seeds for some strategy: no confidence interval or test for it")
    stops: list[stopping.StopSummary] = []
    if not metric.higher_is_better:
        notes.append("stopping rules skipped: they read class predictions (κ, changed classes, entropy), and these "
                     "are regression runs")
    elif any("signals" in rec for by_seed in runs.values() for recs in by_seed.values() for rec in recs):
        stops = stopping.summarize(runs, metric=metric.key)
        files["stopping.csv"] = write_stopping_csv(stops, os.path.join(out_dir, "stopping.csv"))
    report = Report(files, rows, budgets, penalty, notes, meta, tuple(stops))
    path = os.path.join(out_dir, "summary.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(summary_markdown(report, reference=reference, alpha=alpha, title=title))
    report.files["summary.md"] = path
    return report


def _penalty(curves: ev.Curves, meta: Mapping[str, Any], reference: str, alpha: float) -> tuple[PenaltyMatrix | None, str]:
    """The penalty matrix over the labels in AUBC order, or ``(None, reason)``."""
    if len(curves) < 2:
        return None, "it needs at least two strategies"
    if meta["batch"] is None:
        return None, "no query round yet"
    if len(curves[reference]) < 2:
        return None, f"it needs at least two seeds of {reference}"
    try:
        pm = penalty_matrix(curves, initial=meta["initial"], batch=meta["batch"], reference=reference, alpha=alpha,
                            higher_is_better=meta["metric"].higher_is_better)
    except ValueError as e:
        return None, str(e)
    return pm, ""
