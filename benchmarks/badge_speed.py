"""BADGE k-means++ seeding speed: jaxal's fused factored loop vs NumPy and a materialised embedding.

Random factors stand in for a trained network (a = softmax(z) − e_argmax, h ~ N(0, 1)).
Compared, for B seeds over N points:

* ``jaxal f32`` / ``jaxal bf16``: :func:`jaxal.ops.kmeanspp._seed` on the factors
  (a [N, C], h [N, d]), bias block included — one ``lax.fori_loop``.
* ``numpy factorised``: the same factored distances written the way the official BADGE code
  seeds (running min distances, ``scipy.stats.rv_discrete`` draw each step).
* ``materialised``: jaxal's loop on the explicit N × C·(d+1) embedding (timed on a few steps and
  scaled to B; skipped when the matrix would exceed ``--max-materialised-gb``).
* ``floor``: B × one N×d float32 matrix-vector product (the faster of NumPy and jitted JAX):
  each seeding step must read h once.

Peak bytes: XLA's compiled memory analysis (arguments + temporaries + outputs) for jaxal,
``tracemalloc`` peak plus the inputs for NumPy. Usage::

    python benchmarks/badge_speed.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from jaxal.ops.kmeanspp import _seed, d2_probabilities

FULL_CASES = [(50_000, 10, 512, 1_000), (20_000, 100, 768, 1_000)]
QUICK_CASES = [(4_000, 10, 64, 40)]  # one case: a second size runs the same code


def make_factors(n: int, c: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)).astype(np.float32) * 2
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    a = p.copy()
    a[np.arange(n), p.argmax(1)] -= 1.0
    return a.astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)


def numpy_factorised(a: np.ndarray, h: np.ndarray, budget: int, seed: int = 0) -> list[int]:
    """Reference: factored k-means++ with running min D² and an rv_discrete draw per step."""
    rng = np.random.default_rng(seed)
    n = a.shape[0]
    norms = (a * a).sum(1) * ((h * h).sum(1) + 1.0)
    c = int(np.argmax(norms))
    picks = [c]
    chosen = np.zeros(n, bool)
    chosen[c] = True
    mind = np.maximum(norms + norms[c] - 2.0 * (a @ a[c]) * (h @ h[c] + 1.0), 0.0)
    mind[chosen] = 0.0
    for _ in range(1, budget):
        w = np.where(chosen, 0.0, mind).astype(np.float64)
        total = w.sum()
        w = w / total if total > 0 else (~chosen) / (~chosen).sum()
        c = int(stats.rv_discrete(name="d2", values=(np.arange(n), w)).rvs(random_state=rng))
        picks.append(c)
        chosen[c] = True
        d2 = np.maximum(norms + norms[c] - 2.0 * (a @ a[c]) * (h @ h[c] + 1.0), 0.0)
        mind = np.minimum(mind, d2)
        mind[chosen] = 0.0
    return picks


def median_time(fn, runs: int = 3, warmup: bool = True) -> float:
    if warmup:
        fn()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def matvec_floor(h: np.ndarray, budget: int) -> dict:
    v = h[0].copy()
    t_np = median_time(lambda: h @ v, runs=15)
    hj, vj = jnp.asarray(h), jnp.asarray(v)
    mv = jax.jit(lambda m, x: m @ x)
    t_jax = median_time(lambda: jax.block_until_ready(mv(hj, vj)), runs=15)
    return {"matvec_numpy_s": t_np, "matvec_jax_s": t_jax, "floor_s": budget * min(t_np, t_jax)}


def seed_peak_bytes(fs, offsets, budget) -> int:
    m = _seed.lower(jax.random.key(0), fs, offsets, budget, "max_norm").compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes)


def run_case(n: int, c: int, d: int, budget: int, max_mat_gb: float, mat_steps: int) -> dict:
    a, h = make_factors(n, c, d)
    row = {"N": n, "C": c, "d": d, "B": budget, "factor_floats_bytes": int(n * (c + d) * 4)}
    row.update(matvec_floor(h, budget))
    key = jax.random.key(1)

    f32 = (jnp.asarray(a), jnp.asarray(h))
    run32 = lambda: jax.block_until_ready(_seed(key, f32, (0.0, 1.0), budget, "max_norm"))  # noqa: E731
    row["jaxal_f32_s"] = median_time(run32)
    row["jaxal_f32_peak_bytes"] = seed_peak_bytes(f32, (0.0, 1.0), budget)

    bf16 = tuple(f.astype(jnp.bfloat16) for f in f32)
    run16 = lambda: jax.block_until_ready(_seed(key, bf16, (0.0, 1.0), budget, "max_norm"))  # noqa: E731
    row["jaxal_bf16_s"] = median_time(run16)
    row["jaxal_bf16_peak_bytes"] = seed_peak_bytes(bf16, (0.0, 1.0), budget)
    picks16 = np.asarray(run16())[:budget]
    p32 = np.asarray(d2_probabilities(f32, picks16, offsets=(0, 1)))
    p16 = np.asarray(d2_probabilities(f32, picks16, offsets=(0, 1), dtype="bfloat16"))
    row["bf16_d2_prob_max_abs_diff"] = float(np.abs(p32 - p16).max())
    row["bf16_d2_prob_total_variation"] = float(0.5 * np.abs(p32 - p16).sum())

    tracemalloc.start()
    row["numpy_factorised_s"] = median_time(lambda: numpy_factorised(a, h, budget), warmup=False)
    row["numpy_factorised_peak_bytes"] = int(tracemalloc.get_traced_memory()[1] + a.nbytes + h.nbytes)
    tracemalloc.stop()

    mat_bytes = n * c * (d + 1) * 4
    row["materialised_embedding_bytes"] = int(mat_bytes)
    if mat_bytes <= max_mat_gb * 2**30:
        g = jnp.einsum("nc,nd->ncd", f32[0], jnp.concatenate([f32[1], jnp.ones((n, 1), jnp.float32)], 1))
        g = (g.reshape(n, -1),)
        steps = min(mat_steps, budget)
        run_m = lambda: jax.block_until_ready(_seed(key, g, (0.0,), steps, "max_norm"))  # noqa: E731
        row["materialised_s"] = median_time(run_m) * budget / steps
        row["materialised_steps_timed"] = steps
        row["materialised_peak_bytes"] = seed_peak_bytes(g, (0.0,), steps)
        del g
    else:
        row["materialised_s"] = None
    row["speedup_f32_vs_numpy"] = row["numpy_factorised_s"] / row["jaxal_f32_s"]
    row["speedup_bf16_vs_numpy"] = row["numpy_factorised_s"] / row["jaxal_bf16_s"]
    row["f32_over_floor"] = row["jaxal_f32_s"] / row["floor_s"]
    row["bf16_over_floor"] = row["jaxal_bf16_s"] / row["floor_s"]
    row["peak_over_factor_floats"] = row["jaxal_f32_peak_bytes"] / row["factor_floats_bytes"]
    return row


def fmt(v, unit=""):
    if v is None:
        return "skipped"
    return f"{v:.3g}{unit}"


def print_table(rows: list[dict]) -> None:
    gb = lambda b: None if b is None else b / 2**30  # noqa: E731
    print(f"\ndevice: {jax.devices()[0].device_kind}, cores: {os.cpu_count()}, load avg: {os.getloadavg()}")
    hdr = ["N,C,d,B", "floor s", "jaxal f32 s", "jaxal bf16 s", "numpy fact s", "materialised s",
           "f32/floor", "x numpy f32", "x numpy bf16", "peak GiB (jaxal/numpy/mat)", "bf16 TV"]
    print(" | ".join(hdr))
    for r in rows:
        print(" | ".join([
            f"{r['N']},{r['C']},{r['d']},{r['B']}", fmt(r["floor_s"]), fmt(r["jaxal_f32_s"]), fmt(r["jaxal_bf16_s"]),
            fmt(r["numpy_factorised_s"]), fmt(r["materialised_s"]), fmt(r["f32_over_floor"]),
            fmt(r["speedup_f32_vs_numpy"]), fmt(r["speedup_bf16_vs_numpy"]),
            f"{gb(r['jaxal_f32_peak_bytes']):.3f}/{gb(r['numpy_factorised_peak_bytes']):.3f}/"
            f"{gb(r.get('materialised_peak_bytes', r['materialised_embedding_bytes'])):.3f}",
            fmt(r["bf16_d2_prob_total_variation"]),
        ]))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized cases (seconds)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--max-materialised-gb", type=float, default=1.5)
    ap.add_argument("--materialised-steps", type=int, default=30)
    args = ap.parse_args(argv)
    load_before = os.getloadavg()
    cases = QUICK_CASES if args.quick else FULL_CASES
    rows = [run_case(*cs, args.max_materialised_gb, args.materialised_steps) for cs in cases]
    print_table(rows)
    head = rows[0]
    result = {
        "badge_speedup_vs_numpy_factorized": head["speedup_f32_vs_numpy"],
        "badge_speedup_bf16_vs_numpy_factorized": head["speedup_bf16_vs_numpy"],
        "badge_over_bandwidth_floor": head["f32_over_floor"],
        "badge_peak_bytes": head["jaxal_f32_peak_bytes"],
        "cases": rows,
        "quick": args.quick,
        "device": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "load_average_before_after": [load_before, os.getloadavg()],
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
