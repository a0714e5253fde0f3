"""When to stop paying for labels: stopping rules over a run's round history.

Every round's record carries ``signals`` (:mod:`jaxal.experiment.signals`): numbers
measured after the round's training that say whether more labels still change the
model. A rule reads the history (the list of round records, round 0 first) and says
after which round it would have stopped. The rules are pure functions of the
history, so a finished run can be evaluated offline (``jaxal compare`` prints where
each rule would have stopped), and the same rule stops a live run (``jaxal run
--stop RULE``) or tells a labeling session it may stop (``jaxal session status``).

=====================  ===============================================================
rule (CLI text)        stops after the first round where ...
=====================  ===============================================================
``budget:B``           ``n_labeled >= B`` (the fixed budget every paper uses)
``kappa:T:K``          the mean Cohen's κ between consecutive models' predictions on
                       the stop set over the last ``K`` rounds is ``>= T``
                       (stabilizing predictions, Bloodgood & Vijay-Shanker 2009;
                       defaults ``T = 0.99``, ``K = 3``)
``uncertainty:T``      the mean normalised predictive entropy on the stop set's
                       unlabeled rows is ``<= T`` (overall uncertainty, Zhu et al. 2008)
``change:T``           the fraction of the stop set's unlabeled rows whose predicted
                       class changed since the previous round is ``<= T``
                       (classification change, Zhu et al. 2008)
``output_change:F``    the look-ahead's largest predicted output change over the pool
                       (the MLMOC score of the round's best candidate, relative to the
                       outputs' size) is ``<= F`` times its first value: no candidate
                       would still move the model
``plateau:T:K``        CRC's λ⁺min of the chosen group, per label, changed by ``<= T``
                       (relative) over the last ``K`` rounds: the convergence rate the
                       labels buy has plateaued
=====================  ===============================================================

A signal a run does not carry (``output_change`` on a run whose strategy is not a
look-ahead, ``plateau`` off CRC) makes its rule *not applicable* (``None``), which
is reported as such, never as "did not stop". The look-ahead and CRC signals are
measured by the round's query, that is on the model before the round's labels:
their rules can only stop one round after the labels stopped being worth it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

__all__ = [
    "Rule",
    "RULES",
    "parse",
    "stop_round",
    "StopPoint",
    "where",
    "max_budget",
    "stabilizing_predictions",
    "overall_uncertainty",
    "classification_change",
    "output_change",
    "eigenvalue_plateau",
    "cohen_kappa",
    "DEFAULT_RULES",
    "StopSummary",
    "summarize",
    "markdown",
]

History = Sequence[Mapping[str, Any]]


def cohen_kappa(a: Any, b: Any, num_classes: int | None = None) -> float:
    """Cohen's κ between two label vectors: ``(p_o - p_e) / (1 - p_e)``.

    ``p_o`` is the observed agreement and ``p_e`` the agreement two independent raters
    with these marginals would reach by chance. Two identical constant vectors agree
    perfectly: κ = 1 (``p_e = 1`` would otherwise divide by zero).
    """
    a, b = np.asarray(a).astype(np.int64).ravel(), np.asarray(b).astype(np.int64).ravel()
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"cohen_kappa needs two non-empty label vectors of one length, got {a.shape} and {b.shape}")
    c = int(max(a.max(), b.max()) + 1) if num_classes is None else int(num_classes)
    p_o = float(np.mean(a == b))
    p_e = float(np.dot(np.bincount(a, minlength=c), np.bincount(b, minlength=c))) / float(a.size) ** 2
    if p_e >= 1.0:
        return 1.0 if p_o >= 1.0 else 0.0
    return (p_o - p_e) / (1.0 - p_e)


def _signal(record: Mapping[str, Any], name: str) -> float | None:
    value = (record.get("signals") or {}).get(name)
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _series(history: History, name: str) -> list[float | None]:
    return [_signal(r, name) for r in history]


def _check_history(history: History) -> list[Mapping[str, Any]]:
    history = list(history)
    rounds = [int(r["round"]) for r in history]
    if rounds != sorted(rounds) or len(set(rounds)) != len(rounds):
        raise ValueError(f"history must be a run's records in round order, got rounds {rounds}")
    return history


def _applicable(values: list[float | None]) -> bool:
    return any(v is not None for v in values)


def max_budget(history: History, budget: int) -> int | None:
    """Position of the first round with ``n_labeled >= budget``; ``None`` if never."""
    history = _check_history(history)
    for i, r in enumerate(history):
        if int(r["n_labeled"]) >= int(budget):
            return i
    return None


def stabilizing_predictions(history: History, threshold: float = 0.99, window: int = 3) -> int | None:
    """First position whose last ``window`` κ values (consecutive models on the stop set)
    average ``>= threshold``; ``None`` if never, and not applicable without κ."""
    kappa = _series(_check_history(history), "kappa")
    if not _applicable(kappa):
        return None
    for i in range(len(kappa)):
        last = kappa[max(0, i - window + 1): i + 1]
        if len(last) == window and all(v is not None for v in last) and float(np.mean(last)) >= threshold:
            return i
    return None


def _first_below(values: list[float | None], threshold: float) -> int | None:
    for i, v in enumerate(values):
        if v is not None and v <= threshold:
            return i
    return None


def overall_uncertainty(history: History, threshold: float = 0.05) -> int | None:
    """First position whose mean normalised entropy on the stop set is ``<= threshold``."""
    return _first_below(_series(_check_history(history), "uncertainty"), threshold)


def classification_change(history: History, threshold: float = 0.005) -> int | None:
    """First position (from round 1) where at most a ``threshold`` fraction of the stop
    set's unlabeled rows changed predicted class since the previous round."""
    return _first_below(_series(_check_history(history), "change"), threshold)


def output_change(history: History, fraction: float = 0.1) -> int | None:
    """First position whose largest predicted output change (look-ahead, relative to the
    outputs' size) is ``<= fraction`` times the first one recorded."""
    values = _series(_check_history(history), "relative_output_change")
    first = next((v for v in values if v is not None), None)
    if first is None:
        return None
    return _first_below(values, fraction * first)


def eigenvalue_plateau(history: History, tolerance: float = 0.05, window: int = 3) -> int | None:
    """First position where CRC's λ⁺min of the chosen group per label moved by at most
    ``tolerance`` relative to its value ``window`` rounds earlier, every step between."""
    values = _series(_check_history(history), "lambda_min_per_label")
    for i in range(window, len(values)):
        last = values[i - window: i + 1]
        if any(v is None for v in last):
            continue
        ref = max(abs(last[0]), 1e-30)
        if all(abs(v - last[0]) <= tolerance * ref for v in last[1:]):
            return i
    return None


class Rule(NamedTuple):
    """A stopping rule with its parameters bound.

    Attributes:
      name: the rule (``kappa``, ``budget`` ...), ``text`` its CLI spelling with parameters.
      signal: the record signal it reads (``n_labeled`` for ``budget``).
      fn: ``fn(history) -> position or None``.
    """

    name: str
    text: str
    signal: str
    fn: Callable[[History], int | None]

    def __call__(self, history: History) -> int | None:
        return self.fn(history)

    def applicable(self, history: History) -> bool:
        """Whether the history carries this rule's signal at all."""
        return self.signal == "n_labeled" or _applicable(_series(history, self.signal))


# name -> (function, signal, parameter names with their types, defaults, description)
RULES: dict[str, tuple[Callable[..., int | None], str, tuple[tuple[str, type, Any], ...], str]] = {
    "budget": (max_budget, "n_labeled", (("budget", int, None),), "stop at a fixed number of labels"),
    "kappa": (stabilizing_predictions, "kappa", (("threshold", float, 0.99), ("window", int, 3)),
              "consecutive models agree on the stop set (mean Cohen's κ over the last K rounds)"),
    "uncertainty": (overall_uncertainty, "uncertainty", (("threshold", float, 0.05),),
                    "mean normalised entropy on the unlabeled stop set is small"),
    "change": (classification_change, "change", (("threshold", float, 0.005),),
               "few unlabeled stop-set predictions changed class since the last round"),
    "output_change": (output_change, "relative_output_change", (("fraction", float, 0.1),),
                      "the look-ahead's largest predicted output change fell below a fraction of its first value"),
    "plateau": (eigenvalue_plateau, "lambda_min_per_label", (("tolerance", float, 0.05), ("window", int, 3)),
                "CRC's λ⁺min of the chosen group stopped moving"),
}


def parse(text: str) -> Rule:
    """A rule from its CLI text: ``NAME`` or ``NAME:P1[:P2]`` (e.g. ``kappa:0.99:3``, ``budget:500``)."""
    name, *params = [t.strip() for t in str(text).split(":")]
    if name not in RULES:
        raise ValueError(f"unknown stopping rule {name!r} in {text!r}; valid: {', '.join(RULES)} "
                         "(e.g. kappa:0.99:3, budget:500)")
    fn, signal, spec, _ = RULES[name]
    if len(params) > len(spec):
        raise ValueError(f"stopping rule {name} takes at most {len(spec)} parameter(s) "
                         f"({', '.join(p for p, _, _ in spec)}), got {text!r}")
    kwargs: dict[str, Any] = {}
    for (pname, ptype, default), value in zip(spec, params + [None] * (len(spec) - len(params))):
        if value is None or value == "":
            if default is None:
                raise ValueError(f"stopping rule {name} needs its {pname}: e.g. {name}:500")
            kwargs[pname] = default
            continue
        try:
            kwargs[pname] = ptype(value)
        except ValueError:
            raise ValueError(f"stopping rule {name}: {pname} must be {ptype.__name__}, got {value!r}") from None
        if not kwargs[pname] > 0:
            raise ValueError(f"stopping rule {name}: {pname} must be positive, got {value!r}")
    canonical = ":".join([name] + [f"{kwargs[p]:g}" if isinstance(kwargs[p], float) else str(kwargs[p])
                                   for p, _, _ in spec])
    return Rule(name, canonical, signal, lambda history: fn(history, **kwargs))


def stop_round(history: History, rules: Sequence[Rule | str]) -> tuple[int, str] | None:
    """``(position, rule text)`` of the earliest stop any of ``rules`` calls, or ``None``."""
    best: tuple[int, str] | None = None
    for rule in rules:
        rule = parse(rule) if isinstance(rule, str) else rule
        i = rule(history)
        if i is not None and (best is None or i < best[0]):
            best = (i, rule.text)
    return best


class StopPoint(NamedTuple):
    """Where one rule stops one run.

    Attributes:
      rule: the rule's text.
      applicable: the run carries the rule's signal.
      stopped: the rule fired before the run's last round (or at it).
      round, n_labeled, accuracy: at the stop (the last round when it never fired).
      final_n_labeled, final_accuracy: at the run's last round (the full budget).
    """

    rule: str
    applicable: bool
    stopped: bool
    round: int
    n_labeled: int
    accuracy: float
    final_n_labeled: int
    final_accuracy: float


def where(history: History, rule: Rule | str, metric: str = "test_accuracy") -> StopPoint:
    """Where ``rule`` would have stopped a finished run (offline evaluation)."""
    rule = parse(rule) if isinstance(rule, str) else rule
    history = _check_history(history)
    if not history:
        raise ValueError("history is empty: need at least round 0's record")
    last = history[-1]
    applicable = rule.applicable(history)
    i = rule(history) if applicable else None
    at = history[i] if i is not None else last
    return StopPoint(rule.text, applicable, i is not None, int(at["round"]), int(at["n_labeled"]),
                     _metric(at, metric), int(last["n_labeled"]), _metric(last, metric))


def _metric(record: Mapping[str, Any], metric: str) -> float:
    """``record[metric]`` as a float, NaN when absent or ``None`` (a session with no held-out set)."""
    value = record.get(metric)
    return float("nan") if value is None else float(value)


DEFAULT_RULES = ("kappa", "uncertainty", "change", "output_change", "plateau")


class StopSummary(NamedTuple):
    """One rule on one arm of a comparison, over its seeds.

    Attributes:
      label, rule: the arm and the rule's text.
      seeds: runs of the arm; ``applicable``: those that carry the rule's signal;
        ``stopped``: those where it fired.
      labels_at_stop, accuracy_at_stop: means over the applicable runs (a run where the
        rule never fired counts at its last round).
      final_labels, final_accuracy: means at the runs' last rounds.
    """

    label: str
    rule: str
    seeds: int
    applicable: int
    stopped: int
    labels_at_stop: float
    accuracy_at_stop: float
    final_labels: float
    final_accuracy: float

    @property
    def verdict(self) -> str:
        """``n/a``, ``never stops``, ``stops`` (every seed) or ``stops k/n``."""
        if not self.applicable:
            return "n/a"
        if not self.stopped:
            return "never stops"
        return "stops" if self.stopped == self.applicable else f"stops {self.stopped}/{self.applicable}"


def summarize(runs: Mapping[str, Mapping[int, History]], rules: Sequence[Rule | str] = DEFAULT_RULES,
              metric: str = "test_accuracy") -> list[StopSummary]:
    """Where each rule would have stopped each arm's runs (``runs[label][seed] = records``)."""
    out = []
    for label, by_seed in runs.items():
        for rule in rules:
            rule = parse(rule) if isinstance(rule, str) else rule
            points = [where(h, rule, metric) for h in by_seed.values() if h]
            used = [p for p in points if p.applicable]
            mean = (lambda xs: float(np.mean(xs)) if xs else float("nan"))
            out.append(StopSummary(label, rule.text, len(points), len(used), sum(p.stopped for p in used),
                                   mean([p.n_labeled for p in used]), mean([p.accuracy for p in used]),
                                   mean([p.final_n_labeled for p in used]), mean([p.final_accuracy for p in used])))
    return out


def markdown(rows: Sequence[StopSummary]) -> str:
    """A Markdown table of :func:`summarize`'s rows."""
    lines = ["| strategy | rule | verdict | labels at stop | accuracy at stop | at full budget (labels) |",
             "|---|---|---|---:|---:|---:|"]
    for r in rows:
        if not r.applicable:
            lines.append(f"| {r.label} | `{r.rule}` | n/a | – | – | – |")
            continue
        lines.append(f"| {r.label} | `{r.rule}` | {r.verdict} | {r.labels_at_stop:.0f} | {r.accuracy_at_stop:.3f} | "
                     f"{r.final_accuracy:.3f} ({r.final_labels:.0f}) |")
    return "\n".join(lines)
