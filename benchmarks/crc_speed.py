"""CRC scoring: dual ((d+1)-sized) vs primal ((|L|+G)-sized) eigenproblems.

Scores ``B`` random groups of ``G`` candidates against a labeled set of ``|L|`` points
with the last-layer trace kernel of a Dense head (``K = C·ΦΦᵀ``, ``φ = [h, 1]``),
through the public :func:`jaxal.strategies.crc.group_scores` (features -> scores),
once with ``method="dual"`` and once with ``method="primal"``. Features are random
(``h ~ N(0, I_d)``); the identity body makes ``embed`` free.

Reports the median of ``--repeats`` timed runs after one compile run, the speed-up, and
the largest relative score differences: dual vs primal (both float32), and each
against a float64 reference (the dual in float64; the primal and dual positive spectra
agree exactly in exact arithmetic).

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

from jaxal.model import from_functions
from jaxal.strategies.crc import group_scores, random_groups


def make_problem(n_labeled: int, group_size: int, num_groups: int, d: int, num_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x_l = rng.standard_normal((n_labeled, d)).astype(np.float32)
    x_pool = rng.standard_normal((group_size * num_groups, d)).astype(np.float32)
    head = {"kernel": jnp.asarray(rng.standard_normal((d, num_classes)), jnp.float32), "bias": jnp.zeros(num_classes)}
    model = from_functions(lambda p, x: x, lambda p, h: h @ p["kernel"] + p["bias"], {"body": {}, "head": head}, dense_head=True)
    groups = random_groups(jax.random.PRNGKey(seed), x_pool.shape[0], group_size)
    return model, x_l, x_pool, groups


def time_methods(methods, model, x_l, x_pool, groups, num_classes: int, repeats: int):
    """Compile run for each method, then ``repeats`` rounds timing the methods in turn.

    Interleaving keeps a changing machine load from favouring one side. Returns the
    scores, wall-clock runs and process CPU-time runs per method.
    """
    def run(method):
        s, _ = group_scores(model, x_l, x_pool, groups, num_classes=num_classes, method=method)
        return jax.block_until_ready(s)

    scores = {m: np.asarray(run(m), np.float64) for m in methods}  # compile runs
    wall = {m: [] for m in methods}
    cpu = {m: [] for m in methods}
    for _ in range(repeats):
        for m in methods:
            t0, c0 = time.perf_counter(), time.process_time()
            run(m)
            wall[m].append(time.perf_counter() - t0)
            cpu[m].append(time.process_time() - c0)
    return scores, wall, cpu


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
    print(f"dual speed-up (wall): {res['crc_dual_speedup']:.1f}x   max rel diff dual vs primal (f32): "
          f"{res['crc_score_rel_diff']:.2e}   same best group: {res['same_top_group']}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
