"""The statistics the active-learning papers use: AUBC, confidence intervals, the paired
t-test and the pairwise penalty matrix.

Inputs are plain numbers and nested mappings, so they can come from jaxal runs or
anywhere else::

    curves[strategy][seed] = {n_labeled: accuracy, ...}

Reading runs into that form is :mod:`jaxal.experiment.records`' job; drawing them,
:mod:`jaxal.experiment.plots`'.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import numpy as np
from scipy import stats

Curves = Mapping[str, Mapping[int, Mapping[int, float]]]

__all__ = ["aubc", "aubc_trapezoid", "mean_ci", "paired_pvalue", "penalty_budgets", "penalty_matrix", "PenaltyMatrix"]


def aubc(accuracies: Sequence[float]) -> float:
    """Area under the budget curve as the look-ahead and CRC papers report it.

    The mean accuracy over the acquisition rounds (every round weighs the same).
    """
    a = np.asarray(accuracies, dtype=np.float64)
    if a.size == 0:
        raise ValueError("accuracies is empty")
    return float(a.mean())


def aubc_trapezoid(n_labeled: Sequence[float], accuracies: Sequence[float]) -> float:
    """Trapezoid area under accuracy vs. labeled-set size, divided by the budget span.

    This is the normalised form DeepAL+ reports. With evenly spaced rounds it is the
    mean with the two end points weighted by one half, so it differs from :func:`aubc`
    (the plain mean) by ``(aubc − (a₀ + a_R)/2) / R`` for ``R`` intervals.
    """
    n = np.asarray(n_labeled, dtype=np.float64)
    a = np.asarray(accuracies, dtype=np.float64)
    if n.shape != a.shape or n.size < 2:
        raise ValueError("n_labeled and accuracies need the same length, at least 2")
    order = np.argsort(n)
    n, a = n[order], a[order]
    span = n[-1] - n[0]
    if span <= 0:
        raise ValueError("n_labeled must span a positive budget")
    return float(np.sum((a[1:] + a[:-1]) * np.diff(n)) / 2.0 / span)


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (0 for one value)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return float(v.mean()), 0.0
    half = stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean()), float(half)


def paired_pvalue(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided paired t-test p-value of ``a`` vs ``b`` (matched by position).

    The one paired test of the package (AUBC rows and the penalty matrix both use it).
    ``nan`` with fewer than two pairs. When every difference is the same the t
    statistic is undefined: the p-value is then 0 for a nonzero difference (as
    significant as a difference can be) and 1 for a zero one.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need the same length, got {a.shape} and {b.shape}")
    if a.size < 2:
        return float("nan")
    diff = a - b
    if np.allclose(diff, diff[0]):
        return 0.0 if diff[0] != 0 else 1.0
    return float(stats.ttest_rel(a, b).pvalue)


def penalty_budgets(reference: Mapping[int, Mapping[int, float]], initial: int, batch: int, fraction: float = 0.99,
                    higher_is_better: bool = True) -> list[int]:
    """Budgets ``M + 2^(m-1) B`` (m = 1, 2, ...) up to where ``reference`` saturates.

    ``reference[seed][n_labeled]`` is the accuracy curve of the reference strategy
    (random). Budgets are kept while the reference's mean accuracy at the *previous*
    budget is below ``fraction`` of its final mean accuracy, i.e. the list stops at the
    first budget where random reaches 99% of its final accuracy (that budget included).
    Only budgets present for every seed count. For an error metric
    (``higher_is_better=False``, e.g. RMSE) saturation is the error falling to within
    ``1 / fraction`` of its final value.
    """
    common = set.intersection(*(set(c) for c in reference.values()))
    if not common:
        raise ValueError("the reference curves share no budget")
    sizes = sorted(common)
    mean = {n: float(np.mean([reference[s][n] for s in reference])) for n in sizes}
    final = mean[sizes[-1]]
    budgets, m = [], 1
    while True:
        n = initial + 2 ** (m - 1) * batch
        if n > sizes[-1]:
            break
        if n in common:
            budgets.append(n)
            if (mean[n] >= fraction * final) if higher_is_better else (mean[n] <= final / fraction):
                break
        m += 1
    return budgets


class PenaltyMatrix(NamedTuple):
    """The pairwise penalty matrix.

    Attributes:
      strategies: row/column names.
      budgets: the labeled-set sizes compared.
      matrix: ``[k, k]``; ``matrix[i, j]`` = (number of budgets where strategy i is
        significantly more accurate than j) / (number of budgets).
      column_means: ``[k]``, mean of each column over the other rows: how often a
        strategy is beaten. Lower is better.
      pvalues: ``[k, k, n_budgets]`` two-sided paired t-test p-values.
    """

    strategies: list[str]
    budgets: list[int]
    matrix: np.ndarray
    column_means: np.ndarray
    pvalues: np.ndarray


def penalty_matrix(
    curves: Curves,
    *,
    initial: int,
    batch: int,
    reference: str = "random",
    alpha: float = 0.05,
    budgets: Sequence[int] | None = None,
    higher_is_better: bool = True,
) -> PenaltyMatrix:
    """Pairwise penalty matrix over seeds (Ash et al.'s evaluation; a win is a significantly *higher* accuracy).

    At each budget, strategies i and j are compared with a two-sided paired t-test
    (:func:`paired_pvalue`) over the seeds they share; i wins when the test rejects at ``alpha`` and i's mean accuracy
    is higher. Each win adds ``1 / len(budgets)`` to ``matrix[i, j]``.

    Args:
      curves: ``curves[strategy][seed][n_labeled] = accuracy``.
      initial: initial labeled-set size ``M``.
      batch: query size ``B``.
      reference: strategy whose saturation ends the budget list (random).
      alpha: significance level.
      budgets: explicit budgets (overrides the ``M + 2^(m-1) B`` rule).
      higher_is_better: ``False`` for an error metric (RMSE): a win is a significantly
        *lower* value.
    """
    names = list(curves)
    if len(names) < 2:
        raise ValueError("penalty_matrix needs at least two strategies")
    if budgets is None:
        if reference not in curves:
            raise ValueError(f"reference strategy {reference!r} is not in the curves ({names})")
        budgets = penalty_budgets(curves[reference], initial, batch, higher_is_better=higher_is_better)
    budgets = list(budgets)
    if not budgets:
        raise ValueError("no budget to compare")
    k, nb = len(names), len(budgets)
    wins = np.zeros((k, k), dtype=np.int64)
    pv = np.ones((k, k, nb))
    for b_i, n in enumerate(budgets):
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                if i == j:
                    continue
                seeds = sorted(s for s in curves[a] if s in curves[b] and n in curves[a][s] and n in curves[b][s])
                if len(seeds) < 2:
                    continue
                xa = np.array([curves[a][s][n] for s in seeds])
                xb = np.array([curves[b][s][n] for s in seeds])
                p = paired_pvalue(xa, xb)
                pv[i, j, b_i] = p
                if p < alpha and (xa.mean() > xb.mean()) == higher_is_better and xa.mean() != xb.mean():
                    wins[i, j] += 1
    mat = wins / nb
    col = np.array([mat[np.arange(k) != j, j].mean() for j in range(k)])
    return PenaltyMatrix(names, budgets, mat, col, pv)
