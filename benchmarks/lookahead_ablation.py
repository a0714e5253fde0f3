"""Which ingredient of the look-ahead protocol decides whether MLMOC beats random?

Starting from the look-ahead protocol (:mod:`jaxal.experiment.protocols`: squared loss, warm
start, training to a mean squared residual <= 0.01, BatchNorm frozen after round 0,
1,000 random candidates), each variant changes ONE ingredient, and the last one
changes them all (the standard protocol). Every variant is its own paired comparison
(same seeds, same initial set and network per seed) of random, greedy-batch MLMOC and
sequential MLMOC, so each row says whether MLMOC beats random under that training:

- ``lookahead``: the protocol itself;
- ``default_head``: the default (random) output layer instead of a zero one, so the
  network starts from a random function ``f₀`` that the squared loss never removes;
- ``cross_entropy``: cross-entropy instead of the squared loss the look-ahead linearises;
- ``cold_start``: a fresh initialisation every round instead of continuing;
- ``accuracy_rule``: stop at 99% training accuracy (a large residual is left);
- ``offset_off``: MLMOC measured against ``f_lin`` (``reference="linearised"``), the
  candidate's own term without the offset ``k(x, L) K_LL⁻¹ R`` (its random arm
  repeats ``lookahead``'s: the training is the same, and so are the numbers);
- ``standard``: default head, cold start, cross-entropy, the 99% rule (the usual
  deep-AL protocol).

Setting: digits, MLP 512, 20 initial labels, 20 per round, 6 rounds (20 -> 140).

    python benchmarks/lookahead_ablation.py --seeds 5            # ~15 min on 2 idle cores
    python benchmarks/lookahead_ablation.py --quick              # 2 seeds, 2 rounds, 2 variants

Writes ``OUT/<variant>/`` (the comparison's curves, AUBC, summary) and ``OUT/ablation.md``
/ ``OUT/ablation.json`` (AUBC, paired difference to random and its p-value per variant
and arm). Runs resume when started again with the same arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from typing import Any, Sequence

from jaxal.cli import parse_arm
from jaxal.experiment import protocols
from jaxal.experiment.config import ExperimentConfig
from jaxal.experiment.grid import compare
from jaxal.training.train import TrainConfig

DEFAULT_OUT = os.path.join("benchmarks", "results", "lookahead_ablation")
ARMS = ("random", "mlmoc[batch=greedy]", "mlmoc-seq")

#: variant -> (ExperimentConfig changes, TrainConfig changes, extra look-ahead options)
VARIANTS: dict[str, tuple[dict, dict, dict]] = {
    "lookahead": ({}, {}, {}),
    "default_head": ({"head_init_scale": 1.0}, {}, {}),
    "cross_entropy": ({}, {"loss": "cross_entropy"}, {}),
    "cold_start": ({"start": "cold"}, {}, {}),
    "accuracy_rule": ({}, {"target_accuracy": 0.99, "target_loss": None}, {}),
    "offset_off": ({}, {}, {"reference": "linearised"}),
    "standard": ({"start": "cold", "head_init_scale": 1.0},
                 {"loss": "cross_entropy", "target_accuracy": 0.99, "target_loss": None}, {}),
}


def configs_for(variant: str, seeds: int, rounds: int) -> list[ExperimentConfig]:
    """The grid of one variant: every arm at every seed."""
    changes, train_changes, la_options = VARIANTS[variant]
    base = protocols.apply(
        ExperimentConfig(dataset="digits", model="mlp", model_options={"widths": (512,)}, initial_size=20,
                         budget=20, rounds=rounds, train=TrainConfig(max_epochs=300)),
        "lookahead", keep_train=["max_epochs"],
    )
    base = dataclasses.replace(base, train=dataclasses.replace(base.train, **train_changes), **changes)
    out = []
    for seed in range(seeds):
        for arm in ARMS:
            name, sequential, options = parse_arm(arm)
            if name != "random":
                options = {**options, **la_options}
            out.append(dataclasses.replace(base, strategy=name, sequential=sequential, seed=seed,
                                           strategy_options=options, label=arm if "[" in arm else None))
    return out


def _fmt_p(p: float) -> str:
    return "–" if math.isnan(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    ap.add_argument("--quick", action="store_true", help="2 seeds, 2 rounds, lookahead and standard only")
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default=None, help="also write the results JSON here")
    args = ap.parse_args(argv)
    seeds, rounds = (2, 2) if args.quick else (args.seeds, args.rounds)
    variants = ["lookahead", "standard"] if args.quick else [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    out = args.out or (os.path.join(DEFAULT_OUT, "quick") if args.quick else DEFAULT_OUT)
    progress = sys.stdout.isatty()
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for v in variants:
        print(f"[{v}] {len(ARMS)} arms x {seeds} seeds, {rounds} rounds", flush=True)
        _, report = compare(configs_for(v, seeds, rounds), os.path.join(out, v), progress=progress,
                            title=f"ablation: {v}")
        rows[v] = {r.label: {"aubc": r.aubc, "aubc_ci": r.aubc_ci, "diff": r.diff, "diff_ci": r.diff_ci,
                             "pvalue": r.pvalue} for r in report.rows}
    lines = [f"MLMOC vs random on digits / MLP 512 ({seeds} seeds, 20 + {rounds} x 20 labels): AUBC, paired "
             "AUBC difference to random ± 95% CI, two-sided paired t-test p.", "",
             "| variant | random AUBC | greedy MLMOC AUBC | Δ vs random (p) | sequential MLMOC AUBC | Δ vs random (p) |",
             "|---|---:|---:|---:|---:|---:|"]
    for v in variants:
        r = rows[v]
        cells = [f"{r['random']['aubc']:.3f}"] if "random" in r else ["–"]
        for arm in ARMS[1:]:
            a = r.get(arm)
            cells += ["–", "–"] if a is None else [
                f"{a['aubc']:.3f}", f"{a['diff']:+.3f} ± {a['diff_ci']:.3f} ({_fmt_p(a['pvalue'])})"]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "ablation.md"), "w", encoding="utf-8") as f:
        f.write(table)
    result = {"seeds": seeds, "rounds": rounds, "variants": variants, "arms": list(ARMS), "results": rows}
    for path in filter(None, [os.path.join(out, "ablation.json"), args.json]):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    print("\n" + table, flush=True)
    return result


if __name__ == "__main__":
    main()
