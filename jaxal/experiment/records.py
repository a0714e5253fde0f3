"""Reading run records into learning curves and AUBC tables.

A run directory holds ``records.jsonl`` (one JSON object per round, see
:mod:`jaxal.experiment.loop`) and ``config.json``. This module reads them and turns
them into numbers; the tests behind those numbers live in :mod:`jaxal.experiment.stats`
and the figures in :mod:`jaxal.experiment.plots`.

Two levels:

- one run per line (:func:`load_records`, :func:`group_by_strategy`, :func:`curve`):
  mean ± 1 std over seeds, aligned by round;
- grids of runs compared over seeds (what ``jaxal compare`` / ``jaxal plot`` read):
  :func:`load_runs` reads many run directories into ``runs[label][seed] = records``,
  :func:`to_curves` turns them into ``curves[label][seed][n_labeled] = accuracy``, and
  :func:`curve_ci`, :func:`difference_curves`, :func:`aubc_rows` give 95% Student-t
  bands, paired differences to the reference (random) and AUBC with paired t-tests.

A *label* names one arm of a comparison: the strategy, with ``-seq`` appended when the
run used the sequential (oracle-in-the-loop) mode, so ``mlmoc`` and ``mlmoc-seq`` are
compared side by side.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from jaxal.experiment.stats import aubc, aubc_trapezoid, mean_ci, paired_pvalue

__all__ = [
    "Metric",
    "ACCURACY",
    "RMSE",
    "headline_metric",
    "load_records",
    "as_records",
    "group_by_strategy",
    "curve",
    "SEQUENTIAL_SUFFIX",
    "run_label",
    "find_run_dirs",
    "read_config",
    "load_runs",
    "to_curves",
    "design",
    "shared_budgets",
    "curve_ci",
    "difference_curves",
    "AubcRow",
    "aubc_rows",
]

def load_records(run_dir: str | os.PathLike) -> list[dict]:
    """The round records of one run, ``run_dir/records.jsonl``, in file order.

    Raises ``ValueError`` naming the file and line for a malformed line.
    """
    path = os.path.join(os.fspath(run_dir), "records.jsonl")
    if not os.path.exists(path):
        raise ValueError(f"run_dir {os.fspath(run_dir)!r} holds no records.jsonl")
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON record ({e})") from e
    return records


def as_records(run: Any) -> list[dict]:
    """A run's records from its directory, or the records themselves (as a list)."""
    if isinstance(run, (str, os.PathLike)):
        return load_records(run)
    return list(run)


def group_by_strategy(runs: Iterable[Any]) -> dict[str, list[list[dict]]]:
    """Group runs (directories or record lists) by the ``strategy`` in their records."""
    groups: dict[str, list[list[dict]]] = defaultdict(list)
    for run in runs:
        recs = as_records(run)
        if recs:
            groups[str(recs[0].get("strategy", "?"))].append(recs)
    return dict(groups)


def curve(runs: Sequence[Sequence[Mapping[str, Any]]], metric: str = "test_accuracy") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and standard deviation of ``metric`` over seeds, aligned by round.

    Only rounds present in every run are kept (a run still in progress shortens the
    curve rather than biasing it).

    Returns:
      ``(n_labeled [R], mean [R], std [R])``.
    """
    if not runs:
        raise ValueError("runs is empty: need at least one run's records")
    by_round = [{int(r["round"]): r for r in recs} for recs in runs]
    common = sorted(set.intersection(*(set(d) for d in by_round)))
    n = np.array([np.mean([d[k]["n_labeled"] for d in by_round]) for k in common], dtype=float)
    vals = np.array([[d[k][metric] for d in by_round] for k in common], dtype=float).reshape(len(common), -1)
    return n, vals.mean(axis=1), vals.std(axis=1)


# --------------------------------------------------------------------------- grids of runs

SEQUENTIAL_SUFFIX = "-seq"

Runs = dict[str, dict[int, list[dict]]]
Curves = dict[str, dict[int, dict[int, float]]]


def run_label(config: Mapping[str, Any]) -> str:
    """The arm a run belongs to: its ``label`` when set (a variant such as
    ``mlmoc[batch=greedy]``), else its strategy, plus ``-seq`` when it ran sequentially."""
    if config.get("label"):
        return str(config["label"])
    strategy = str(config.get("strategy", "?"))
    return strategy + SEQUENTIAL_SUFFIX if config.get("sequential") else strategy


def find_run_dirs(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Run directories (those holding ``records.jsonl``) at or below each path.

    A path that is itself a run directory is taken as is; otherwise it is searched
    recursively (a ``jaxal compare`` / ``jaxal run`` output). Order: as given, then
    sorted within each search; duplicates dropped.

    Raises ``ValueError`` for a path that is not a directory or when nothing is found.
    """
    found: list[str] = []
    for p in paths:
        p = os.fspath(p)
        if not os.path.isdir(p):
            raise ValueError(f"{p!r} is not a directory")
        for root, dirs, files in os.walk(p):
            dirs.sort()
            if "records.jsonl" in files:
                found.append(os.path.normpath(root))
                dirs[:] = []  # a run directory holds no further runs
    unique = list(dict.fromkeys(found))
    if not unique:
        raise ValueError(f"no run directory (with records.jsonl) found under {[os.fspath(p) for p in paths]}")
    return unique


def read_config(run_dir: str) -> dict | None:
    """The run's ``config.json`` as a dict; ``None`` when the run has none yet.

    An unreadable file raises ``ValueError`` naming it (never silently ignored: a
    run whose settings cannot be read cannot be compared or resumed safely).
    """
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable config ({e})") from e


def load_runs(paths: Iterable[str | os.PathLike]) -> Runs:
    """Read every run below ``paths`` into ``runs[label][seed] = records``.

    The label comes from the run's ``config.json`` (:func:`run_label`), or from its
    records when there is no config. Runs with no record yet are skipped.

    Raises ``ValueError`` when two directories hold the same label and seed, or when
    the runs come from different data sets (a comparison is over one data set).
    """
    runs: Runs = {}
    origin: dict[tuple[str, int], str] = {}
    datasets: set[str] = set()
    for d in find_run_dirs(paths):
        records = load_records(d)
        if not records:
            continue
        config = read_config(d) or records[0]
        label = run_label(config)
        seed = int(records[0].get("seed", config.get("seed", 0)))
        if (label, seed) in origin:
            raise ValueError(
                f"two runs of {label!r} seed {seed}: {origin[(label, seed)]!r} and {d!r}; "
                "pass the directories of one comparison"
            )
        origin[(label, seed)] = d
        datasets.add(str(records[0].get("dataset", config.get("dataset", "?"))))
        runs.setdefault(label, {})[seed] = records
    if not runs:
        raise ValueError(f"the run directories under {[os.fspath(p) for p in paths]} hold no records yet")
    if len(datasets) > 1:
        raise ValueError(f"the runs come from different data sets {sorted(datasets)}; compare one data set at a time")
    return runs


class Metric(NamedTuple):
    """The test metric a comparison is judged by: the record field, its name for
    tables and plots, and its direction."""

    key: str
    name: str
    higher_is_better: bool


ACCURACY = Metric("test_accuracy", "accuracy", True)
RMSE = Metric("test_rmse", "RMSE", False)


def headline_metric(runs: Any) -> Metric:
    """:data:`ACCURACY`, or :data:`RMSE` when the records come from a regression run
    (``"task": "regression"``). ``runs``: ``runs[label][seed] = records``, a list of
    record lists, or one run's records."""
    def records_of(obj: Any):
        if isinstance(obj, Mapping):
            if "n_labeled" in obj:
                yield obj
                return
            for v in obj.values():
                yield from records_of(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                yield from records_of(v)

    first = next(records_of(runs), None)
    return RMSE if first is not None and first.get("task") == "regression" else ACCURACY


def to_curves(runs: Mapping[str, Mapping[int, Sequence[Mapping[str, Any]]]], metric: str = "test_accuracy") -> Curves:
    """``runs[label][seed] = records`` -> ``curves[label][seed][n_labeled] = metric``."""
    out: Curves = {}
    for label, by_seed in runs.items():
        for seed, records in by_seed.items():
            try:
                out.setdefault(label, {})[int(seed)] = {int(r["n_labeled"]): float(r[metric]) for r in records}
            except KeyError as e:
                raise ValueError(f"a record of {label!r} seed {seed} lacks the field {e}") from None
    return out


def design(runs: Mapping[str, Mapping[int, Sequence[Mapping[str, Any]]]]) -> tuple[int, int | None]:
    """The initial labeled-set size ``M`` and query size ``B`` shared by every run.

    Read from the records (round 0's ``n_labeled`` and the step to round 1); ``B`` is
    ``None`` when no run has a query round yet. Raises ``ValueError`` when runs differ.
    """
    initials, batches = set(), set()
    for by_seed in runs.values():
        for records in by_seed.values():
            by_round = {int(r["round"]): int(r["n_labeled"]) for r in records}
            if 0 in by_round:
                initials.add(by_round[0])
                if 1 in by_round:
                    batches.add(by_round[1] - by_round[0])
    if len(initials) != 1 or len(batches) > 1:
        raise ValueError(
            f"runs differ in their design (initial sizes {sorted(initials)}, query sizes {sorted(batches)}); "
            "a comparison needs one initial size and one budget"
        )
    return initials.pop(), (batches.pop() if batches else None)


def shared_budgets(curves: Curves, labels: Iterable[str] | None = None) -> list[int]:
    """Labeled-set sizes present in every seed of every label (sorted)."""
    labels = list(curves) if labels is None else list(labels)
    sets = [set(c) for lab in labels for c in curves[lab].values()]
    return sorted(set.intersection(*sets)) if sets else []


def curve_ci(per_seed: Mapping[int, Mapping[int, float]], level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds and the half-width of its Student-t confidence interval.

    Args:
      per_seed: ``{seed: {n_labeled: value}}``.
      level: confidence level (0.95: the bands of the papers' figures).

    Returns:
      ``(n [R], mean [R], half [R])`` over the sizes every seed has (half = 0 with
      one seed).
    """
    if not per_seed:
        raise ValueError("per_seed is empty: need at least one seed's curve")
    n = sorted(set.intersection(*(set(c) for c in per_seed.values())))
    stats_ = [mean_ci([c[k] for c in per_seed.values()], level) for k in n]
    return (np.asarray(n, dtype=float), np.array([m for m, _ in stats_]), np.array([h for _, h in stats_]))


def difference_curves(
    curves: Curves, reference: str = "random", level: float = 0.95
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Accuracy minus the reference's, paired per seed, mean ± CI half-width.

    The look-ahead paper's Figure 2: for each label and each seed it shares with
    ``reference``, ``acc_label(seed, n) − acc_reference(seed, n)``; then
    :func:`curve_ci` over those seeds. Labels sharing no seed with the reference are
    left out.

    Returns:
      ``{label: (n [R], mean [R], half [R])}`` for every label but the reference.
    """
    if reference not in curves:
        raise ValueError(f"reference {reference!r} is not among the runs ({sorted(curves)})")
    ref = curves[reference]
    out = {}
    for label, per_seed in curves.items():
        if label == reference:
            continue
        diffs = {
            s: {n: c[n] - ref[s][n] for n in c if n in ref[s]}
            for s, c in per_seed.items()
            if s in ref
        }
        if diffs:
            out[label] = curve_ci(diffs, level)
    return out


class AubcRow(NamedTuple):
    """AUBC of one label over seeds.

    Attributes:
      label: the arm (strategy, ``-seq`` for sequential).
      seeds: number of seeds.
      aubc, aubc_ci: mean over seeds of the mean accuracy over the budgets
        (:func:`jaxal.experiment.stats.aubc`) and its CI half-width.
      trapezoid, trapezoid_ci: the same for :func:`jaxal.experiment.stats.aubc_trapezoid`
        (normalised by the budget span; ``nan`` with one budget).
      diff, diff_ci: mean paired AUBC difference to the reference over shared seeds
        (``nan`` for the reference itself or without one).
      pvalue: two-sided paired t-test of the per-seed AUBC against the reference's
        (:func:`jaxal.experiment.stats.paired_pvalue`; ``nan`` when not computable).
    """

    label: str
    seeds: int
    aubc: float
    aubc_ci: float
    trapezoid: float
    trapezoid_ci: float
    diff: float
    diff_ci: float
    pvalue: float


def aubc_rows(
    curves: Curves,
    *,
    reference: str | None = "random",
    budgets: Sequence[int] | None = None,
    level: float = 0.95,
    higher_is_better: bool = True,
) -> tuple[list[AubcRow], list[int]]:
    """AUBC per label with confidence intervals and a paired test against the reference.

    Every label is scored over the same budgets (default: :func:`shared_budgets`, the
    sizes all runs reached), so a run still in progress shortens every curve instead
    of favouring some.

    Returns:
      ``(rows sorted by AUBC, best first, budgets used)``; best is the lowest AUBC with
      ``higher_is_better=False`` (an error metric such as RMSE).
    """
    budgets = shared_budgets(curves) if budgets is None else sorted(int(b) for b in budgets)
    if not budgets:
        raise ValueError("the runs share no labeled-set size: cannot compare their AUBC")
    per_seed = {
        label: {s: aubc([c[n] for n in budgets]) for s, c in by_seed.items()} for label, by_seed in curves.items()
    }
    trap = {
        label: {
            s: aubc_trapezoid(budgets, [c[n] for n in budgets]) if len(budgets) > 1 else float("nan")
            for s, c in by_seed.items()
        }
        for label, by_seed in curves.items()
    }
    has_ref = reference is not None and reference in curves
    rows = []
    for label in curves:
        m, h = mean_ci(list(per_seed[label].values()), level)
        tm, th = mean_ci(list(trap[label].values()), level)
        diff, diff_h, p = float("nan"), float("nan"), float("nan")
        if has_ref and label != reference:
            seeds = sorted(s for s in per_seed[label] if s in per_seed[reference])
            if seeds:
                a = [per_seed[label][s] for s in seeds]
                b = [per_seed[reference][s] for s in seeds]
                diff, diff_h = mean_ci(np.subtract(a, b), level)
                p = paired_pvalue(a, b)
        rows.append(AubcRow(label, len(per_seed[label]), m, h, tm, th, diff, diff_h, p))
    rows.sort(key=lambda r: (-r.aubc if higher_is_better else r.aubc, r.label))
    return rows, budgets
