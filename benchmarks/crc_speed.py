"""CRC scoring: dual ((d+1)-sized) vs primal ((|L|+G)-sized) eigenproblems, and what
the scores look like on a trained network's low-rank features.

Part 1 (speed). Scores ``B`` random groups of ``G`` candidates against a labeled set of
``|L|`` points with the last-layer trace kernel of a Dense head (``K = C·ΦΦᵀ``,
``φ = [h, 1]``), through the public :func:`jaxal.strategies.crc.group_scores`, once
with ``method="dual"`` and once with ``method="primal"`` (both diagonalise in float64
on the host). Features are random (``h ~ N(0, I_d)``, full rank); the identity body
makes ``embed`` free. Reports the median of ``--repeats`` timed runs after one warm-up
run, the speed-up, and the largest relative score differences: dual vs primal, and
each against a network evaluated in float64.

Part 2 (trained features). Trains a digits MLP briefly and, for several ``|L|``, scores
random groups of 5 (4 kept): the features' rank over all points, the shared rank ``k``,
the per-group rank range, how many groups score 0 and how many distinct scores there
are; and, for contrast, how many groups would score 0 if ``k`` were
``min(|L|+G, rank over L ∪ the whole pool)`` (one global rank) under a float32 Gram's
zero rule ``eps·max(n, p)``.

    python benchmarks/crc_speed.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxal import data, models
from jaxal.model import from_functions
from jaxal.ntk import head_features
from jaxal.ops.spectral import (
    default_rtol,
    dual_spectra,
    feature_rtol,
    kth_largest,
    numerical_rank,
    scores_from_spectra,
)
from jaxal.strategies.crc import group_scores, random_groups
from jaxal.training import train


def make_problem(n_labeled: int, group_size: int, num_groups: int, d: int, num_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x_l = rng.standard_normal((n_labeled, d)).astype(np.float32)
    x_pool = rng.standard_normal((group_size * num_groups, d)).astype(np.float32)
    head = {"kernel": jnp.asarray(rng.standard_normal((d, num_classes)), jnp.float32), "bias": jnp.zeros(num_classes)}
    model = from_functions(lambda p, x: x, lambda p, h: h @ p["kernel"] + p["bias"], {"body": {}, "head": head}, dense_head=True)
    groups = random_groups(jax.random.PRNGKey(seed), x_pool.shape[0], group_size)
    return model, x_l, x_pool, groups


def time_methods(methods, model, x_l, x_pool, groups, num_classes: int, repeats: int):
    """A warm-up run for each method, then ``repeats`` rounds timing the methods in turn.

    Interleaving keeps a changing machine load from favouring one side. Returns the
    scores, wall-clock runs and process CPU-time runs per method.
    """
    def run(method):
        s, _ = group_scores(model, x_l, x_pool, groups, num_classes=num_classes, method=method)
        return s

    scores = {m: np.asarray(run(m), np.float64) for m in methods}  # warm-up runs (feature compile)
    wall = {m: [] for m in methods}
    cpu = {m: [] for m in methods}
    for _ in range(repeats):
        for m in methods:
            t0, c0 = time.perf_counter(), time.process_time()
            run(m)
            wall[m].append(time.perf_counter() - t0)
            cpu[m].append(time.process_time() - c0)
    return scores, wall, cpu


def trained_report(quick: bool, num_classes: int = 10, group_size: int = 5, keep: int = 4) -> list[dict]:
    """Group scores on a briefly trained digits MLP at several labeled-set sizes."""
    ds = data.load("digits", seed=0)
    width, sizes, epochs, num_groups = (256, (40, 300), 3, 30) if quick else (512, (40, 500, 1000), 20, 100)
    module = models.create("mlp", num_classes, input_shape=ds.x_train.shape[1:], widths=(width,))
    variables = train.init_variables(jax.random.key(0), module, ds.x_train[:1])
    res = train.train(jax.random.key(1), module, variables, ds.x_train[:300], ds.y_train[:300], num_classes,
                      train.TrainConfig(max_epochs=epochs))
    model = models.as_model(module, res.variables)
    phi_all = np.asarray(head_features(model, ds.x_train), np.float64)
    rows = []
    for n_l in sizes:
        perm = np.asarray(jax.random.permutation(jax.random.key(n_l), ds.x_train.shape[0]))
        lab, pool = perm[:n_l], perm[n_l:]
        groups = random_groups(jax.random.key(n_l + 1), pool.shape[0], group_size, num_groups)
        scores, info = group_scores(model, ds.x_train[lab], ds.x_train[pool], groups, num_classes=num_classes,
                                    num_selected=keep)
        n, p = n_l + group_size, phi_all.shape[1]
        phi_l, phi_g = phi_all[lab], phi_all[pool][groups]
        spectra = dual_spectra(phi_l.T @ phi_l, phi_g, scale=num_classes)
        tol = feature_rtol(np.float32, n, p)
        check, _, _ = scores_from_spectra(spectra, tol, "generic", keep)
        old_tol = default_rtol(np.float32, n, p)
        rank_pool = numerical_rank(phi_all[perm].T @ phi_all[perm], old_tol)
        old = kth_largest(spectra, min(n, rank_pool), old_tol)
        rows.append({
            "n_labeled": n_l, "p": p, "num_groups": int(groups.shape[0]), "method": info["method"],
            "feature_rank_all_points": numerical_rank(phi_all.T @ phi_all,
                                                      feature_rtol(np.float32, phi_all.shape[0], p)),
            "k": info["rank"], "rank_min": info["rank_min"], "rank_max": info["rank_max"],
            "zero_groups": info["zero_groups"], "distinct_scores": int(np.unique(scores).size),
            "all_equal": bool(np.all(scores == scores[0])),
            "spectra_check_rel": float(np.max(np.abs(check - scores)) / max(float(np.max(scores)), 1e-300)),
            "global_rank_f32_rule": int(min(n, rank_pool)), "global_rank_f32_rule_zero_groups": int(np.sum(old == 0)),
        })
    return rows


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), np.finfo(np.float64).tiny)))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized problem (seconds)")
    ap.add_argument("--json", metavar="PATH", help="write results as JSON")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if args.quick:
        cfg = dict(n_labeled=200, group_size=10, num_groups=40, d=32, num_classes=10)
    else:
        cfg = dict(n_labeled=1000, group_size=20, num_groups=300, d=128, num_classes=10)
    model, x_l, x_pool, groups = make_problem(**cfg)
    c = cfg["num_classes"]

    scores, wall, cpu = time_methods(("dual", "primal"), model, x_l, x_pool, groups, c, args.repeats)
    s_dual, s_primal = scores["dual"], scores["primal"]
    t_dual, t_primal = statistics.median(wall["dual"]), statistics.median(wall["primal"])
    all_dual, all_primal = wall["dual"], wall["primal"]
    cpu_dual, cpu_primal = statistics.median(cpu["dual"]), statistics.median(cpu["primal"])
    with jax.enable_x64(True):
        s_ref, _ = group_scores(model, x_l, x_pool, groups, num_classes=c, method="dual", dtype=jnp.float64)
        s_ref = np.asarray(s_ref, np.float64)

    res = {
        "config": cfg,
        "n": cfg["n_labeled"] + cfg["group_size"],
        "p": cfg["d"] + 1,
        "dual_seconds": t_dual,
        "primal_seconds": t_primal,
        "dual_runs": all_dual,
        "primal_runs": all_primal,
        "dual_cpu_seconds": cpu_dual,
        "primal_cpu_seconds": cpu_primal,
        "crc_dual_speedup": t_primal / t_dual,
        "crc_dual_speedup_cpu_time": cpu_primal / cpu_dual,
        "crc_score_rel_diff": max_rel(s_dual, s_primal),
        "dual_f32_vs_f64_rel": max_rel(s_dual, s_ref),
        "primal_f32_vs_f64_rel": max_rel(s_primal, s_ref),
        "same_top_group": bool(np.argmax(s_dual) == np.argmax(s_primal)),
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    n, p, b = res["n"], res["p"], cfg["num_groups"]
    print(f"CRC scoring, {b} groups of {cfg['group_size']}, |L|={cfg['n_labeled']}, d={cfg['d']}, C={c}"
          f"  [{res['backend']}, {res['cpu_count']} cpus, load {res['load_average'][0]:.1f}]")
    print(f"{'method':<8}{'eigproblem':>12}{'median s':>11}{'runs (s)':>28}{'max rel err vs f64':>21}")
    print(f"{'dual':<8}{f'{p}x{p}':>12}{t_dual:>11.4f}{' '.join(f'{t:.3f}' for t in all_dual):>28}"
          f"{res['dual_f32_vs_f64_rel']:>21.2e}")
    print(f"{'primal':<8}{f'{n}x{n}':>12}{t_primal:>11.4f}{' '.join(f'{t:.3f}' for t in all_primal):>28}"
          f"{res['primal_f32_vs_f64_rel']:>21.2e}")
    print(f"process CPU seconds (median): dual {cpu_dual:.4f}, primal {cpu_primal:.4f} "
          f"-> {res['crc_dual_speedup_cpu_time']:.1f}x")
    print(f"dual speed-up (wall): {res['crc_dual_speedup']:.1f}x   max rel diff dual vs primal: "
          f"{res['crc_score_rel_diff']:.2e}   same best group: {res['same_top_group']}")
    res["trained"] = trained_report(args.quick)
    res["trained_any_all_equal"] = any(r["all_equal"] for r in res["trained"])
    res["trained_any_all_zero"] = any(r["zero_groups"] == r["num_groups"] for r in res["trained"])
    print("trained digits MLP, groups of 5 (4 kept): per-group ranks vs one global rank")
    print(f"{'|L|':>6}{'p':>5}{'rank(all)':>10}{'k':>6}{'group ranks':>13}{'zero':>6}{'distinct':>9}{'groups':>7}"
          f"{'global k (f32 rule)':>21}{'zero':>6}")
    for r in res["trained"]:
        print(f"{r['n_labeled']:>6}{r['p']:>5}{r['feature_rank_all_points']:>10}{r['k']:>6}"
              f"{str(r['rank_min']) + '-' + str(r['rank_max']):>13}{r['zero_groups']:>6}{r['distinct_scores']:>9}"
              f"{r['num_groups']:>7}{r['global_rank_f32_rule']:>21}{r['global_rank_f32_rule_zero_groups']:>6}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
