"""Batch-aware Bayesian acquisition: BatchBALD, stochastic batches and EPIG against top-k.

Top-``B`` of a single-point score fills a batch with near-copies when the pool holds
them. This benchmark measures how much of each batch goes to near-duplicates and what
that costs in accuracy, for:

- ``bald`` (top-k), ``batchbald`` (greedy joint mutual information), ``bald-power``
  (PowerBALD: ``bald`` with ``batch=power``), ``epig`` (expected predictive information
  gain over a target sample of the pool);
- ``entropy`` (top-k) and ``entropy-power`` (``batch=power``);
- ``random``.

Settings (one comparison grid each, run directories under ``benchmarks/results/tmp/``):

- ``digits-x3``: the redundancy setting. Digits' 1,347 training images three times
  each, the copies with Gaussian noise of 0.1 training std per pixel (``copies=3``,
  ``copy_noise=0.1``: row ``j·1347 + i`` is a copy of image ``i``); MLP 128 with
  dropout 0.2 (MC dropout, 20 samples); 20 initial labels, 20 per round, 10 rounds;
  1,000 random candidates per round for every arm.
- ``mnist1d``: MNIST-1D (4,000 / 1,000), MLP 128-128, dropout 0.2; 50 initial, 50 per
  round, 10 rounds; 1,000 candidates.

Standard protocol (cold start, cross-entropy, Adam, 99% training accuracy, cap 100
epochs). Reported per arm: AUBC (mean test accuracy over rounds) with the paired
t-test against random over 5 seeds, and on ``digits-x3`` the near-duplicate
fractions of the query batches (rounds 1..R):

- ``dup_in_batch``: the fraction of a batch whose source image another row of the
  same batch already has (``1 − distinct sources / B``): what top-k wastes;
- ``dup_with_labeled``: the fraction whose source image is already labeled or earlier
  in the batch (grows with the labeled set for every arm, random included).

    python benchmarks/batch_bayesian.py --quick   # digits-x3, 4 arms, 2 seeds, 3 rounds (~2 min)
    python benchmarks/batch_bayesian.py           # both settings, 7 arms, 5 seeds
    python benchmarks/batch_bayesian.py --samples-ablation   # BatchBALD's batch vs its K samples

Runs resume: started again with the same arguments, finished runs are skipped.
Results: ``benchmarks/results/batch_bayesian/{batch_bayesian.json, batch_bayesian.md, <setting>/}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Any, Mapping, Sequence

import numpy as np

import jax

from jaxal import data
from jaxal.experiment.config import ExperimentConfig
from jaxal.experiment.grid import run_grid
from jaxal.experiment.report import write_report
from jaxal.training.train import TrainConfig

DEFAULT_OUT = os.path.join("benchmarks", "results", "batch_bayesian")
RUNS_DIR = os.path.join("benchmarks", "results", "tmp", "batch_bayesian")

#: arm -> (strategy, options)
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "random": ("random", {}),
    "bald": ("bald", {}),
    "batchbald": ("batchbald", {}),
    "bald-power": ("bald", {"batch": "power"}),
    "epig": ("epig", {}),
    "entropy": ("entropy", {}),
    "entropy-power": ("entropy", {"batch": "power"}),
}


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    dataset: str
    dataset_options: tuple[tuple[str, Any], ...]
    widths: tuple[int, ...]
    initial: int
    budget: int
    rounds: int
    arms: tuple[str, ...]
    copies: int = 1
    candidates: int = 1000

    def config(self, arm: str, seed: int) -> ExperimentConfig:
        strategy, options = ARMS[arm]
        return ExperimentConfig(
            dataset=self.dataset, dataset_options=dict(self.dataset_options), model="mlp",
            model_options={"widths": self.widths, "dropout_rate": 0.2}, strategy=strategy, strategy_options=options,
            initial_size=self.initial, budget=self.budget, rounds=self.rounds, seed=seed, start="cold",
            train=TrainConfig(max_epochs=100, batch_size=32), candidates=self.candidates,
            label=arm if arm != strategy else None)


SETTINGS = {
    "digits-x3": Setting("digits-x3", "digits", (("copies", 3), ("copy_noise", 0.1)), (128,), 20, 20, 10,
                         tuple(ARMS), copies=3),
    "mnist1d": Setting("mnist1d", "mnist1d", (), (128, 128), 50, 50, 10, tuple(ARMS)),
}


def quick_setting() -> Setting:
    return dataclasses.replace(SETTINGS["digits-x3"], rounds=3, arms=("random", "bald", "bald-power", "batchbald"),
                               candidates=300)


def duplicate_fractions(records: Sequence[Mapping[str, Any]], n_sources: int) -> dict[str, float]:
    """Mean over query rounds of ``dup_in_batch`` and ``dup_with_labeled`` (see the module
    docstring); row ``r`` of the training set is a copy of source ``r mod n_sources``."""
    labeled = {int(i) % n_sources for i in records[0]["chosen"]}
    in_batch, with_labeled = [], []
    for rec in records[1:]:
        sources = [int(i) % n_sources for i in rec["chosen"]]
        in_batch.append(1.0 - len(set(sources)) / len(sources))
        seen, dup = set(labeled), 0
        for s in sources:
            dup += s in seen
            seen.add(s)
        with_labeled.append(dup / len(sources))
        labeled |= set(sources)
    return {"dup_in_batch": float(np.mean(in_batch)), "dup_with_labeled": float(np.mean(with_labeled))}


def run_setting(setting: Setting, seeds: int, out: str, runs_dir: str, progress: bool) -> dict[str, Any]:
    configs = [setting.config(arm, seed) for seed in range(seeds) for arm in setting.arms]
    t0 = time.perf_counter()
    runs = run_grid(configs, os.path.join(runs_dir, setting.name), progress=progress)
    report = write_report(runs, os.path.join(out, setting.name), title=setting.name)
    rows = {r.label: {"aubc": r.aubc, "aubc_ci": r.aubc_ci, "diff_vs_random": r.diff, "pvalue": r.pvalue}
            for r in report.rows}
    if setting.copies > 1:
        n_sources = data.load(setting.dataset, seed=0).x_train.shape[0]  # rows before the copies
        for label, by_seed in runs.items():
            fr = [duplicate_fractions(recs, n_sources) for recs in by_seed.values()]
            for k in ("dup_in_batch", "dup_with_labeled"):
                vals = [f[k] for f in fr]
                rows[label][k] = float(np.mean(vals))
                rows[label][k + "_std"] = float(np.std(vals))
    query = {label: float(np.mean([r["query_seconds"] for recs in by_seed.values() for r in recs[1:]]))
             for label, by_seed in runs.items()}
    for label in rows:
        rows[label]["query_seconds_mean"] = query[label]
    return {"design": dataclasses.asdict(setting), "seeds": seeds, "rows": rows, "budgets": report.budgets,
            "seconds": time.perf_counter() - t0}


def samples_ablation(seeds: int = 5, samples: Sequence[int] = (20, 50, 100), budget: int = 20) -> dict[str, Any]:
    """Why BatchBALD needs many parameter samples: the joint information of a batch is at
    most ``H(θ) = log K`` for ``K`` samples, so with few samples it saturates within a few
    picks and later picks are left to the estimator's noise. On the first query of the
    ``digits-x3`` design (20 random labels, MLP 128 with dropout 0.2, 1,000 random
    candidates), BatchBALD's batch with ``K`` samples: its near-duplicate fraction and the
    joint MI after the last pick against ``log K``; top-k BALD alongside."""
    from jaxal import models as models_lib
    from jaxal.strategies import select
    from jaxal.training.train import init_variables, train

    setting = SETTINGS["digits-x3"]
    rows: dict[str, list[dict[str, float]]] = {}
    for seed in range(seeds):
        ds = data.load("digits", seed=seed, copies=3, copy_noise=0.1)
        n_sources = ds.x_train.shape[0] // 3
        rng = np.random.default_rng(seed)
        labeled = rng.choice(ds.x_train.shape[0], setting.initial, replace=False)
        pool = rng.choice(np.setdiff1d(np.arange(ds.x_train.shape[0]), labeled), setting.candidates, replace=False)
        module = models_lib.create("mlp", 10, input_shape=ds.x_train.shape[1:], widths=setting.widths,
                                   dropout_rate=0.2)
        variables = init_variables(jax.random.key(seed), module, ds.x_train[:1])
        variables = train(jax.random.key(seed + 1), module, variables, ds.x_train[labeled], ds.y_train[labeled], 10,
                          TrainConfig(max_epochs=100, batch_size=32)).variables
        model = models_lib.as_model(module, variables)
        arms = [("bald", {"num_samples": 20})] + [(f"batchbald K={k}", {"num_samples": k}) for k in samples]
        for name, options in arms:
            q = select(name.split()[0], jax.random.key(seed + 2), model, x_labeled=ds.x_train[labeled],
                       y_labeled=ds.y_train[labeled], x_pool=ds.x_train[pool], budget=budget, return_query=True,
                       **options)
            sources = pool[q.indices] % n_sources
            row = {"dup_in_batch": 1.0 - len(set(sources.tolist())) / budget}
            if "joint_mi" in q.info:
                row.update(joint_mi_last=float(q.info["joint_mi"][-1]), log_k=float(np.log(options["num_samples"])),
                           gain_last_pick=float(q.info["joint_mi"][-1] - q.info["joint_mi"][-2]))
            rows.setdefault(name, []).append(row)
    return {name: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for name, rs in rows.items()}


def table(name: str, res: Mapping[str, Any]) -> str:
    rows = res["rows"]
    dup = any("dup_in_batch" in r for r in rows.values())
    head = ["arm", "AUBC (mean acc.)", "Δ vs random", "p vs random"] + (
        ["near-dup. in batch", "near-dup. incl. labeled"] if dup else []) + ["query s"]
    lines = [f"**{name}** ({res['seeds']} seeds, {res['budgets'][0]}→{res['budgets'][-1]} labels)", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for label, r in sorted(rows.items(), key=lambda kv: -kv[1]["aubc"]):
        p = r["pvalue"]
        cells = [label, f"{r['aubc']:.3f} ± {r['aubc_ci']:.3f}",
                 "–" if np.isnan(r["diff_vs_random"]) else f"{r['diff_vs_random']:+.3f}",
                 "–" if np.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")]
        if dup:
            cells += [f"{r['dup_in_batch']:.3f} ± {r['dup_in_batch_std']:.3f}",
                      f"{r['dup_with_labeled']:.3f} ± {r['dup_with_labeled_std']:.3f}"]
        cells.append(f"{r['query_seconds_mean']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="digits-x3, 4 arms, 2 seeds, 3 rounds")
    ap.add_argument("--out", default=None, help=f"summaries (default: {DEFAULT_OUT}; quick: .../quick)")
    ap.add_argument("--runs", default=None, help=f"run directories (default: {RUNS_DIR})")
    ap.add_argument("--seeds", type=int, default=None, help="seeds (default: 5; quick: 2)")
    ap.add_argument("--settings", default=None, help=f"comma-separated subset of {','.join(SETTINGS)}")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--samples-ablation", action="store_true",
                    help="only BatchBALD's batch against its number of parameter samples (samples_ablation)")
    args = ap.parse_args(argv)
    out = args.out or (os.path.join(DEFAULT_OUT, "quick") if args.quick else DEFAULT_OUT)
    runs_dir = args.runs or (RUNS_DIR + ("-quick" if args.quick else ""))
    seeds = args.seeds or (2 if args.quick else 5)
    if args.quick:
        settings = {"digits-x3": quick_setting()}
    else:
        names = args.settings.split(",") if args.settings else list(SETTINGS)
        unknown = [n for n in names if n not in SETTINGS]
        if unknown:
            ap.error(f"unknown settings {unknown}; valid: {', '.join(SETTINGS)}")
        settings = {n: SETTINGS[n] for n in names}
    os.makedirs(out, exist_ok=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if args.samples_ablation:
        ablation = samples_ablation(seeds)
        with open(os.path.join(out, "batchbald_samples.json"), "w", encoding="utf-8") as f:
            json.dump({"load_average_start": load, "seeds": seeds, "arms": ablation}, f, indent=1)
        print(json.dumps(ablation, indent=1))
        return ablation
    results = {}
    for name, setting in settings.items():
        print(f"{name}: {len(setting.arms)} arms x {seeds} seeds x {setting.rounds + 1} rounds", flush=True)
        results[name] = run_setting(setting, seeds, out, runs_dir, progress=not args.quiet)
    doc = {"load_average_start": load, "settings": results}
    md = "\n\n".join(table(name, res) for name, res in results.items())
    with open(os.path.join(out, "batch_bayesian.md"), "w", encoding="utf-8") as f:
        f.write(md + "\n")
    with open(os.path.join(out, "batch_bayesian.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    print(md)
    return doc


if __name__ == "__main__":
    main()
