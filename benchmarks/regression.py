"""Active learning for regression: NTK-native selectors against random, on four sets.

For a network trained with the squared loss, the linearised model's look-ahead is a
Gaussian-process posterior update with the empirical NTK as kernel, so "how uncertain
is x'" (posterior variance), "how much would labelling x' change the predictions"
(expected output change) and "which batch is jointly most informative" (greedy
log-determinant) are closed forms over kernel features. This benchmark runs every
regression strategy of :mod:`jaxal.strategies.regression` through the loop:

- ``random``;
- ``mc_variance``: predictive variance over 20 MC-dropout passes, top-k;
- ``ntk_variance``: the linearised model's posterior variance, top-k;
- ``ntk_emoc``: the NTK look-ahead's expected output change, top-k;
- ``maxdet``, ``maxdist``, ``kmeanspp_features``, ``lcmd``: batch selectors over
  sketched-NTK features (512 random projections of the Jacobian) conditioned on the
  labeled set.

Sets (targets standardised on the training split, so RMSE 1.0 is the training mean's;
:mod:`jaxal.data_regression`), MLP 128-128 with dropout 0.1 for every arm (MC dropout
needs it), cold start, squared loss, Adam 1e-3, 100 epochs, batches of 32; each round
scores the same 500 random unlabeled candidates for every arm:

- ``diabetes``: 332 train / 110 test, 10 features; 20 initial, 10 per round, 10 rounds;
- ``friedman1``: 2,000 / 500, 10 features (5 distractors); 20 initial, 20 per round;
- ``friedman2``: 2,000 / 500, 4 features; 20 initial, 20 per round (not in the
  default list, for time: ``--settings friedman2``);
- ``digits_angle``: 1,348 / 449 rotated 8×8 digits, target the angle; 50 initial, 50
  per round.

Reported per arm: RMSE-AUBC (mean test RMSE over rounds; lower is better) with the
paired t-test against random over 5 seeds, the final RMSE, and the mean query time.
Also the sketch's error against the exact empirical NTK as the sketch grows, and
(``--diagnose``) how well each uncertainty predicts where the model errs.

    python benchmarks/regression.py --quick   # diabetes, 3 arms, 2 seeds, 3 rounds (~1 min)
    python benchmarks/regression.py           # every set and arm, 5 seeds
    python benchmarks/regression.py --seeds 10   # the committed results (5 seeds first: regression_5seeds.md)
    python benchmarks/regression.py --diagnose  # Spearman(uncertainty, test error), 5 seeds

Runs resume. Results: ``benchmarks/results/regression/{regression.json, regression.md,
sketch_error.json, <set>/}`` (each set's report: curves, AUBC table, penalty matrix).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from jaxal import data
from jaxal import models as models_lib
from jaxal.experiment.config import ExperimentConfig
from jaxal.experiment.grid import run_grid
from jaxal.experiment.report import write_report
from jaxal.model import predict_logits
from jaxal.training.train import TrainConfig, init_variables, train

DEFAULT_OUT = os.path.join("benchmarks", "results", "regression")
RUNS_DIR = os.path.join("benchmarks", "results", "tmp", "regression")
ARMS = ("random", "mc_variance", "ntk_variance", "ntk_emoc", "maxdet", "maxdist", "kmeanspp_features", "lcmd")


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    initial: int
    budget: int
    rounds: int = 10
    arms: tuple[str, ...] = ARMS
    widths: tuple[int, ...] = (128, 128)
    epochs: int = 100
    candidates: int | None = 500

    def config(self, arm: str, seed: int) -> ExperimentConfig:
        return ExperimentConfig(
            dataset=self.name, model="mlp", model_options={"widths": self.widths, "dropout_rate": 0.1},
            strategy=arm, initial_size=self.initial, budget=self.budget, rounds=self.rounds, seed=seed,
            start="cold", candidates=self.candidates,
            train=TrainConfig(loss="mse", max_epochs=self.epochs, batch_size=32))


SETTINGS = {
    "diabetes": Setting("diabetes", 20, 10),
    "friedman1": Setting("friedman1", 20, 20),
    "friedman2": Setting("friedman2", 20, 20),
    "digits_angle": Setting("digits_angle", 50, 50),
}


DEFAULT_SETTINGS = ("diabetes", "friedman1", "digits_angle")


def quick_setting() -> Setting:
    return dataclasses.replace(SETTINGS["diabetes"], rounds=3, arms=("random", "ntk_variance", "maxdet"), epochs=50)


def run_setting(setting: Setting, seeds: int, out: str, runs_dir: str, progress: bool) -> dict[str, Any]:
    configs = [setting.config(arm, seed) for seed in range(seeds) for arm in setting.arms]
    t0 = time.perf_counter()
    runs = run_grid(configs, os.path.join(runs_dir, setting.name), progress=progress)
    report = write_report(runs, os.path.join(out, setting.name), title=f"{setting.name} (regression)")
    rows = {}
    for r in report.rows:
        by_seed = runs[r.label]
        rows[r.label] = {
            "rmse_aubc": r.aubc, "rmse_aubc_ci": r.aubc_ci, "diff_vs_random": r.diff, "pvalue": r.pvalue,
            "final_rmse": float(np.mean([recs[-1]["test_rmse"] for recs in by_seed.values()])),
            "query_seconds_mean": float(np.mean([x["query_seconds"] for recs in by_seed.values() for x in recs[1:]])),
        }
    penalty = None if report.penalty is None else dict(zip(report.penalty.strategies,
                                                           map(float, report.penalty.column_means)))
    return {"design": dataclasses.asdict(setting), "seeds": seeds, "rows": rows, "budgets": report.budgets,
            "penalty_column_means": penalty, "seconds": time.perf_counter() - t0}


def sketch_error(dims: Sequence[int] = (32, 128, 512, 2048), n: int = 200, keys: int = 3) -> dict[str, Any]:
    """Relative Frobenius error of the sketched NTK Gram against the exact one, on ``n``
    friedman1 inputs and an MLP 128-128 trained briefly; mean and spread over ``keys``
    sketches per size."""
    from jaxal.ntk.sketch import sketch_relative_error

    ds = data.load("friedman1")
    module = models_lib.create("mlp", 1, input_shape=ds.x_train.shape[1:], widths=(128, 128))
    variables = init_variables(jax.random.key(0), module, ds.x_train[:1])
    variables = train(jax.random.key(1), module, variables, ds.x_train[:100], ds.y_train[:100], 1,
                      TrainConfig(loss="mse", max_epochs=50, batch_size=32)).variables
    model = models_lib.as_model(module, variables)
    x = ds.x_train[:n]
    rows = []
    for k in dims:
        errs = [float(sketch_relative_error(model, x, jax.random.key(s), sketch_dim=k)) for s in range(keys)]
        rows.append({"sketch_dim": int(k), "rel_error_mean": float(np.mean(errs)), "rel_error_std": float(np.std(errs))})
    return {"rows": rows, "n": n, "parameters": int(sum(np.size(v) for v in jax.tree.leaves(variables["params"])))}


def uncertainty_vs_error(setting: Setting, seeds: int = 5, labels: int | None = None) -> dict[str, Any]:
    """Does the uncertainty the selectors read predict where the model errs? After
    training on ``labels`` random rows (default: the setting's budget at round 5), the
    Spearman correlation over the test set between each point's squared error and its
    NTK posterior variance (sketch, the selectors' kernel and noise) or its MC-dropout
    variance; mean and spread over seeds. Near 0: a selector that chases variance picks
    no better than random."""
    from scipy.stats import spearmanr

    from jaxal.ops import kernel_select as ks
    from jaxal.strategies.base import Context
    from jaxal.strategies.regression import DEFAULT_NOISE, absolute_noise, kernel_features, mc_variance_scores

    ds = data.load(setting.name)
    n = labels or setting.initial + 5 * setting.budget
    out: dict[str, list[float]] = {"ntk_variance": [], "mc_variance": []}
    for seed in range(seeds):
        rows = np.random.default_rng(seed).permutation(ds.x_train.shape[0])[:n]
        module = models_lib.create("mlp", 1, input_shape=ds.x_train.shape[1:], widths=setting.widths,
                                   dropout_rate=0.1)
        variables = init_variables(jax.random.key(seed), module, ds.x_train[:1])
        variables = train(jax.random.key(seed + 100), module, variables, ds.x_train[rows], ds.y_train[rows], 1,
                          TrainConfig(loss="mse", max_epochs=setting.epochs, batch_size=32)).variables
        model = models_lib.as_model(module, variables)
        err = (np.asarray(predict_logits(model, ds.x_test))[:, 0] - ds.y_test) ** 2
        ctx = Context(model, ds.x_train[rows], ds.y_train[rows], ds.x_test, 1, task="regression")
        phi_test, phi_lab = kernel_features(jax.random.key(seed + 200), ctx)
        var = ks.posterior_variance(phi_test, phi_lab, absolute_noise(DEFAULT_NOISE, phi_test, phi_lab))
        out["ntk_variance"].append(float(spearmanr(np.asarray(var), err).statistic))
        mc = mc_variance_scores(model, ds.x_test, jax.random.key(seed + 300))
        out["mc_variance"].append(float(spearmanr(mc, err).statistic))
    return {"labels": n, "spearman": {k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in out.items()}}


def table(name: str, res: Mapping[str, Any]) -> str:
    head = ["arm", "RMSE-AUBC (lower better)", "Δ vs random", "p vs random", "final RMSE", "query s"]
    b = res["budgets"]
    lines = [f"**{name}** ({res['seeds']} seeds, {b[0]}→{b[-1]} labels)", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for label, r in sorted(res["rows"].items(), key=lambda kv: kv[1]["rmse_aubc"]):
        p = r["pvalue"]
        lines.append("| " + " | ".join([
            label, f"{r['rmse_aubc']:.3f} ± {r['rmse_aubc_ci']:.3f}",
            "–" if np.isnan(r["diff_vs_random"]) else f"{r['diff_vs_random']:+.3f}",
            "–" if np.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}"),
            f"{r['final_rmse']:.3f}", f"{r['query_seconds_mean']:.2f}"]) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="diabetes, 3 arms, 2 seeds, 3 rounds")
    ap.add_argument("--out", default=None, help=f"summaries (default: {DEFAULT_OUT}; quick: .../quick)")
    ap.add_argument("--runs", default=None, help=f"run directories (default: {RUNS_DIR})")
    ap.add_argument("--seeds", type=int, default=None, help="seeds (default: 5; quick: 2)")
    ap.add_argument("--settings", default=None, help=f"comma-separated subset of {','.join(SETTINGS)}")
    ap.add_argument("--arms", default=None, help=f"comma-separated subset of {','.join(ARMS)}")
    ap.add_argument("--no-sketch", action="store_true", help="skip the sketch-error measurement")
    ap.add_argument("--diagnose", action="store_true",
                    help="only measure how well each uncertainty predicts the test error (uncertainty_vs_error)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    out = args.out or (os.path.join(DEFAULT_OUT, "quick") if args.quick else DEFAULT_OUT)
    runs_dir = args.runs or (RUNS_DIR + ("-quick" if args.quick else ""))
    seeds = args.seeds or (2 if args.quick else 5)
    if args.quick:
        settings = {"diabetes": quick_setting()}
    else:
        names = args.settings.split(",") if args.settings else list(DEFAULT_SETTINGS)
        unknown = [n for n in names if n not in SETTINGS]
        if unknown:
            ap.error(f"unknown settings {unknown}; valid: {', '.join(SETTINGS)}")
        settings = {n: SETTINGS[n] for n in names}
    if args.arms:
        arms = tuple(args.arms.split(","))
        bad = [a for a in arms if a not in ARMS]
        if bad:
            ap.error(f"unknown arms {bad}; valid: {', '.join(ARMS)}")
        settings = {n: dataclasses.replace(s, arms=arms) for n, s in settings.items()}
    os.makedirs(out, exist_ok=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if args.diagnose:
        diag = {name: uncertainty_vs_error(setting) for name, setting in settings.items()}
        with open(os.path.join(out, "uncertainty_vs_error.json"), "w", encoding="utf-8") as f:
            json.dump({"load_average_start": load, "settings": diag}, f, indent=1)
        print(json.dumps(diag, indent=1))
        return diag
    results = {}
    for name, setting in settings.items():
        print(f"{name}: {len(setting.arms)} arms x {seeds} seeds x {setting.rounds + 1} rounds", flush=True)
        results[name] = run_setting(setting, seeds, out, runs_dir, progress=not args.quiet)
    doc = {"load_average_start": load, "settings": results}
    if not args.quick and not args.no_sketch:
        doc["sketch_error"] = sketch_error()
        with open(os.path.join(out, "sketch_error.json"), "w", encoding="utf-8") as f:
            json.dump(doc["sketch_error"], f, indent=1)
    md = "\n\n".join(table(name, res) for name, res in results.items())
    with open(os.path.join(out, "regression.md"), "w", encoding="utf-8") as f:
        f.write(md + "\n")
    with open(os.path.join(out, "regression.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    print(md)
    return doc


if __name__ == "__main__":
    main()
