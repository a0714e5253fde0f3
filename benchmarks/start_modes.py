"""Cold, warm or shrink-and-perturb restarts between rounds: accuracy vs training time.

The claim checked (Ash & Adams 2020; the thesis): restarting each round from
``θ ← λ·θ_prev + σ·θ_fresh`` (shrink-and-perturb) keeps the accuracy of a cold start
(fresh init every round) at a fraction of its training time, while a plain warm start
(``θ_prev``) trains fastest but can lose accuracy.

Arms, one strategy (random, so the labeled sets depend on the seed only and every arm
at a seed labels the same points):

- ``cold``: fresh init every round;
- ``warm``: the previous round's weights;
- ``sp-0.3``, ``sp-0.6``, ``sp-0.9``: shrink-and-perturb with λ ∈ {0.3, 0.6, 0.9} and
  σ = 0.01, noise ``"init"`` (``σ·θ_fresh``, a fresh initialisation scaled by σ: Ash &
  Adams' code). The thesis' grid varies λ at a small σ; these three λ span it (λ = 0
  with σ = 1 would be a cold start).

Settings: digits / MLP 128 (20 initial labels, 20 per round, 10 rounds) and MNIST-1D /
MLP 128-128 (50, 50, 10 rounds); no dropout; cross-entropy, Adam 1e-3, batch 32,
training until 99% training accuracy or 100 epochs.

Measured per round: test accuracy, training seconds and epochs, mean over seeds (95%
CIs). Round 0 (the initial training, identical for every arm) is left out of the time
statistics. Training seconds include jit compilation, so before the measured grid one
throw-away run per restart kind compiles every shape (the arms then share the compiled
functions); epochs are reported as a load-independent measure. The machine may be
shared: seconds are noisy, and the arms are interleaved (seed-major) so load hits
them alike.

Outputs (``--out``, default ``benchmarks/results/start_modes/``): ``start_modes.png``
(accuracy and training seconds per round, one row per setting), ``start_modes.json``,
the run directories (``<setting>/<arm>/seed<k>``, resumable) and a printed table.

    python benchmarks/start_modes.py --quick     # digits, 2 seeds, 3 rounds (~1-2 min)
    python benchmarks/start_modes.py             # both settings, 10 seeds (~5-10 min on 2 idle cores)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Any, Mapping, Sequence

import numpy as np

from jaxal.experiment import records as ev
from jaxal.experiment.config import ExperimentConfig
from jaxal.experiment.grid import plan, run_grid, run_status
from jaxal.experiment.loop import run
from jaxal.training.train import TrainConfig

DEFAULT_OUT = os.path.join("benchmarks", "results", "start_modes")
SIGMA = 0.01
ARMS: dict[str, dict[str, Any]] = {
    "cold": {"start": "cold"},
    "warm": {"start": "warm"},
    **{f"sp-{lam}": {"start": "shrink_perturb", "lam": lam, "sigma": SIGMA, "noise": "init"} for lam in (0.3, 0.6, 0.9)},
}
SETTINGS: dict[str, ExperimentConfig] = {
    "digits-mlp": ExperimentConfig(dataset="digits", model="mlp", model_options={"widths": (128,)}, strategy="random",
                                   initial_size=20, budget=20, rounds=10,
                                   train=TrainConfig(max_epochs=100, batch_size=32)),
    "mnist1d-mlp": ExperimentConfig(dataset="mnist1d", model="mlp", model_options={"widths": (128, 128)},
                                    strategy="random", initial_size=50, budget=50, rounds=10,
                                    train=TrainConfig(max_epochs=100, batch_size=32)),
}
TITLES = {"digits-mlp": "digits / MLP", "mnist1d-mlp": "MNIST-1D / MLP"}


def arm_config(base: ExperimentConfig, arm: str, seed: int) -> ExperimentConfig:
    """``base`` with the restart of ``arm`` and the seed."""
    return dataclasses.replace(base, seed=seed, **ARMS[arm])


def warm_up(base: ExperimentConfig) -> None:
    """Compile every shape the grid uses (one cold and one shrink-and-perturb run on a
    throw-away seed, in a temporary directory), so measured seconds exclude compilation."""
    with tempfile.TemporaryDirectory() as tmp:
        for arm in ("cold", "sp-0.6"):
            run(arm_config(base, arm, 10_000), os.path.join(tmp, arm), progress=False)


def summarise(runs: ev.Runs, reference: str = "cold") -> dict[str, Any]:
    """Per arm: per-round means (accuracy with 95% CI, train seconds, epochs), AUBC with
    the paired test against ``reference``, and mean train seconds per round (rounds >= 1)
    with its ratio to the reference's."""
    acc = ev.to_curves(runs, "test_accuracy")
    secs = ev.to_curves(runs, "train_seconds")
    epochs = ev.to_curves(runs, "train_epochs")
    rows, budgets = ev.aubc_rows(acc, reference=reference)
    first = budgets[0]

    def per_round_mean(curves):
        return {label: ev.curve_ci(c) for label, c in curves.items()}

    acc_c, sec_c, ep_c = per_round_mean(acc), per_round_mean(secs), per_round_mean(epochs)
    mean_secs = {lab: float(np.mean([v for n, v in zip(*sec_c[lab][:2]) if n > first])) for lab in runs}
    out = {}
    for r in rows:
        lab = r.label
        out[lab] = {
            "aubc": r.aubc, "aubc_ci95": r.aubc_ci, "diff_vs_cold": r.diff, "diff_ci95": r.diff_ci,
            "pvalue_vs_cold": r.pvalue, "seeds": r.seeds,
            "train_seconds_per_round": mean_secs[lab],
            "train_seconds_ratio_to_cold": mean_secs[lab] / mean_secs[reference] if reference in mean_secs else None,
            "epochs_per_round": float(np.mean([v for n, v in zip(*ep_c[lab][:2]) if n > first])),
            "n_labeled": acc_c[lab][0].tolist(),
            "accuracy": acc_c[lab][1].tolist(), "accuracy_ci95": acc_c[lab][2].tolist(),
            "train_seconds": sec_c[lab][1].tolist(), "train_seconds_ci95": sec_c[lab][2].tolist(),
            "train_epochs": ep_c[lab][1].tolist(),
        }
    return out


def plot(results: Mapping[str, Mapping[str, Any]], path: str) -> str:
    """One row per setting: accuracy (95% CI), training seconds and epochs per round, one line per arm."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14.0, 3.6 * len(results)), dpi=120)
    FigureCanvasAgg(fig)
    colours = dict(zip(ARMS, ["black", "tab:red", "tab:blue", "tab:green", "tab:purple"]))
    for i, (name, arms) in enumerate(results.items()):
        ax_acc = fig.add_subplot(len(results), 3, 3 * i + 1)
        ax_sec = fig.add_subplot(len(results), 3, 3 * i + 2)
        ax_ep = fig.add_subplot(len(results), 3, 3 * i + 3)
        for arm in ARMS:
            if arm not in arms:
                continue
            a = arms[arm]
            n = np.asarray(a["n_labeled"])
            mean, half = np.asarray(a["accuracy"]), np.asarray(a["accuracy_ci95"])
            ax_acc.plot(n, mean, marker="o", markersize=2.5, color=colours[arm], label=arm)
            ax_acc.fill_between(n, mean - half, mean + half, color=colours[arm], alpha=0.12, linewidth=0)
            s, sh = np.asarray(a["train_seconds"]), np.asarray(a["train_seconds_ci95"])
            ax_sec.plot(n[1:], s[1:], marker="o", markersize=2.5, color=colours[arm],
                        label=f"{arm} ({a['epochs_per_round']:.0f} ep./round)")
            ax_sec.fill_between(n[1:], (s - sh)[1:], (s + sh)[1:], color=colours[arm], alpha=0.12, linewidth=0)
            ax_ep.plot(n[1:], np.asarray(a["train_epochs"])[1:], marker="o", markersize=2.5, color=colours[arm],
                       label=arm)
        title = TITLES.get(name, name)
        ax_acc.set_title(f"{title}: test accuracy (95% CI)", fontsize="medium")
        ax_sec.set_title(f"{title}: training seconds per round (95% CI)", fontsize="medium")
        ax_ep.set_title(f"{title}: training epochs per round", fontsize="medium")
        for ax in (ax_acc, ax_sec, ax_ep):
            ax.set_xlabel("labeled examples")
            ax.grid(alpha=0.3)
        ax_acc.legend(loc="lower right", fontsize="x-small")
        ax_sec.legend(loc="best", fontsize="x-small")
        ax_ep.legend(loc="best", fontsize="x-small")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return path


def table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: per setting and arm, AUBC, Δ vs cold with p, seconds and epochs per round."""
    lines = ["| setting | start | AUBC | Δ AUBC vs cold (p) | train s / round | × cold | epochs / round |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, arms in results.items():
        for arm in ARMS:
            if arm not in arms:
                continue
            a = arms[arm]
            d = "–" if arm == "cold" else f"{a['diff_vs_cold']:+.3f} (p={a['pvalue_vs_cold']:.3f})"
            ratio = a["train_seconds_ratio_to_cold"]
            lines.append(f"| {TITLES.get(name, name)} | {arm} | {a['aubc']:.3f} ± {a['aubc_ci95']:.3f} | {d} | "
                         f"{a['train_seconds_per_round']:.2f} | {ratio:.2f} | {a['epochs_per_round']:.1f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="digits only, 2 seeds, 3 rounds")
    ap.add_argument("--out", default=None, help=f"output directory (default: {DEFAULT_OUT}, quick: .../quick)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 10, quick 2)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    out = args.out or (os.path.join(DEFAULT_OUT, "quick") if args.quick else DEFAULT_OUT)
    seeds = args.seeds or (2 if args.quick else 10)
    settings = {"digits-mlp": dataclasses.replace(SETTINGS["digits-mlp"], rounds=3)} if args.quick else SETTINGS
    progress = not args.quiet and sys.stdout.isatty()
    print(f"start_modes: {len(settings)} settings x {len(ARMS)} arms x {seeds} seeds; output {out}", flush=True)
    results, seconds = {}, {}
    for name, base in settings.items():
        t0 = time.perf_counter()
        configs = [arm_config(base, arm, k) for k in range(seeds) for arm in ARMS]
        labels = [arm for _ in range(seeds) for arm in ARMS]
        if any(run_status(c) != "done" for c in plan(configs, os.path.join(out, name), labels)):
            warm_up(base)
            print(f"[{name}] compiled in {time.perf_counter() - t0:.0f} s", flush=True)
        runs = run_grid(configs, os.path.join(out, name), labels=labels, progress=progress)
        results[name] = summarise(runs)
        seconds[name] = time.perf_counter() - t0
        print(f"[{name}] done in {seconds[name]:.0f} s", flush=True)
    png = plot(results, os.path.join(out, "start_modes.png"))
    payload = {
        "mode": "quick" if args.quick else "full", "seeds": seeds, "sigma": SIGMA, "noise": "init",
        "arms": ARMS, "settings": {n: s.to_dict() for n, s in settings.items()}, "seconds": seconds,
        "results": results,
    }
    with open(os.path.join(out, "start_modes.json"), "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, default=float)
    print("\n" + table(results) + "\n", flush=True)
    print(f"plot: {png}\njson: {os.path.join(out, 'start_modes.json')}", flush=True)
    return payload


if __name__ == "__main__":
    main()
