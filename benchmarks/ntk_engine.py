"""Benchmark the empirical NTK engine: every implementation x contraction.

Cases: an MLP 64-1024-1024-10 on digits-shaped inputs (|X1|=1500, |X2|=200), the
small CNN on 8x8x1 images, and ResNet-18 on 32x32x3 with a smaller block. For each
implementation and contraction: median seconds of >=3 timed runs after a compile run,
compile seconds (first call minus the median), max relative Frobenius error of a
sub-block against a float64 brute-force kernel (explicit ``J J^T`` of the raveled
params, on the first ``ref_rows`` rows of each side), the same error with the engine
itself in float64, and the engine's analytic estimate of its largest intermediate.

Slow combinations run on smaller blocks, shown in the n1/n2 columns (the Jacobian
contraction costs ``2 C P`` FLOPs per pair, its ``full`` form C times more; the
NTK-vector products do ``n2 · C`` forward passes over X1); ResNet-18 runs the
``trace`` contraction only. The headline ``mlp_structured_speedup_vs_jacobian``
compares structured and Jacobian ``trace`` on the same 150 x 200 block (the Jacobian
on 1500 x 200 takes minutes per run on a 2-core CPU; its cost is linear in n1).

    python benchmarks/ntk_engine.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxal import ntk
from jaxal.models import as_model, create

IMPLS = ("jacobian", "ntvp", "structured")
CONTRACTIONS = ("full", "trace", "single_logit", "sum_logits")


def build(name: str, input_shape: tuple, num_classes: int = 10, **options):
    module = create(name, num_classes, input_shape=input_shape, **options)
    x0 = jnp.zeros((1,) + input_shape, jnp.float32)
    variables = jax.jit(lambda k: module.init(k, x0))(jax.random.PRNGKey(0))
    return as_model(module, variables)


def to64(model):
    """The model with float64 params (call under ``jax.enable_x64``)."""
    return model.replace_params(jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), model.params))


def brute_force_full(model, x1, x2) -> np.ndarray:
    """``[r1, r2, C, C]`` in float64: explicit per-example Jacobians of the raveled params."""
    with jax.enable_x64(True):
        model = to64(model)
        theta, unravel = ravel_pytree(model.params)
        jac = jax.jit(jax.jacrev(lambda th, x: model.apply(unravel(th), x[None])[0]))
        j2 = [jac(theta, jnp.asarray(x, jnp.float64)) for x in np.asarray(x2)]  # each [C, P]
        rows = []
        for x in np.asarray(x1):
            j1 = jac(theta, jnp.asarray(x, jnp.float64))
            rows.append(np.stack([np.asarray(j1 @ b.T) for b in j2]))
            del j1
        return np.stack(rows)


def reduce(full: np.ndarray, contraction: str) -> np.ndarray:
    c = full.shape[-1]
    if contraction == "full":
        return full
    if contraction == "trace":
        return np.einsum("ijcc->ij", full)
    if contraction == "single_logit":
        return full[:, :, 0, 0]
    return full.sum((-1, -2)) / c


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def peak_bytes(model, x1, x2, contraction, implementation, memory_bytes) -> int:
    """The engine's estimate of its largest intermediate for this block (chunk plan)."""
    from jaxal.ntk.chunking import plan_chunks
    from jaxal.ntk.kernel import _build
    from jaxal.ntk.params import split_params

    split = split_params(model.params, "all")
    ex = jax.ShapeDtypeStruct(x1.shape[1:], x1.dtype)
    _, engine, _ = _build(model, split, contraction, implementation, ex, memory_bytes, None)
    plan = plan_chunks(engine, x1.shape[0], x2.shape[0], memory_bytes)
    return int(engine.fixed_bytes + (plan.b1 + plan.b2) * engine.feature_bytes + plan.b1 * plan.b2 * engine.pair_bytes)


def time_kernel(model, x1, x2, contraction, implementation, reps: int, memory_bytes: int):
    """``(median seconds, compile seconds, kernel)``."""
    out = []

    def once():
        t = time.perf_counter()
        out.append(jax.block_until_ready(ntk.kernel(model, x1, x2, contraction=contraction,
                                                    implementation=implementation, memory_bytes=memory_bytes)))
        return time.perf_counter() - t

    first = once()
    runs = [once() for _ in range(reps)]
    med = statistics.median(runs)
    return med, max(first - med, 0.0), out[-1]


def run_case(case: dict, reps: int) -> list[dict]:
    model = case["model"]
    rng = np.random.default_rng(0)
    x1_all = rng.standard_normal((case["n1"],) + case["shape"]).astype(np.float32)
    x2_all = rng.standard_normal((case["n2"],) + case["shape"]).astype(np.float32)
    r1, r2 = case["ref_rows"]
    t = time.perf_counter()
    ref = brute_force_full(model, x1_all[:r1], x2_all[:r2])
    print(f"  [{case['name']}] float64 brute-force reference on {r1}x{r2} rows: {time.perf_counter() - t:.1f}s", flush=True)
    rows = []
    combos = [(i, c, case["sizes"].get((i, c), (case["n1"], case["n2"])))
              for i in case.get("implementations", IMPLS) for c in case.get("contractions", CONTRACTIONS)]
    for impl, con, (n1, n2) in combos + case.get("extra", []):
        x1, x2 = x1_all[:n1], x2_all[:n2]
        mem = case.get("memory_bytes", 2 * 1024**3)
        sec, comp, k32 = time_kernel(model, x1, x2, con, impl, reps, mem)
        k32 = np.asarray(k32)[:r1, :r2]
        with jax.enable_x64(True):
            k64 = ntk.kernel(to64(model), jnp.asarray(x1[:r1], jnp.float64), jnp.asarray(x2[:r2], jnp.float64),
                             contraction=con, implementation=impl, memory_bytes=2 * mem)
            e64 = rel_err(k64, reduce(ref, con))
        row = dict(
            case=case["name"], implementation=impl, contraction=con, n1=n1, n2=n2,
            seconds=sec, compile_seconds=comp, us_per_pair=1e6 * sec / (n1 * n2),
            rel_error_f32=rel_err(k32, reduce(ref, con)), rel_error_f64=e64,
            peak_bytes=peak_bytes(model, x1, x2, con, impl, mem),
        )
        rows.append(row)
        print(f"  {row['case']:<9} {impl:<10} {con:<12} {n1:>5}x{n2:<4} {sec:9.4f}s  compile {comp:6.2f}s  "
              f"err32 {row['rel_error_f32']:.1e}  err64 {e64:.1e}  peak {row['peak_bytes'] / 2**20:9.1f} MiB", flush=True)
    return rows


def cases(quick: bool) -> list[dict]:
    if quick:
        return [
            # two contractions per implementation: every one is checked against brute force in
            # tests/test_ntk.py; here the script's paths are (each combination compiles twice)
            dict(name="mlp", model=build("mlp", (64,), widths=(128, 128)), shape=(64,), n1=40, n2=10,
                 ref_rows=(4, 3), sizes={("ntvp", c): (20, 5) for c in CONTRACTIONS}, contractions=("trace", "full")),
            dict(name="cnn", model=build("cnn", (8, 8, 1), channels=(2, 4), hidden=8), shape=(8, 8, 1), n1=20,
                 n2=5, ref_rows=(3, 2), sizes={}, contractions=("trace",), implementations=("structured",)),
        ]
    small = lambda impl, size: {(impl, c): size for c in CONTRACTIONS}  # noqa: E731
    return [
        dict(name="mlp", model=build("mlp", (64,), widths=(1024, 1024)), shape=(64,), n1=1500, n2=200,
             ref_rows=(6, 4), sizes={**small("jacobian", (20, 10)), ("jacobian", "trace"): (150, 200),
                                     **small("ntvp", (10, 5))},
             extra=[("structured", "trace", (150, 200))]),
        dict(name="cnn", model=build("cnn", (8, 8, 1)), shape=(8, 8, 1), n1=100, n2=20, ref_rows=(4, 3),
             sizes={**small("jacobian", (20, 10)), **small("ntvp", (10, 5))}),
        dict(name="resnet18", model=build("resnet18", (32, 32, 3)), shape=(32, 32, 3), n1=4, n2=2, ref_rows=(2, 1),
             sizes={("jacobian", "trace"): (2, 2), ("ntvp", "trace"): (2, 1)}, contractions=("trace",),
             memory_bytes=6 * 1024**3),  # one ResNet-18 Jacobian is ~0.45 GB (f32) plus activations
    ]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized run (seconds)")
    ap.add_argument("--json", type=str, default=None, help="write results to this JSON file")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for case in cases(args.quick):
        rows += run_case(case, max(3, args.reps))
    by = {(r["case"], r["implementation"], r["contraction"], r["n1"], r["n2"]): r for r in rows}
    j = next(r for r in rows if r["case"] == "mlp" and r["implementation"] == "jacobian" and r["contraction"] == "trace")
    s = by[("mlp", "structured", "trace", j["n1"], j["n2"])]  # same block
    result = dict(
        mlp_structured_speedup_vs_jacobian=j["seconds"] / s["seconds"],
        max_rel_error_f32=max(r["rel_error_f32"] for r in rows),
        max_rel_error_f64=max(r["rel_error_f64"] for r in rows),
        quick=args.quick,
        machine=dict(platform=platform.platform(), cpus=os.cpu_count(), load_average=os.getloadavg(),
                     jax=jax.__version__, device=str(jax.devices()[0])),
        rows=rows,
    )
    print()
    print(f"{'case':<9} {'impl':<10} {'contraction':<12} {'n1 x n2':>10} {'seconds':>9} {'compile':>8} "
          f"{'us/pair':>9} {'err f32':>8} {'err f64':>8} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['case']:<9} {r['implementation']:<10} {r['contraction']:<12} {r['n1']:>5}x{r['n2']:<4} "
              f"{r['seconds']:9.4f} {r['compile_seconds']:8.2f} {r['us_per_pair']:9.2f} {r['rel_error_f32']:8.1e} "
              f"{r['rel_error_f64']:8.1e} {r['peak_bytes'] / 2**20:9.1f}")
    print(f"\nMLP structured speedup vs Jacobian (trace, {j['n1']}x{j['n2']}): "
          f"{result['mlp_structured_speedup_vs_jacobian']:.1f}x")
    print(f"max rel error: float32 {result['max_rel_error_f32']:.2e}, float64 {result['max_rel_error_f64']:.2e}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
