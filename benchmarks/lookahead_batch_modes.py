"""Look-ahead batch modes: what a greedy batch costs and what it buys.

Two measurements on a trained network, per mode (``topk``: the paper's top-B scores;
``greedy``: condition on each pick's pseudo-label before the next; ``sequential``:
condition on the true label, the annotator-in-the-loop mode):

1. **Query seconds** of one whole acquisition through the strategy (kernel blocks on
   ``L ∪ S``, one Cholesky, scores / the compiled greedy loop, top-B), for |S| = 2,000
   and 3,700 on MNIST-1D with an MLP 512-512 trained on |L| = 100 (squared loss).
   Compilation is timed apart (the first call); run time is the minimum of ``--repeats``
   calls with fresh keys. Ratios are to top-k measured in the same process.
2. **Redundancy**: on digits with every training image present three times (two noisy
   copies, ``copies=3, copy_noise=0.05``), the fraction of each batch of 20 spent on a
   copy of a point already in the same batch, over ``--seeds`` trained networks.

    python benchmarks/lookahead_batch_modes.py --json benchmarks/results/lookahead_batch_modes.json
    python benchmarks/lookahead_batch_modes.py --quick          # |S| = 300 on the digits network below, 1 seed (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Sequence

import jax
import numpy as np

import jaxal
from jaxal import data, models
from jaxal.experiment import protocols
from jaxal.training.train import TrainConfig, init_variables, scale_head, train

MODES = ("topk", "greedy", "sequential")


def _trained(dataset: str, widths: tuple, n_labeled: int, seed: int, **data_options: Any):
    ds = data.load(dataset, seed=seed, **data_options)
    key = jax.random.key(seed)
    labeled = np.asarray(data.initial_indices(jax.random.fold_in(key, 1), ds.y_train, n_labeled))
    net = models.create("mlp", ds.num_classes, input_shape=ds.x_train.shape[1:], widths=widths)
    v0 = scale_head(init_variables(jax.random.fold_in(key, 2), net, ds.x_train[:1]),
                    protocols.settings("lookahead")["head_init_scale"])
    cfg = protocols.settings("lookahead")["train"] | {"max_epochs": 300}
    fit = train(jax.random.fold_in(key, 3), net, v0, ds.x_train[labeled], ds.y_train[labeled], ds.num_classes,
                TrainConfig(**cfg))
    return ds, models.as_model(net, fit.variables), labeled


def _query(mode: str, key, model, xl, yl, xp, budget: int, oracle=None):
    fn = jaxal.strategies.get("mlmoc")
    seq = jaxal.strategies.sequential_mode("mlmoc")
    ctx = jaxal.strategies.base.make_context(model, x_labeled=xl, y_labeled=yl, x_pool=xp)
    if mode == "sequential":
        return seq(key, ctx, budget, oracle).indices
    return fn(key, ctx, budget, batch=mode).indices


FULL_QUERY_SETTING = ("mnist1d", (512, 512), 100, {})
# quick: the network of the redundancy part's seed 0 (its 300 candidates are a pool of
# the same size), so the two parts share every compiled program
QUICK_QUERY_SETTING = ("digits", (512,), 40, {"copies": 3, "copy_noise": 0.05})


def query_seconds(sizes: Sequence[int], repeats: int, budget: int = 20,
                  setting: tuple = FULL_QUERY_SETTING) -> list[dict]:
    """Compile and run seconds per mode and pool size (one trained network)."""
    dataset, widths, n_labeled, data_options = setting
    ds, model, labeled = _trained(dataset, widths, n_labeled, seed=0, **data_options)
    pool = np.setdiff1d(np.arange(len(ds.y_train)), labeled)
    xl, yl = ds.x_train[labeled], ds.y_train[labeled]
    rows = []
    for size in sizes:
        xp, yp = ds.x_train[pool[:size]], ds.y_train[pool[:size]]
        times: dict[str, dict[str, float]] = {}
        for mode in MODES:
            oracle = (lambda i: int(yp[i])) if mode == "sequential" else None
            t0 = time.perf_counter()
            np.asarray(_query(mode, jax.random.key(0), model, xl, yl, xp, budget, oracle))
            first = time.perf_counter() - t0
            runs = []
            for r in range(repeats):
                t0 = time.perf_counter()
                np.asarray(_query(mode, jax.random.key(r + 1), model, xl, yl, xp, budget, oracle))
                runs.append(time.perf_counter() - t0)
            times[mode] = {"first_call_s": first, "run_s": min(runs)}
        row = {"pool": size, "budget": budget, "labeled": len(labeled), **{m: times[m] for m in MODES}}
        for m in MODES[1:]:
            row[f"{m}_over_topk"] = times[m]["run_s"] / times["topk"]["run_s"]
        rows.append(row)
        print(f"|S|={size}: " + ", ".join(f"{m} {times[m]['run_s']:.3f} s (first {times[m]['first_call_s']:.1f} s)"
                                          for m in MODES)
              + f"; greedy/topk {row['greedy_over_topk']:.2f}x", flush=True)
    return rows


def redundancy(seeds: int, candidates: int, budget: int = 20) -> dict:
    """Fraction of each batch that is a copy of another member of the same batch."""
    out: dict[str, list[float]] = {m: [] for m in MODES}
    for seed in range(seeds):
        ds, model, labeled = _trained("digits", (512,), 40, seed, copies=3, copy_noise=0.05)
        n = len(ds.y_train) // 3  # row j*n + i is a copy of example i
        rng = np.random.default_rng(seed)
        pool = rng.choice(np.setdiff1d(np.arange(len(ds.y_train)), labeled), candidates, replace=False)
        xl, yl, xp, yp = ds.x_train[labeled], ds.y_train[labeled], ds.x_train[pool], ds.y_train[pool]
        for mode in MODES:
            oracle = (lambda i: int(yp[i])) if mode == "sequential" else None
            picks = np.asarray(_query(mode, jax.random.key(seed), model, xl, yl, xp, budget, oracle))
            originals = pool[picks] % n
            out[mode].append(1.0 - len(set(originals.tolist())) / budget)
    return {m: {"mean": float(np.mean(v)), "per_seed": v} for m, v in out.items()}


def main(argv: Sequence[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    sizes = [300] if args.quick else [2000, 3700]
    repeats = 1 if args.quick else args.repeats
    seeds = 1 if args.quick else args.seeds
    result: dict[str, Any] = {"mode": "quick" if args.quick else "full", "load_average": os.getloadavg(),
                              "query": query_seconds(sizes, repeats, setting=QUICK_QUERY_SETTING if args.quick
                                                     else FULL_QUERY_SETTING)}
    result["redundancy"] = redundancy(seeds, 300 if args.quick else 1000)
    result["load_average_end"] = os.getloadavg()
    big = result["query"][-1]
    result["greedy_over_topk"] = big["greedy_over_topk"]
    result["duplicate_fraction"] = {m: v["mean"] for m, v in result["redundancy"].items()}
    print("redundancy (fraction of a batch of 20 that repeats a point of the same batch): "
          + ", ".join(f"{m} {v:.3f}" for m, v in result["duplicate_fraction"].items()), flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1, default=float)
    return result


if __name__ == "__main__":
    main()
