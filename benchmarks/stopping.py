"""When would each stopping rule have stopped? Long runs on digits and MNIST-1D, evaluated offline.

Every round record carries the stopping signals (:mod:`jaxal.experiment.signals`), so one
set of long runs evaluates every rule of :mod:`jaxal.stopping` after the fact: for each
rule and strategy, the labels used at the stop and the test accuracy there, against the
accuracy at the full budget. A rule is useful when it stops well before the budget
while losing little accuracy; one that never fires, or fires after a round or two, is
reported as such.

Settings (one comparison grid each, written to ``OUT/<setting>/``):

- ``digits-mlp``: digits (1,347 train / 450 test), MLP 128; 20 initial labels, 20 per
  round, 40 rounds (20 -> 820 labels); random, entropy, MLMOC (its signal: the largest
  predicted output change), MLMOC under the look-ahead protocol (``mlmoc-la``), CRC
  (λ⁺min of the chosen group).
- ``mnist1d-mlp``: MNIST-1D (4,000 / 1,000), MLP 128-128; 50 initial, 50 per round,
  30 rounds (50 -> 1,550 labels); random, entropy, MLMOC, ``mlmoc-la``.

Standard protocol (cold start, cross-entropy, Adam 1e-3, batch 32, until 99% training
accuracy, cap 100 epochs) except the ``-la`` arms (the look-ahead protocol: zero head,
warm start, squared loss to a residual of 0.01); 500 random candidates per round. Rules are checked with their defaults and a
looser variant of each (see ``RULES``).

    python benchmarks/stopping.py --quick      # ~2 min: digits, random/entropy, 2 seeds, 6 rounds
    python benchmarks/stopping.py              # full: both settings, 5 seeds (~1 h on 2 CPU cores)

Runs resume: started again with the same arguments, finished runs are skipped. Results:
``OUT/stopping.json``, ``OUT/stopping.md`` (the README's table) and ``OUT/stopping.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxal import stopping
from jaxal.experiment import protocols
from jaxal.experiment.config import ExperimentConfig
from jaxal.experiment.grid import run_grid
from jaxal.training.train import TrainConfig

DEFAULT_OUT = os.path.join("benchmarks", "results", "stopping")
LOOKAHEAD_SUFFIX = "-la"  # an arm under the look-ahead protocol (what MLMOC's output changes model)
RULES = ("kappa:0.99:3", "kappa:0.95:2", "uncertainty:0.05", "uncertainty:0.2", "change:0.005", "change:0.02",
         "output_change:0.1", "output_change:0.5", "plateau:0.05:3", "plateau:0.1:3")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One long comparison: data set, model, design, strategies."""

    name: str
    title: str
    dataset: str
    widths: tuple[int, ...]
    initial: int
    budget: int
    rounds: int
    strategies: tuple[str, ...]
    candidates: int = 500
    epochs: int = 100

    def config(self, arm: str, seed: int) -> ExperimentConfig:
        """``NAME`` under the standard protocol, ``NAME-la`` under the look-ahead protocol."""
        strategy = arm.removesuffix(LOOKAHEAD_SUFFIX)
        options = {"group_size": 10} if strategy == "crc" else {}
        config = ExperimentConfig(
            dataset=self.dataset, model="mlp", model_options={"widths": self.widths}, strategy=strategy,
            strategy_options=options, initial_size=self.initial, budget=self.budget, rounds=self.rounds, seed=seed,
            start="cold", train=TrainConfig(max_epochs=self.epochs, batch_size=32), candidates=self.candidates,
            label=arm if arm != strategy else None,
        )
        if arm != strategy:
            config = protocols.apply(config, "lookahead", keep=["candidates"], keep_train=["batch_size"])
        return config


SETTINGS = {
    "digits-mlp": Setting("digits-mlp", "digits / MLP 128", "digits", (128,), 20, 20, 40,
                          ("random", "entropy", "mlmoc", "mlmoc-la", "crc")),
    "mnist1d-mlp": Setting("mnist1d-mlp", "MNIST-1D / MLP 128-128", "mnist1d", (128, 128), 50, 50, 30,
                           ("random", "entropy", "mlmoc", "mlmoc-la")),
}


def quick_setting() -> Setting:
    return dataclasses.replace(SETTINGS["digits-mlp"], rounds=6, strategies=("random", "entropy"), candidates=200,
                               epochs=30)


def _row(s: stopping.StopSummary) -> dict[str, Any]:
    d = s._asdict()
    d["verdict"] = s.verdict
    d["accuracy_lost"] = s.final_accuracy - s.accuracy_at_stop if s.applicable else None
    d["labels_saved"] = 1.0 - s.labels_at_stop / s.final_labels if s.applicable else None
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def table(rows: Sequence[Mapping[str, Any]], setting: Setting) -> str:
    """Markdown: one line per (strategy, applicable rule)."""
    lines = [f"**{setting.title}** ({setting.initial} → {setting.initial + setting.budget * setting.rounds} labels)",
             "", "| strategy | rule | verdict | labels at stop | saved | accuracy at stop | at full budget | lost |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if not r["applicable"]:
            continue
        lines.append(f"| {r['label']} | `{r['rule']}` | {r['verdict']} | {r['labels_at_stop']:.0f} | "
                     f"{100 * r['labels_saved']:.0f}% | {r['accuracy_at_stop']:.3f} | {r['final_accuracy']:.3f} | "
                     f"{r['accuracy_lost']:+.3f} |")
    return "\n".join(lines)


def plot(results: Mapping[str, Any], path: str) -> str:
    """Per setting: each rule's (labels at stop, accuracy at stop) per strategy, over the mean learning curve."""
    fig = Figure(figsize=(6.0 * len(results), 4.6), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    markers = dict(zip(sorted({r.split(":")[0] for r in RULES}), "osD^vP"))
    for ax, (name, res) in zip(axes, results.items()):
        colours = {}
        for label, curve in res["curves"].items():
            line, = ax.plot(curve["labels"], curve["accuracy"], "-", alpha=0.6, label=label)
            colours[label] = line.get_color()
        for r in res["rows"]:
            if r["applicable"] and r["stopped"]:
                ax.plot(r["labels_at_stop"], r["accuracy_at_stop"], markers[r["rule"].split(":")[0]],
                        color=colours[r["label"]], markersize=6, markerfacecolor="none")
        for rule, m in markers.items():
            ax.plot([], [], m, color="grey", markerfacecolor="none", label=rule)
        ax.set_title(res["title"], fontsize=10)
        ax.set_xlabel("labels")
        ax.set_ylabel("test accuracy (mean over seeds)")
        ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.suptitle("where each stopping rule stops (markers: mean labels and accuracy at the stop)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    return path


def run_setting(setting: Setting, seeds: int, out: str, progress: bool) -> dict[str, Any]:
    configs = [setting.config(s, k) for k in range(seeds) for s in setting.strategies]
    t0 = time.perf_counter()
    runs = run_grid(configs, os.path.join(out, setting.name), progress=progress)
    rows = [_row(s) for s in stopping.summarize(runs, RULES)]
    curves = {}
    for label, by_seed in runs.items():
        n = [r["n_labeled"] for r in next(iter(by_seed.values()))]
        acc = np.mean([[r["test_accuracy"] for r in recs] for recs in by_seed.values()], axis=0)
        curves[label] = {"labels": n, "accuracy": [float(a) for a in acc]}
    return {"title": setting.title, "seeds": seeds, "design": dataclasses.asdict(setting), "rows": rows,
            "curves": curves, "seconds": time.perf_counter() - t0}


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="digits, random/entropy, 2 seeds, 6 rounds")
    ap.add_argument("--out", default=None, help=f"output directory (default: {DEFAULT_OUT}; quick: .../quick)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds (default: 5; quick: 2)")
    ap.add_argument("--settings", default=None, help=f"comma-separated subset of {','.join(SETTINGS)}")
    ap.add_argument("--json", default=None, help="also write the results JSON here")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    out = args.out or (os.path.join(DEFAULT_OUT, "quick") if args.quick else DEFAULT_OUT)
    seeds = args.seeds or (2 if args.quick else 5)
    if args.quick:
        settings = {"digits-mlp": quick_setting()}
    else:
        names = args.settings.split(",") if args.settings else list(SETTINGS)
        unknown = [n for n in names if n not in SETTINGS]
        if unknown:
            ap.error(f"unknown settings {unknown}; valid: {', '.join(SETTINGS)}")
        settings = {n: SETTINGS[n] for n in names}
    os.makedirs(out, exist_ok=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    results = {}
    for name, setting in settings.items():
        print(f"{name}: {len(setting.strategies)} strategies x {seeds} seeds x {setting.rounds + 1} rounds", flush=True)
        results[name] = run_setting(setting, seeds, out, progress=not args.quiet)
    doc = {"rules": list(RULES), "load_average_start": load, "settings": results}
    md = "\n\n".join(table(res["rows"], settings[name]) for name, res in results.items())
    with open(os.path.join(out, "stopping.md"), "w", encoding="utf-8") as f:
        f.write(md + "\n")
    for path in [os.path.join(out, "stopping.json")] + ([args.json] if args.json else []):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
    plot(results, os.path.join(out, "stopping.png"))
    print(md)
    return doc


if __name__ == "__main__":
    main()
