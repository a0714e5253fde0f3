"""Which strategy beats random, where? The comparison grid on digits and MNIST-1D.

Settings (one ``jaxal compare`` grid each, written to ``OUT/<setting>/``):

- ``digits-mlp``: scikit-learn digits (1,347 train / 450 test), MLP 128, dropout 0.25;
  20 initial labels, 20 per round, 10 rounds (20 -> 220 labels).
- ``mnist1d-mlp``: MNIST-1D (4,000 / 1,000), MLP 128-128, dropout 0.25; 50 initial,
  50 per round, 10 rounds (50 -> 550 labels).
- ``mnist1d-cnn``: MNIST-1D, 1-D CNN (16, 32 channels, 64 features), dropout 0.25;
  same design as ``mnist1d-mlp``.

Strategies: random, entropy, margin, least_confidence, coreset, badge, bald, mlmoc
(batch: top-B), mlmoc-seq (sequential: the oracle answers after every pick, the NTK
look-ahead is conditioned on the true label, no retraining in between), crc. A strategy
missing from the registry (or without a sequential mode, for ``-seq``) is skipped with
a warning.

Choices that keep the comparison fair (same model, same loss, same training for every
strategy at a seed; the loop gives every strategy the same initial set and weights):

- Dropout 0.25 in every model, for every strategy: BALD needs MC dropout, and a model
  with dropout for BALD only would compare models, not strategies. Other strategies
  see the deterministic network (dropout off at inference).
- Cross-entropy for every strategy. MLMOC's look-ahead linearises squared-loss
  training (the paper trains with the squared loss); here it runs on cross-entropy
  logits with the softmax map, a looser approximation. ``--loss squared`` reruns the
  whole grid in the paper's setting (into another ``--out``).
- Cold start every round, Adam 1e-3, batch 32, until 99% training accuracy or the
  epoch cap (100).
- A random candidate subsample of 500 pool points per round (``candidates``) for every
  strategy: it bounds the cost of MLMOC (``|S|^2``), CRC and coreset, and is the
  evaluation set ``S`` of the look-ahead.
- CRC: groups of ``G = 10`` (2 groups per round on digits, 5 on MNIST-1D; 50 random
  groups scored per round), head (last-layer) kernel, the paper's better variant. Its
  cost is one ``(d+1)``- or ``(|L|+G)``-sized ``eigvalsh`` per group, the grid's most
  expensive query; smaller groups mean more of them.

Evaluation (per setting, see :mod:`jaxal.experiment.report`): learning curves with 95% CIs,
differences to random (paired per seed), AUBC with CIs and paired t-tests against
random, the penalty matrix, ``summary.md``. Across settings: ``README_table.md`` (the
AUBC table for the README) and ``results.json``.

Cost: sized on the 2-core CPU box (one seed of all three settings ~3.5 min, plus ~2 min
of compilation; 10 seeds ~40 min). The script prints that prior estimate, then after
seed 0 of each setting a measured projection. Runs resume: an
interrupted benchmark continues where it stopped when started again with the same
arguments.

    python benchmarks/al_quality.py --quick          # ~2-3 min: digits, 3 strategies, 2 seeds, 2 rounds
    python benchmarks/al_quality.py                  # full: 3 settings x 10 strategies x 10 seeds (~40 min)
    python benchmarks/al_quality.py --seeds 5        # ~20 min; a later run with --seeds 10 adds seeds 5-9
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from jaxal import strategies as registry
from jaxal.cli import parse_arm, split_arms
from jaxal.experiment import protocols
from jaxal.experiment.config import ExperimentConfig
from jaxal.experiment.grid import compare, run_grid
from jaxal.experiment.records import SEQUENTIAL_SUFFIX
from jaxal.experiment.report import Report, verdict
from jaxal.training.train import TrainConfig

STRATEGIES = ("random", "entropy", "margin", "least_confidence", "coreset", "badge", "bald", "mlmoc",
              "mlmoc" + SEQUENTIAL_SUFFIX, "crc")
QUICK_STRATEGIES = ("random", "margin", "mlmoc")
#: the look-ahead protocol's grid: the flagship's three batch modes against the baselines.
LOOKAHEAD_STRATEGIES = ("random", "entropy", "margin", "badge", "mlmoc", "mlmoc[batch=greedy]",
                        "mlmoc" + SEQUENTIAL_SUFFIX, "emoc", "crc")
DROPOUT = 0.25
DEFAULT_OUT = os.path.join("benchmarks", "results", "al_quality")


@dataclass(frozen=True)
class Setting:
    """One comparison grid: data set, model and active-learning design."""

    name: str
    title: str
    dataset: str
    model: str
    model_options: Mapping[str, Any]
    initial: int
    budget: int
    rounds: int
    candidates: int = 500
    epochs: int = 100
    batch_size: int = 32
    crc_group_size: int = 5
    # seconds per run (this grid's design, warm jit caches, 2 idle cores) by strategy,
    # "*" for the others, "compile" once per setting; only for the printed estimate.
    prior_seconds: Mapping[str, float] = field(default_factory=dict)

    def config(self, strategy: str, seed: int, loss: str, protocol: str = "standard") -> ExperimentConfig:
        """The :class:`ExperimentConfig` of one arm and seed.

        ``strategy`` is an arm: ``NAME``, ``NAME-seq`` (sequential) or ``NAME[key=value]``
        (a variant, labelled by its text). ``protocol="lookahead"`` applies
        :func:`jaxal.experiment.protocols.apply` (warm start, squared loss to a small residual, ...)
        keeping this setting's epoch cap, batch size and candidates.
        """
        name, sequential, variant = parse_arm(strategy)
        options: dict[str, Any] = {}
        if name == "crc":
            options["group_size"] = self.crc_group_size
        options.update(variant)
        config = ExperimentConfig(
            dataset=self.dataset,
            model=self.model,
            model_options=dict(self.model_options),
            strategy=name,
            strategy_options=options,
            initial_size=self.initial,
            budget=self.budget,
            rounds=self.rounds,
            seed=seed,
            start="cold",
            train=TrainConfig(loss=loss, max_epochs=self.epochs, batch_size=self.batch_size),
            candidates=self.candidates,
            sequential=sequential,
            label=strategy if variant else None,
        )
        if protocol != "standard":
            config = protocols.apply(config, protocol, keep=["candidates"], keep_train=["max_epochs", "batch_size"])
        return config


# Prior cost per run in seconds with warm jit caches ("*": the others) and the one-off
# compilation per setting, measured with a 2-seed run of this grid on the 2-core CPU box
# at a load of 2-6 (seed 1's records; the runs are deterministic, timings are not).
_PRIOR_DIGITS = {"*": 1.5, "badge": 2.6, "bald": 5.5, "mlmoc": 3.3, "mlmoc-seq": 5.2, "crc": 2.3, "random": 0.6,
                 "compile": 80.0}
_PRIOR_M1D_MLP = {"*": 4.3, "badge": 5.0, "bald": 7.2, "mlmoc": 5.5, "mlmoc-seq": 9.8, "crc": 5.1,
                  "compile": 30.0}
_PRIOR_M1D_CNN = {"*": 6.0, "badge": 8.3, "coreset": 7.3, "bald": 17.1, "mlmoc": 26.1, "mlmoc-seq": 34.3,
                  "crc": 15.1, "compile": 20.0}

SETTINGS = {
    "digits-mlp": Setting("digits-mlp", "digits / MLP", "digits", "mlp", {"widths": (128,), "dropout_rate": DROPOUT},
                          initial=20, budget=20, rounds=10, crc_group_size=10, prior_seconds=_PRIOR_DIGITS),
    "mnist1d-mlp": Setting("mnist1d-mlp", "MNIST-1D / MLP", "mnist1d", "mlp",
                           {"widths": (128, 128), "dropout_rate": DROPOUT},
                           initial=50, budget=50, rounds=10, crc_group_size=10, prior_seconds=_PRIOR_M1D_MLP),
    "mnist1d-cnn": Setting("mnist1d-cnn", "MNIST-1D / CNN", "mnist1d", "cnn",
                           {"channels": (16, 32), "hidden": 64, "dropout_rate": DROPOUT},
                           initial=50, budget=50, rounds=10, crc_group_size=10, prior_seconds=_PRIOR_M1D_CNN),
}


# The look-ahead protocol's grid (no dropout: the look-ahead's kernel is the deterministic
# network's, and BALD is not in this grid). 1,000 random candidates per round (the
# look-ahead's S); MLP width 512 and a small CNN on MNIST-1D with 100 initial labels.
_PRIOR_LA = {"*": 12.0, "random": 8.0, "mlmoc-seq": 20.0, "mlmoc[batch=greedy]": 20.0, "crc": 20.0,
             "compile": 60.0}
LOOKAHEAD_SETTINGS = {
    "digits-mlp": Setting("digits-mlp", "digits / MLP 512", "digits", "mlp", {"widths": (512,)},
                          initial=20, budget=20, rounds=10, candidates=1000, epochs=300, crc_group_size=10,
                          prior_seconds=_PRIOR_LA),
    "mnist1d-mlp": Setting("mnist1d-mlp", "MNIST-1D / MLP 512-512", "mnist1d", "mlp", {"widths": (512, 512)},
                           initial=100, budget=20, rounds=10, candidates=1000, epochs=300, crc_group_size=10,
                           prior_seconds=_PRIOR_LA),
    "mnist1d-cnn": Setting("mnist1d-cnn", "MNIST-1D / CNN", "mnist1d", "cnn", {"channels": (16, 32), "hidden": 64},
                           initial=100, budget=20, rounds=10, candidates=1000, epochs=300, crc_group_size=10,
                           prior_seconds=_PRIOR_LA),
}


def quick_setting() -> Setting:
    """CI size: digits, 2 rounds of 20 from 20 labels, 200 candidates, 30 epochs."""
    return dataclasses.replace(SETTINGS["digits-mlp"], rounds=2, candidates=200, epochs=30)


def available(names: Sequence[str]) -> list[str]:
    """The strategies the registry offers now; the others are skipped with a warning."""
    known = set(registry.names())
    kept = []
    for s in names:
        base, sequential, _ = parse_arm(s)
        if base not in known:
            warnings.warn(f"strategy {base!r} is not registered (yet): skipped", stacklevel=2)
        elif sequential and registry.sequential_mode(base) is None:
            warnings.warn(f"strategy {base!r} has no sequential mode: {s!r} skipped", stacklevel=2)
        else:
            kept.append(s)
    return kept


def prior_estimate(setting: Setting, strategies: Sequence[str], seeds: int) -> float:
    """Seconds the grid should take on 2 idle cores (prior, from ``prior_seconds``)."""
    p = setting.prior_seconds
    return p.get("compile", 0.0) + seeds * sum(p.get(s, p.get("*", 15.0)) for s in strategies)


def _fmt_time(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def run_setting(setting: Setting, strategies: Sequence[str], seeds: int, out: str, loss: str,
                progress: bool, protocol: str = "standard") -> tuple[Report, float]:
    """Seed 0 of every strategy first (the measured projection), then the rest, then the report."""
    configs = [setting.config(s, k, loss, protocol) for k in range(seeds) for s in strategies]
    t0 = time.perf_counter()
    run_grid([c for c in configs if c.seed == 0], out, progress=progress)
    first = time.perf_counter() - t0
    if seeds > 1:
        print(f"  {setting.name}: seed 0 took {_fmt_time(first)} (compilation included); "
              f"projected for the other {seeds - 1} seeds: <= {_fmt_time(first * (seeds - 1))}", flush=True)
    _, report = compare(configs, out, progress=progress, title=setting.title)
    return report, time.perf_counter() - t0


def readme_table(reports: Mapping[str, Report], settings: Mapping[str, Setting], seeds: int, alpha: float = 0.05) -> str:
    """The AUBC table across settings, Markdown, for the README."""
    names = list(reports)
    labels: list[str] = []
    for name in names:
        for r in reports[name].rows:
            if r.label not in labels:
                labels.append(r.label)
    order = {lab: k for k, lab in enumerate(dict.fromkeys(STRATEGIES + LOOKAHEAD_STRATEGIES))}
    labels.sort(key=lambda lab: order.get(lab, len(order)))
    mark = {"better": " ▲", "worse": " ▼"}
    lines = [
        f"AUBC (mean test accuracy over the rounds) ± 95% CI over {seeds} seeds; ▲/▼: significantly better/worse "
        f"than random (two-sided paired t-test on the per-seed AUBC, p < {alpha}); penalty: column mean of the "
        "pairwise penalty matrix (how often a strategy is significantly beaten; lower is better).",
        "",
        "| strategy | " + " | ".join(f"{settings[n].title} AUBC | penalty" for n in names) + " |",
        "|---|" + "---:|---:|" * len(names),
    ]
    for lab in labels:
        cells = []
        for n in names:
            rep = reports[n]
            row = next((r for r in rep.rows if r.label == lab), None)
            if row is None:
                cells += ["–", "–"]
                continue
            p = "" if math.isnan(row.pvalue) else f" (p={row.pvalue:.3f})" if row.pvalue >= 0.001 else " (p<0.001)"
            cells.append(f"{row.aubc:.3f} ± {row.aubc_ci:.3f}{mark.get(verdict(row, alpha), '')}{p}")
            pm = rep.penalty
            cells.append(f"{pm.column_means[pm.strategies.index(lab)]:.2f}" if pm is not None and lab in pm.strategies
                         else "–")
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    lines += [""]
    for n in names:
        s = settings[n]
        b = reports[n].budgets
        lines.append(f"- {s.title}: {s.initial} initial labels, {s.budget} per round, {len(b) - 1} rounds "
                     f"({b[0]}–{b[-1]} labels), {s.candidates} random candidates per round; plots and matrix: "
                     f"`{n}/curves.png`, `{n}/diff_to_random.png`, `{n}/penalty.png`.")
    return "\n".join(lines) + "\n"


def _jsonable_report(rep: Report, seconds: float) -> dict:
    pm = rep.penalty
    return {
        "seconds": seconds,
        "budgets": rep.budgets,
        "meta": rep.meta,
        "notes": rep.notes,
        "aubc": [r._asdict() for r in rep.rows],
        "penalty": None if pm is None else {
            "strategies": pm.strategies, "budgets": pm.budgets, "matrix": pm.matrix.tolist(),
            "column_means": pm.column_means.tolist(),
        },
    }


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI size: digits, random/margin/mlmoc, 2 seeds, 2 rounds")
    ap.add_argument("--out", default=None, help=f"output directory (default: {DEFAULT_OUT}, quick: .../quick)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default: 10; quick: 2)")
    ap.add_argument("--settings", default=None, help=f"comma-separated subset of {','.join(SETTINGS)}")
    ap.add_argument("--strategies", default=None, help="comma-separated subset (NAME-seq: sequential mode)")
    ap.add_argument("--loss", default="cross_entropy", help="training loss for every strategy, standard protocol "
                    "(default: cross_entropy; the lookahead protocol always uses the squared loss)")
    ap.add_argument("--protocol", default="standard", choices=protocols.PROTOCOLS,
                    help="standard: the grid above (cold start, 99%% rule); lookahead: the look-ahead protocol's "
                    "grid (warm start, squared loss to a small residual; MLP 512 and CNN; default: standard)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)

    lookahead = args.protocol == "lookahead"
    default_out = os.path.join(DEFAULT_OUT, "lookahead") if lookahead else DEFAULT_OUT
    out = args.out or (os.path.join(default_out, "quick") if args.quick else default_out)
    seeds = args.seeds or (2 if args.quick else 10)
    table_of = LOOKAHEAD_SETTINGS if lookahead else SETTINGS
    if args.quick:
        settings = {"digits-mlp": quick_setting()}
    else:
        names = args.settings.split(",") if args.settings else list(table_of)
        unknown = [n for n in names if n not in table_of]
        if unknown:
            ap.error(f"unknown settings {unknown}; valid: {', '.join(table_of)}")
        settings = {n: table_of[n] for n in names}
    default = QUICK_STRATEGIES if args.quick else LOOKAHEAD_STRATEGIES if lookahead else STRATEGIES
    wanted = split_arms(args.strategies) if args.strategies else list(default)
    strategies = available(wanted)
    if "random" not in strategies:
        print("warning: no random arm: differences to random, p-values and penalty matrices are skipped", flush=True)
    progress = not args.quiet and sys.stdout.isatty()

    total = sum(prior_estimate(s, strategies, seeds) for s in settings.values())
    print(f"al_quality: {len(settings)} settings x {len(strategies)} strategies x {seeds} seeds = "
          f"{len(settings) * len(strategies) * seeds} runs; protocol {args.protocol}; output {out}\n"
          f"strategies: {', '.join(strategies)}\n"
          f"prior estimate on 2 idle cores: ~{_fmt_time(total)} (a shared machine is slower)", flush=True)
    reports, seconds = {}, {}
    for name, setting in settings.items():
        print(f"[{name}] {setting.title}: {setting.initial} + {setting.rounds} x {setting.budget} labels, "
              f"prior ~{_fmt_time(prior_estimate(setting, strategies, seeds))}", flush=True)
        reports[name], seconds[name] = run_setting(setting, strategies, seeds, os.path.join(out, name), args.loss,
                                                   progress, args.protocol)
        print(f"[{name}] done in {_fmt_time(seconds[name])}: {os.path.join(out, name, 'summary.md')}", flush=True)

    table = readme_table(reports, settings, seeds)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "README_table.md"), "w", encoding="utf-8") as f:
        f.write(table)
    result = {
        "mode": "quick" if args.quick else "full",
        "seeds": seeds,
        "loss": "squared" if lookahead else args.loss,
        "protocol": args.protocol,
        "strategies": strategies,
        "settings": {n: dataclasses.asdict(s) | _jsonable_report(reports[n], seconds[n]) for n, s in settings.items()},
    }
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, default=float)
    print("\n" + table, flush=True)
    print(f"total {_fmt_time(sum(seconds.values()))}; table: {os.path.join(out, 'README_table.md')}", flush=True)
    return result


if __name__ == "__main__":
    main()
