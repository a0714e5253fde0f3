"""Greedy BatchBALD speed: jaxal's compiled loop vs the same algorithm written naively in NumPy.

Both pick ``B`` points from ``N`` candidates given ``K`` sampled probability vectors over
``C`` classes (random: each point's mean prediction ~ Dirichlet(1), each sample ~
Dirichlet(``--concentration`` × mean), float32, from ``--seed``). The algorithm is the one
of :func:`jaxal.ops.batchbald.batchbald`: label configurations of the picked points kept
as per-sample posteriors and ``log p(config)``, enumerated while ``C^m ≤ exact_limit``,
then ``M`` configurations drawn by inverse CDF from the same host uniforms
(``host_rng(key)``), so both sides draw the same configurations and their picks can be
compared. The NumPy twin scores one candidate at a time in a Python loop (a ``[J, K] @
[K, C]`` product and an entropy each), its buffer growing as configurations do.

Timing: the first jaxal call (compile + run) is reported apart; then ``--repeats`` rounds
run jaxal and NumPy in turn (interleaved, so a changing machine load favours neither)
and the minimum of each is kept. The load average is read before and after.

    python benchmarks/batchbald_speed.py            # B=20, N=1,000, K=50, C=10; M = 10,000, 1,000, 100
    python benchmarks/batchbald_speed.py --quick    # a CI-sized case (seconds)

Writes ``--json`` (default ``benchmarks/results/batchbald_speed.json``; none with ``--quick``
unless given).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from jaxal.ops.batchbald import batchbald
from jaxal.ops.random import host_rng

DEFAULT_JSON = os.path.join("benchmarks", "results", "batchbald_speed.json")
FULL = {"batch": 20, "pool": 1_000, "samples": 50, "classes": 10, "repeats": 3}
FULL_CONFIGURATIONS = (10_000, 1_000, 100)  # the library's default M first: the headline figure
QUICK = {"batch": 5, "pool": 100, "samples": 10, "classes": 4, "repeats": 2}
QUICK_CONFIGURATIONS = (200,)


def make_probs(k: int, n: int, c: int, concentration: float, seed: int) -> np.ndarray:
    """``[K, N, C]`` float32: per point a mean ~ Dirichlet(1), per sample ~ Dirichlet(concentration · mean)."""
    rng = np.random.default_rng(seed)
    mean = rng.dirichlet(np.ones(c), size=n)
    p = np.stack([[rng.dirichlet(concentration * m + 1e-3) for m in mean] for _ in range(k)])
    return p.astype(np.float32)


def _entropy(p: np.ndarray) -> np.ndarray:
    return -np.sum(p * np.log(np.where(p > 0, p, 1.0)), axis=-1)


def naive_batchbald_numpy(probs: np.ndarray, batch: int, uniforms: np.ndarray, exact_limit: int) -> tuple[list, list]:
    """Greedy BatchBALD with a Python loop over candidates (the reference, not the library).

    ``uniforms [batch, 2, M]``: pick ``i`` draws configurations with ``uniforms[i, 0]`` (from
    the enumeration, once) and extends them with ``uniforms[i, 1]``. Returns the picks and
    the joint MI after each."""
    k, n, c = probs.shape
    m = uniforms.shape[2]
    cond = _entropy(probs).mean(0)
    post = np.full((k, 1), 1.0 / k, probs.dtype)  # p(θ_k | configuration), one column per configuration
    logp = np.zeros(1, probs.dtype)
    exact, picked, joint_mi, cond_sum = True, [], [], 0.0
    for i in range(batch):
        w = np.exp(logp) if exact else np.full(logp.shape, 1.0 / logp.shape[0], probs.dtype)
        h_a = float(np.sum(-w * logp))
        best, best_gain = -1, -np.inf
        for x in range(n):
            if x in picked:
                continue
            r = post.T @ probs[:, x, :]  # p(y_x | configuration) [J, C]
            gain = float(w @ _entropy(r)) - cond[x]
            if gain > best_gain:
                best, best_gain = x, gain
        picked.append(best)
        cond_sum += cond[best]
        joint_mi.append(h_a + best_gain + cond[best] - cond_sum)
        px = probs[:, best, :]
        if exact and logp.shape[0] * c <= exact_limit:
            joint = post[:, :, None] * px[:, None, :]
            r = joint.sum(0)
            post = (joint / r).reshape(k, -1)
            logp = (logp[:, None] + np.log(r)).reshape(-1)
            continue
        if exact:  # leave the enumeration: M configurations drawn from p(j)
            cdf = np.cumsum(np.exp(logp))
            idx = np.minimum(np.searchsorted(cdf, uniforms[i, 0] * cdf[-1], side="right"), logp.shape[0] - 1)
            post, logp, exact = post[:, idx], logp[idx], False
        r = post.T @ px  # [M, C]
        cdf = np.cumsum(r, axis=1)
        cls = np.minimum((cdf <= (uniforms[i, 1] * cdf[:, -1])[:, None]).sum(1), c - 1)
        rc = r[np.arange(m), cls]
        post = post * px[:, cls] / rc
        logp = logp + np.log(rc)
    return picked, joint_mi


def run(cfg: dict, concentration: float, seed: int) -> dict:
    k, n, c, b, m = cfg["samples"], cfg["pool"], cfg["classes"], cfg["batch"], cfg["configurations"]
    probs = make_probs(k, n, c, concentration, seed)
    key = jax.random.key(seed)
    probs_dev = jax.device_put(probs)

    def jaxal_run():
        return batchbald(probs_dev, b, key, num_configurations=m)

    t0 = time.perf_counter()
    idx, info = jaxal_run()
    first = time.perf_counter() - t0
    # the very uniforms batchbald draws, row i for pick i ([batch, 2, M] whenever it draws at all)
    uniforms = host_rng(key).random((b, 2, m)).astype(probs.dtype)

    times = {"jaxal": [], "numpy": []}
    for _ in range(cfg["repeats"]):  # interleaved
        t0 = time.perf_counter()
        jaxal_run()
        times["jaxal"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref_idx, ref_mi = naive_batchbald_numpy(probs, b, uniforms, m)
        times["numpy"].append(time.perf_counter() - t0)
    agree = [int(a) == int(r) for a, r in zip(idx, ref_idx)]
    same = agree.index(False) if not all(agree) else b
    return {
        **cfg, "concentration": concentration, "seed": seed,
        "jaxal_first_call_s": first, "jaxal_s": min(times["jaxal"]), "numpy_s": min(times["numpy"]),
        "jaxal_runs_s": times["jaxal"], "numpy_runs_s": times["numpy"],
        "speedup": min(times["numpy"]) / min(times["jaxal"]),
        "picks_agree": all(agree), "picks_agreeing": int(sum(agree)),
        "first_disagreement": None if all(agree) else agree.index(False),
        "jaxal_picks": [int(v) for v in idx], "numpy_picks": [int(v) for v in ref_idx],
        # over the picks before the first disagreement (after it the two batches differ)
        "joint_mi_max_abs_diff": float(np.max(np.abs(np.asarray(info["joint_mi"]) - np.asarray(ref_mi))[:same]))
        if same else None,
        "jaxal_joint_mi": info["joint_mi"], "numpy_joint_mi": [float(v) for v in ref_mi],
        "picks_scored_exactly": int(sum(info["exact"])),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a CI-sized case (seconds)")
    ap.add_argument("--json", help=f"write the results here (default {DEFAULT_JSON}; none with --quick)")
    ap.add_argument("--configurations", type=int, nargs="+", help="the values of M, overriding the mode's")
    ap.add_argument("--repeats", type=int, help="timed rounds, overriding the mode's default")
    ap.add_argument("--concentration", type=float, default=20.0, help="how close the samples stay to the mean")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.repeats:
        cfg["repeats"] = args.repeats
    configurations = args.configurations or (QUICK_CONFIGURATIONS if args.quick else FULL_CONFIGURATIONS)
    load_before = os.getloadavg()
    print(f"device: {jax.devices()[0].device_kind}, cores: {os.cpu_count()}, load avg: {load_before}", flush=True)
    rows = []
    for m in configurations:
        load = os.getloadavg()
        row = {**run({**cfg, "configurations": m}, args.concentration, args.seed), "load_average_before": load,
               "load_average_after": os.getloadavg()}
        rows.append(row)
        print(f"B={cfg['batch']} N={cfg['pool']} K={cfg['samples']} C={cfg['classes']} M={m}: jaxal first call "
              f"(compile + run) {row['jaxal_first_call_s']:.3g}s, min {row['jaxal_s']:.3g}s; numpy min "
              f"{row['numpy_s']:.3g}s; speed-up {row['speedup']:.3g}x; picks agree: {row['picks_agree']} "
              f"({row['picks_agreeing']}/{cfg['batch']}); load avg {load} -> {row['load_average_after']}", flush=True)
    head = rows[0]
    result = {"batchbald_speedup_vs_numpy": head["speedup"], "picks_agree": head["picks_agree"],
              "jaxal_s": head["jaxal_s"], "numpy_s": head["numpy_s"], "jaxal_first_call_s": head["jaxal_first_call_s"],
              "cases": rows, "quick": args.quick, "device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
              "load_average_before_after": [load_before, os.getloadavg()]}
    path = args.json or (None if args.quick else DEFAULT_JSON)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
