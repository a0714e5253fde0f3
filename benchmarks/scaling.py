"""Acquisition cost vs pool size: query time, compile time and peak memory per strategy.

"Features from a fixed network", so it runs on a CPU: pool features ``h [N, d=512]``
float32 (standard normal, generated in chunks from a fixed seed), a fixed linear head
``W [d, C=10]`` (``logits = h W``), budget ``B = 1000``. Each strategy's kernel is timed
on the cached features / logits, not the data generation:

* ``random``: :func:`jaxal.strategies.uncertainty.random` (reference row).
* ``entropy`` / ``margin``: one jitted program ``scores(softmax(logits))``
  (:func:`~jaxal.strategies.uncertainty.entropy_scores` /
  :func:`~jaxal.strategies.uncertainty.margin_scores`, fused as
  :func:`jaxal.model.predict_probs_then` fuses them) plus the top-``B`` selection
  :func:`jaxal.strategies.base.top_k_indices` (host). Rows ``…+pool.top_k`` use
  ``jaxal.pool.top_k(scores, k, key)`` instead when that module exists. Floor: one jitted
  ``jnp.sum(logits)`` (reading the logits once).
* ``badge``: :func:`jaxal.ops.kmeanspp.kmeanspp_factored` on ``a = softmax − onehot(argmax)``
  and ``h``. Floor: ``B`` passes over the factors, each as fast as the faster of
  :func:`badge_speed.matvec_floor`'s matrix-vector product over ``h`` (scaled by
  ``(C+d)/d``) and a jitted ``sum`` over both factors, timed on the same arrays.
* ``coreset``: :func:`jaxal.ops.kcenter.k_center_greedy` with ``|L| = 1000`` labeled
  features. Floor: ``2·N·B·d`` FLOPs at the measured rate of a jitted
  ``[65536, d] × [d, B]`` matmul (the initial min over ``L`` adds another ``2·N·|L|·d``:
  at ``|L| = B`` the real floor is twice this one). ``bandwidth_floor_s``: ``B`` reads of ``h``.
* ``typiclust``: :func:`jaxal.strategies.typiclust.typiclust_select` (scikit-learn
  k-means with ``|L| + B`` clusters, k-NN typicality) on ``h`` with ``|L| = 1000``.
* ``crc``: the registered strategy :func:`jaxal.strategies.crc.crc` (last-layer trace
  kernel of the Dense head, dual ``(d+1)``-sized eigenproblems on the host, default
  group size ``B/2``) on a model built with :func:`jaxal.model.from_functions` whose
  features are the identity (``x_pool = h``); vs ``N`` and vs ``|L|`` at a fixed ``N``.
* ``crc+mesh``: the same strategy with ``Context(mesh=jaxal.pool.pool_mesh(),
  memory_bytes=4 GiB)`` (the pool's features cached by rows on a one-device mesh).
* ``mlmoc``: NTK look-ahead as the ``mlmoc`` strategy runs it on one device with
  ``batch="topk"``: :func:`jaxal.lookahead.init_from_model` (empirical NTK of the same
  model, i.e. the last-layer kernel; ``memory_bytes`` = 4 GiB) +
  :func:`jaxal.lookahead.core.scores` (``"mlmoc"``) + ``top_k_indices``. Every candidate
  is also an evaluation point, so the state holds ``S × S`` matrices: it runs the sizes
  ``lookahead_sizes`` (up to 10⁴) and larger ones are recorded as skipped (memory).
* ``mlmoc+pool``: the ``mlmoc`` strategy on a one-device mesh
  (:mod:`jaxal.lookahead.pool_scores`: every pool row a candidate, ``|S|`` = its default
  evaluation subset, ``memory_bytes`` = 4 GiB): the 10⁶-candidate path.
* crc, crc+mesh, mlmoc, mlmoc+pool run vs ``N`` at ``|L| = 1000`` and vs ``|L|`` at a
  fixed ``N`` (a point both sweeps share is run once). The mesh variants and the
  ``pool.top_k`` rows run only where this jaxal has them.

Timing: the first call is timed on its own (compilation included), then up to
``--repeats`` more calls (fewer once they add up to ``--max-repeat-s``, at least one);
``time_s`` is their minimum and ``compile_s = first − time_s``.

Memory: every case runs in a fresh subprocess (this script re-invokes itself; ``--quick``
runs all its cases in one); after the inputs are built (as device arrays where
the entry point takes them) the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``)
and the peak increase over the resident size at that moment is read from ``VmHWM``:
``peak_rss_first_bytes`` over the first call (includes XLA's compiler), ``peak_rss_bytes``
over the steady-state calls; ``mem_ratio = peak_rss_bytes / input_bytes`` (target
≤ 1.5, plus ``memory_bytes`` where the entry point takes one).

Slopes: least-squares ``log t`` vs ``log N`` (and vs ``log |L|``) over the sizes run, and
over the two largest (``tail``), next to the expected exponent. A case whose per-call
time, extrapolated from the smaller sizes with the larger of the expected and the
fitted exponent (for ``|L|``: the fitted one within [1, expected]), exceeds ``--max-call-s``
is recorded as skipped, not run, and a timed call still running after ``--max-call-s`` is
killed and its case recorded as skipped; so is a case whose peak memory, extrapolated from the
measured peak at the smaller sizes, exceeds ``--max-memory-gb`` (or 70% of ``MemAvailable``).

    python benchmarks/scaling.py [--quick] [--json PATH] [--sizes N ...] [--strategies S ...]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
D, C, BUDGET = 512, 10, 1000
LOOKAHEAD_MEMORY_BYTES = 4 * 1024**3
CHUNK_ROWS = 1 << 16

POOL_MEMORY_BYTES = 4 * 1024**3  # ctx.memory_bytes of the mesh variants

# lookahead_sizes: the S×S look-ahead ("mlmoc") runs these pool sizes instead of --sizes;
# *_fixed_n: the pool size of the |L| sweeps; eval_size: |S| of "mlmoc+pool" (None: its default)
FULL = {"sizes": [10_000, 100_000, 1_000_000], "labeled": [100, 1000, 5000], "n_labeled": 1000,
        "lookahead_sizes": [2_500, 5_000, 10_000], "lookahead_fixed_n": 10_000, "crc_fixed_n": 100_000,
        "pool_fixed_n": 100_000, "eval_size": None}
QUICK = {"sizes": [2_000, 8_000], "labeled": [50, 200], "n_labeled": 50,
         "lookahead_sizes": [500, 1_000], "lookahead_fixed_n": 1_000, "crc_fixed_n": 8_000,
         "pool_fixed_n": 8_000, "eval_size": 250}
QUICK_BUDGET = 50

STRATEGIES = ("random", "entropy", "margin", "entropy+pool.top_k", "margin+pool.top_k",
              "badge", "coreset", "typiclust", "crc", "crc+mesh", "mlmoc", "mlmoc+pool")
MESH_VARIANTS = ("crc+mesh", "mlmoc+pool")  # need jaxal.pool and Context(mesh=, memory_bytes=)
# expected log-log slope of time vs N and vs |L|
EXPECTED_N = {"random": 1, "entropy": 1, "margin": 1, "entropy+pool.top_k": 1, "margin+pool.top_k": 1,
              "badge": 1, "coreset": 1, "typiclust": 1, "crc": 1, "crc+mesh": 1, "mlmoc": 2, "mlmoc+pool": 1}
EXPECTED_L = {"crc": 1, "crc+mesh": 1, "mlmoc": 3, "mlmoc+pool": 3}
NOTE_EXPECTED = {
    "random": "at most linear (a draw of B of N)",
    "entropy": "linear: one pass over the logits (host sort N log N)",
    "margin": "linear: one pass over the logits (host sort N log N)",
    "badge": "N·B·(C+d): B passes over the factors",
    "coreset": "N·(B+|L|)·d",
    "typiclust": "N·(|L|+B)·d per k-means pass",
    "crc": "vs N: N/G eigenproblems of size d+1; vs |L|: only Φ_LᵀΦ_L (|L|·d²), so 0 to 1",
    "mlmoc": "vs N: S×S kernel and covariance (S²); vs |L|: Cholesky |L|³ + S·|L|² + S²·|L|, up to 3",
    "mlmoc+pool": "vs N: rows of Σ for fixed |S|; vs |L|: N·|L|² (triangular solves) + |L|³, 2 to 3",
}


def pool_top_k():
    """``jaxal.pool.top_k`` if that module exists (it is being written), else None."""
    try:
        from jaxal import pool
    except ImportError:
        return None
    return getattr(pool, "top_k", None)


def mesh_available() -> bool:
    """Whether strategies take a device mesh (``Context.mesh``, :func:`jaxal.pool.pool_mesh`)."""
    from jaxal.strategies.base import Context

    try:
        from jaxal.pool import pool_mesh  # noqa: F401
    except ImportError:
        return False
    return "mesh" in Context._fields and "memory_bytes" in Context._fields


# ------------------------------------------------------------------ memory probes


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(field + r":\s+(\d+)", f.read()).group(1)) * 1024


def rss() -> int:
    return _status("VmRSS")


def hwm() -> int:
    return _status("VmHWM")


def reset_hwm() -> bool:
    """Reset the peak-RSS mark (Linux ≥ 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------ inputs


def features(n: int, seed: int) -> np.ndarray:
    """``[n, D]`` float32 standard-normal features, generated in chunks (no float64 copy)."""
    rng = np.random.default_rng(seed)
    h = np.empty((n, D), np.float32)
    for i in range(0, n, CHUNK_ROWS):
        rng.standard_normal(out=h[i:i + CHUNK_ROWS], dtype=np.float32)
    return h


def head_weights() -> np.ndarray:
    return (np.random.default_rng(123).standard_normal((D, C)) * (3.0 / math.sqrt(D))).astype(np.float32)


def chunked(h: np.ndarray, fn, width: int) -> np.ndarray:
    out = np.empty((h.shape[0], width), np.float32)
    for i in range(0, h.shape[0], CHUNK_ROWS):
        out[i:i + CHUNK_ROWS] = fn(h[i:i + CHUNK_ROWS])
    return out


def badge_factor(z: np.ndarray) -> np.ndarray:
    """``softmax(z) − onehot(argmax z)`` row-wise (BADGE's first factor)."""
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(z.shape[0]), z.argmax(1)] -= 1.0
    return p


def linear_model(w: np.ndarray):
    """A :class:`jaxal.model.Model` whose features are the identity (``x = h``) and whose
    head is the fixed Dense layer ``h W + 0``."""
    import jax.numpy as jnp

    from jaxal.model import from_functions

    head = {"kernel": jnp.asarray(w), "bias": jnp.zeros(C, jnp.float32)}
    return from_functions(lambda p, x: x, lambda p, h: h @ p["kernel"] + p["bias"], {"body": {}, "head": head},
                          dense_head=True)


# ------------------------------------------------------------------ cases


def _min_time(fn, repeats: int) -> float:
    """Min of ``repeats`` blocked calls after one untimed call (compiles): the helper of
    ``lookahead_vs_retraining.py``, imported late (it imports JAX)."""
    from lookahead_vs_retraining import _min_seconds

    return _min_seconds(fn, repeats)


def setup_case(case: dict, machine: dict):
    """``(inputs, run, post)``: ``run()`` is the timed query; ``post(inputs)`` adds floors and
    part timings after the memory has been read."""
    import jax
    import jax.numpy as jnp

    from jaxal.strategies.base import Context, top_k_indices
    from jaxal.strategies.uncertainty import entropy_from_logits, margin_from_logits

    s, n, n_l, b = case["strategy"], case["N"], case["L"], case["B"]
    key = jax.random.key(7)
    w = head_weights()
    inp: dict = {}

    if s in ("entropy", "margin", "entropy+pool.top_k", "margin+pool.top_k"):
        h = features(n, 0)
        logits = jnp.asarray(chunked(h, lambda x: x @ w, C))
        del h
        # what the strategies run on the logits (one exp per logit, one log per row)
        scores = jax.jit(entropy_from_logits if s.startswith("entropy") else margin_from_logits)
        top_k = pool_top_k() if s.endswith("pool.top_k") else top_k_indices
        if top_k is None:
            raise RuntimeError("jaxal.pool.top_k is not available")
        inp.update(logits=logits, input_bytes=logits.nbytes)

        def run():
            return np.asarray(top_k(scores(logits), b, key))

        def post():
            total = jax.jit(jnp.sum)
            sc = jax.block_until_ready(scores(logits))
            exps = jax.jit(lambda z: jnp.sum(jnp.exp(z)))  # the transcendental floor: one exp per logit
            return {"floor_s": _min_time(lambda: total(logits), 10), "exp_floor_s": _min_time(lambda: exps(logits), 10),
                    "parts_s": {"scores": _min_time(lambda: scores(logits), 5),
                                "select": _min_time(lambda: np.asarray(top_k(sc, b, key)), 3)}}

        return inp, run, post

    if s == "random":
        from jaxal.strategies.uncertainty import random as random_strategy

        h = features(n, 0)
        ctx = Context(None, np.zeros((0, D), np.float32), np.zeros(0, np.int32), h, C)
        inp.update(h=h, input_bytes=h.nbytes)
        return inp, lambda: random_strategy(key, ctx, b), dict

    if s == "badge":
        from jaxal.ops.kmeanspp import kmeanspp_factored

        h_np = features(n, 0)
        a = jnp.asarray(chunked(h_np, lambda x: badge_factor(x @ w), C))
        h = jnp.asarray(h_np)
        del h_np
        inp.update(input_bytes=a.nbytes + h.nbytes)

        def post():
            from badge_speed import (
                matvec_floor,  # the floor badge_speed.py defines: B reads of h
            )

            mv = matvec_floor(np.asarray(h), b)
            both = jax.jit(lambda a, h: jnp.sum(a) + jnp.sum(h))
            sum_floor = b * _min_time(lambda: both(a, h), 10)
            mv_floor = mv["floor_s"] * (C + D) / D
            return {"floor_s": min(mv_floor, sum_floor), "matvec_floor_s": mv_floor, "sum_floor_s": sum_floor,
                    "factor_read_GBps": b * (a.nbytes + h.nbytes) / min(mv_floor, sum_floor) / 1e9}

        return inp, lambda: kmeanspp_factored(key, a, h, b), post

    if s == "coreset":
        from jaxal.ops.kcenter import k_center_greedy

        h, hl = jnp.asarray(features(n, 0)), jnp.asarray(features(n_l, 1))
        inp.update(input_bytes=h.nbytes + hl.nbytes)

        def post():
            total = jax.jit(jnp.sum)
            return {"floor_s": 2.0 * n * b * D / machine["gemm_flops"],
                    "bandwidth_floor_s": b * _min_time(lambda: total(h), 10)}

        return inp, lambda: k_center_greedy(key, h, hl, b), post

    if s == "typiclust":
        from jaxal.strategies.typiclust import typiclust_select

        h, hl = features(n, 0), features(n_l, 1)
        inp.update(input_bytes=h.nbytes + hl.nbytes)
        return inp, lambda: typiclust_select(0, hl, h, b), dict

    if s in ("crc", "crc+mesh"):
        from jaxal.strategies.crc import CRCTieWarning, crc

        h, hl = features(n, 0), features(n_l, 1)
        ctx = Context(linear_model(w), hl, (hl @ w).argmax(1).astype(np.int32), h, C)
        if s == "crc+mesh":
            from jaxal.pool import pool_mesh

            ctx = ctx._replace(mesh=pool_mesh(), memory_bytes=POOL_MEMORY_BYTES)
        inp.update(input_bytes=h.nbytes + hl.nbytes)

        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CRCTieWarning)
                return crc(key, ctx, b).indices

        return inp, run, dict

    if s == "mlmoc":
        from jaxal.lookahead import core, init_from_model

        h, hl = features(n, 0), features(n_l, 1)
        yl = (hl @ w).argmax(1).astype(np.int32)
        model = linear_model(w)
        inp.update(input_bytes=h.nbytes + hl.nbytes)

        def run():
            state, _ = init_from_model(model, hl, yl, h, memory_bytes=LOOKAHEAD_MEMORY_BYTES)
            sc, _ = core.scores(state, "mlmoc")
            return top_k_indices(sc, b, key)

        return inp, run, dict

    if s == "mlmoc+pool":
        from jaxal.pool import pool_mesh
        from jaxal.strategies.model_change import mlmoc

        h, hl = features(n, 0), features(n_l, 1)
        ctx = Context(linear_model(w), hl, (hl @ w).argmax(1).astype(np.int32), h, C, mesh=pool_mesh(),
                      memory_bytes=LOOKAHEAD_MEMORY_BYTES)
        opts = {} if case.get("eval_size") is None else {"eval_size": case["eval_size"]}
        inp.update(input_bytes=h.nbytes + hl.nbytes)
        info: dict = {}

        def run():
            q = mlmoc(key, ctx, b, **opts)
            info.update({k: q.info.get(k) for k in ("eval_size", "chunk_rows", "memory_estimate")})
            return q.indices

        return inp, run, lambda: {"pool_info": info}

    raise ValueError(f"unknown strategy {s!r}")


def run_case(case: dict, machine: dict, repeats: int, max_repeat_s: float, mark=lambda what: None) -> dict:
    """One case, timed and measured. ``mark(what)`` is told when each timed call starts
    (``"first"``, ``"steady"``) and ends (``None``): the driver kills a call that runs too long."""
    row = dict(case)
    row["load_average_start"] = list(os.getloadavg())
    gc.collect()
    t = time.perf_counter()
    inp, run, post = setup_case(case, machine)
    row["setup_s"] = time.perf_counter() - t
    row["input_bytes"] = int(inp["input_bytes"])
    gc.collect()
    row["hwm_reset"] = reset_hwm()
    base = rss()
    mark("first")
    t = time.perf_counter()
    out = run()
    first = time.perf_counter() - t
    mark(None)
    peak_first = hwm() - base
    del out
    gc.collect()
    reset_hwm()
    base_steady = rss()
    times: list[float] = []
    while True:
        mark("steady")
        t = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t)
        mark(None)
        del out
        if len(times) >= repeats or sum(times) + min(times) > max_repeat_s:
            break
    peak_steady = hwm() - base_steady
    row.update(time_s=min(times), runs_s=times, first_call_s=first, compile_s=max(first - min(times), 0.0),
               rss_baseline_bytes=base, peak_rss_bytes=int(peak_steady), peak_rss_first_bytes=int(peak_first),
               mem_ratio=peak_steady / row["input_bytes"], mem_ratio_first=peak_first / row["input_bytes"])
    row.update(post())
    if "floor_s" in row:
        row["ratio"] = row["time_s"] / row["floor_s"]
    row["load_average_end"] = list(os.getloadavg())
    return row


def _mark_call(path: str, what: str | None) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump({"call": what, "since": time.time()}, f)
    os.replace(path + ".tmp", path)


def worker(cases: list[dict], machine: dict, repeats: int, max_repeat_s: float, out_path: str) -> None:
    rows = []
    mark = lambda what: _mark_call(out_path + ".call", what)
    for case in cases:
        try:
            row = run_case(case, machine, repeats, max_repeat_s, mark)
        except Exception as e:  # noqa: BLE001 - recorded, the other cases go on
            row = dict(case, skipped=f"error: {type(e).__name__}: {e}")
        rows.append(row)
        print(f"  {fmt_row(row)}", flush=True)
        with open(out_path, "w") as f:  # after every case: a killed worker keeps what it finished
            json.dump(rows, f)


# ------------------------------------------------------------------ planning and driving


def cases_for(strategy: str, cfg: dict, sizes: list[int], budget: int) -> list[dict]:
    """The strategy's cases: ``sweep="N"`` over pool sizes, and ``sweep="L"`` for crc/mlmoc."""
    n_l = cfg["n_labeled"]
    uses_l = strategy in ("coreset", "typiclust", "crc", "crc+mesh", "mlmoc", "mlmoc+pool")
    extra = {"eval_size": cfg["eval_size"]} if strategy == "mlmoc+pool" else {}
    out = []
    n_sizes = sorted(set(sizes) | set(cfg["lookahead_sizes"])) if strategy == "mlmoc" else sorted(sizes)
    if strategy == "mlmoc" and cfg.get("quick"):
        n_sizes = cfg["lookahead_sizes"]
    for n in n_sizes:
        out.append(dict(strategy=strategy, sweep="N", N=int(n), L=int(n_l) if uses_l else 0, B=budget, d=D, C=C,
                        **extra))
    if strategy in EXPECTED_L:
        fixed = {"mlmoc": cfg["lookahead_fixed_n"], "mlmoc+pool": cfg["pool_fixed_n"]}.get(strategy, cfg["crc_fixed_n"])
        for n_lab in cfg["labeled"]:
            out.append(dict(strategy=strategy, sweep="L", N=int(fixed), L=int(n_lab), B=budget, d=D, C=C, **extra))
    return out


def mem_available() -> float:
    with open("/proc/meminfo") as f:
        return float(re.search(r"MemAvailable:\s+(\d+)", f.read()).group(1)) * 1024


def same_case(case: dict, done: list[dict]) -> dict | None:
    """A finished row of the same strategy, N and |L| (whatever its sweep), relabelled as ``case``."""
    for r in done:
        if (r["strategy"], r["N"], r["L"]) == (case["strategy"], case["N"], case["L"]):
            return dict(r, sweep=case["sweep"])
    return None


def memory_estimate(case: dict, done: list[dict]) -> float:
    """Rough peak bytes of the case, inputs included: the strategy's measured peak at its
    largest finished size of the same sweep, scaled (look-ahead: S²; others: N), else a
    static guess."""
    s, n = case["strategy"], case["N"]
    inputs = 4.0 * (n + case["L"]) * (D + C)
    prev = [r for r in done if r["strategy"] == s and r["sweep"] == case["sweep"] and "time_s" in r
            and r["N"] <= n]
    if prev and case["sweep"] == "N":
        last = max(prev, key=lambda r: r["N"])
        k = 2 if s == "mlmoc" else 1
        return inputs + max(last["peak_rss_first_bytes"], last["peak_rss_bytes"]) * (n / last["N"]) ** k
    if s == "mlmoc":
        l_pad = 2 ** math.ceil(math.log2(max(case["L"], 1)))
        return inputs + 4.0 * (3 * n * n + (n + l_pad) ** 2)
    if s in ("typiclust", "crc"):  # float64 copies of the features
        return inputs + 2.0 * 8 * n * (D + 1)
    return 2 * inputs


def slope(xs: list[float], ts: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    return float(np.polyfit(np.log(xs), np.log(ts), 1)[0])


def estimate_call_s(case: dict, done: list[dict]) -> float | None:
    """Per-call seconds extrapolated from the strategy's finished cases of the same sweep."""
    var = case["sweep"]
    prev = sorted((r for r in done if r["strategy"] == case["strategy"] and r["sweep"] == var and "time_s" in r),
                  key=lambda r: r[var])
    if not prev:
        return None
    expected = (EXPECTED_N if var == "N" else EXPECTED_L)[case["strategy"]]
    tail = slope([r[var] for r in prev[-2:]], [r["first_call_s"] for r in prev[-2:]])
    if var == "N":  # the larger of the expected and the fitted exponent
        k = max(expected, tail if tail is not None else 0.0)
    else:  # |L|: the expected exponent is an upper bound reached only at large |L|; fitted, within [1, expected]
        k = expected if tail is None else min(max(tail, 1.0), expected)
    last = prev[-1]
    return last["first_call_s"] * (case[var] / last[var]) ** k


def spawn(cases: list[dict], machine: dict, args, timeout: float, estimate: float | None = None) -> list[dict]:
    """Run ``cases`` in a fresh worker process. A timed call running longer than
    ``--max-call-s`` (or the whole worker longer than ``timeout``) is killed and its case
    recorded as skipped."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--_worker", json.dumps(cases), "--_machine",
               json.dumps(machine), "--_out", out, "--repeats", str(args.repeats), "--max-repeat-s",
               str(args.max_repeat_s)]
        env = {**os.environ, "PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", "")}
        err = None
        start = time.time()
        with open(os.path.join(tmp, "stderr"), "w+") as stderr:
            proc = subprocess.Popen(cmd, env=env, stdout=sys.stdout, stderr=stderr, text=True)
            while proc.poll() is None:
                time.sleep(1.0)
                try:
                    with open(out + ".call") as f:
                        call = json.load(f)
                except (OSError, ValueError):
                    call = {"call": None}
                running = time.time() - call["since"] if call["call"] else 0.0
                if running > args.max_call_s or time.time() - start > timeout:
                    proc.kill()
                    proc.wait()
                    est = "" if estimate is None else f"; estimated {estimate:.0f} s from the smaller sizes"
                    err = (f"skipped: too slow ({call['call']} call killed after {running:.0f} s, over --max-call-s "
                           f"{args.max_call_s:g} s{est})" if running > args.max_call_s
                           else f"skipped: worker killed after {time.time() - start:.0f} s (timeout)")
                    break
            if err is None and proc.returncode != 0:
                stderr.seek(0)
                err = f"worker exit {proc.returncode}: {stderr.read()[-1500:]}"
        rows = []
        if os.path.exists(out):
            with open(out) as f:
                rows = json.load(f)
    done = {(r["strategy"], r["sweep"], r["N"], r["L"]) for r in rows}
    for c in cases:
        if (c["strategy"], c["sweep"], c["N"], c["L"]) not in done:
            rows.append(dict(c, skipped=err or "skipped: worker ended early"))
            print(f"  {fmt_row(rows[-1])}", flush=True)
    return rows


def measure_machine(quick: bool) -> dict:
    """Yardsticks measured once before the cases: read bandwidth and matmul FLOP rate."""
    import jax
    import jax.numpy as jnp
    from lookahead_vs_retraining import _min_seconds, gemm_flops_per_second

    n_read = (16 if quick else 128) * 2**20  # floats: 64 MiB / 512 MiB, far past the caches
    ones = jnp.ones((n_read,), jnp.float32)
    total = jax.jit(jnp.sum)
    t_read = _min_seconds(lambda: total(ones), 10)
    ones.delete()
    rows = 8192 if quick else 65536
    hm = jnp.asarray(np.random.default_rng(0).standard_normal((rows, D)).astype(np.float32))
    wm = jnp.asarray(np.random.default_rng(1).standard_normal((D, BUDGET)).astype(np.float32))
    mm = jax.jit(lambda a, b: a @ b)
    t_mm = _min_seconds(lambda: mm(hm, wm), 5)
    return {
        "read_GBps": 4.0 * n_read / t_read / 1e9,
        "gemm_flops": 2.0 * rows * D * BUDGET / t_mm,
        "gemm_shape": [rows, D, BUDGET],
        "gemm_flops_square_1024": gemm_flops_per_second(),  # lookahead_vs_retraining's yardstick
    }


def fmt(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def fmt_row(r: dict) -> str:
    head = f"{r['strategy']:<19} {r['sweep']} N={r['N']:<8} L={r['L']:<5}"
    if "time_s" not in r:
        return f"{head} {r.get('skipped', '?')}"
    ratio = f" ratio {r['ratio']:.2f}" if "ratio" in r else ""
    return (f"{head} {r['time_s']:9.4f} s  compile {r['compile_s']:6.2f} s  peak +{r['peak_rss_bytes'] / 2**20:8.1f} MiB "
            f"(first +{r['peak_rss_first_bytes'] / 2**20:.1f})  x{r['mem_ratio']:.2f} input{ratio}")


def slopes(rows: list[dict]) -> dict:
    out = {}
    for s in dict.fromkeys(r["strategy"] for r in rows):
        for var, expected in (("N", EXPECTED_N), ("L", EXPECTED_L)):
            pts = sorted((r[var], r["time_s"]) for r in rows
                          if r["strategy"] == s and r["sweep"] == var and "time_s" in r)
            if s not in expected or not any(r["strategy"] == s and r["sweep"] == var for r in rows):
                continue
            xs, ts = [p[0] for p in pts], [p[1] for p in pts]
            out[f"{s} vs {var}"] = {"strategy": s, "variable": var, "sizes": xs, "slope": slope(xs, ts),
                                    "slope_tail": slope(xs[-2:], ts[-2:]), "expected": expected[s],
                                    "expected_note": NOTE_EXPECTED.get(s, NOTE_EXPECTED.get(s.split("+")[0]))}
    return out


TARGETS = {"entropy": 1.5, "margin": 1.5, "entropy+pool.top_k": 1.5, "margin+pool.top_k": 1.5, "badge": 1.3,
           "coreset": 2.0}


def targets(rows: list[dict]) -> list[dict]:
    """Each target at the strategy's largest pool size run."""
    out = []
    for s in dict.fromkeys(r["strategy"] for r in rows):
        ran = [r for r in rows if r["strategy"] == s and r["sweep"] == "N" and "time_s" in r]
        if not ran:
            continue
        top = max(ran, key=lambda r: r["N"])
        if s in TARGETS and "ratio" in top:
            out.append({"what": f"{s} time/floor", "N": top["N"], "value": top["ratio"], "target": TARGETS[s],
                        "met": top["ratio"] <= TARGETS[s]})
        extra = LOOKAHEAD_MEMORY_BYTES / top["input_bytes"] if s == "mlmoc" else 0.0
        out.append({"what": f"{s} peak RSS / input bytes", "N": top["N"], "value": top["mem_ratio"],
                    "target": 1.5 + extra, "met": top["mem_ratio"] <= 1.5 + extra})
    for s in ("mlmoc", "mlmoc+pool"):  # the largest candidate count in one pass, under the 4 GiB bound
        la = [r for r in rows if r["strategy"] == s and r["sweep"] == "N"]
        if la:
            big = max(la, key=lambda r: r["N"])
            peak = None if "time_s" not in big else max(big["peak_rss_bytes"], big["peak_rss_first_bytes"])
            out.append({"what": f"{s}: {big['N']} candidates, |L|={big['L']}, one pass, peak increase <= 4 GiB",
                        "N": big["N"], "value": peak if peak is not None else big.get("skipped"),
                        "target": LOOKAHEAD_MEMORY_BYTES, "met": peak is not None and peak <= LOOKAHEAD_MEMORY_BYTES})
    return out


def print_table(result: dict) -> None:
    m = result["machine"]
    print(f"\njax {m['jax']} on {m['device']}, {m['cpu_count']} CPUs, load {m['load_average_before']} -> "
          f"{m['load_average_after']}; read {m['read_GBps']:.1f} GB/s, matmul {m['gemm_flops'] / 1e9:.0f} GFLOP/s")
    hdr = (f"{'strategy':<19} {'sweep':<5} {'N':>8} {'|L|':>5} {'time s':>9} {'compile s':>9} {'floor s':>9} "
           f"{'ratio':>6} {'peak MiB':>9} {'first MiB':>9} {'peak/in':>7}  note")
    print(hdr)
    print("-" * len(hdr))
    for r in result["rows"]:
        if "time_s" not in r:
            print(f"{r['strategy']:<19} {r['sweep']:<5} {r['N']:>8} {r['L']:>5}  {r['skipped']}")
            continue
        note = ""
        if "parts_s" in r:
            note = f"scores {r['parts_s']['scores']:.3g} s, select {r['parts_s']['select']:.3g} s"
        if "bandwidth_floor_s" in r:
            note = f"bandwidth floor {r['bandwidth_floor_s']:.3g} s"
        print(f"{r['strategy']:<19} {r['sweep']:<5} {r['N']:>8} {r['L']:>5} {r['time_s']:>9.4g} {r['compile_s']:>9.3g} "
              f"{fmt(r.get('floor_s')):>9} {fmt(r.get('ratio')):>6} {r['peak_rss_bytes'] / 2**20:>9.1f} "
              f"{r['peak_rss_first_bytes'] / 2**20:>9.1f} {r['mem_ratio']:>7.2f}  {note}")
    print("\nlog-log slopes (all sizes / two largest) vs expected")
    for name, s in result["slopes"].items():
        print(f"  {name:<26} {fmt(s['slope'], 2):>6} / {fmt(s['slope_tail'], 2):>6}   expected {s['expected']}"
              f"  ({s['expected_note']})")
    print("\ntargets")
    for t in result["targets"]:
        v = t["value"]
        print(f"  {t['what']:<62} N={t['N']:<8} {fmt(v) if isinstance(v, (int, float)) else v}  "
              f"(target {fmt(t['target'])}) {'met' if t['met'] else 'NOT met'}")


def plot(rows: list[dict], path: str) -> None:
    """Time vs N (left; dotted: the floors of entropy, badge, coreset) and vs |L| (right),
    log-log, one colour per strategy (dashed: the pool / mesh variants)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12.0, 4.6), dpi=90)
    FigureCanvasAgg(fig)
    colours = colormaps["tab20"]
    for i, (var, label) in enumerate([("N", "pool size N (candidates)"), ("L", "|L| (labeled)")]):
        ax = fig.add_subplot(1, 2, i + 1)
        for s in dict.fromkeys(r["strategy"] for r in rows):
            pts = sorted((r[var], r["time_s"], r.get("floor_s")) for r in rows
                         if r["strategy"] == s and r["sweep"] == var and "time_s" in r)
            if not pts:
                continue
            colour = colours(STRATEGIES.index(s) % 20 if s in STRATEGIES else 19)
            fixed = next(r["N"] if var == "L" else r["L"] for r in rows if r["strategy"] == s and r["sweep"] == var)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, color=colour,
                    linestyle="--" if "+" in s else "-", label=s if var == "N" else f"{s} (N={fixed})")
            if var == "N" and all(p[2] for p in pts) and s in ("entropy", "badge", "coreset"):
                ax.plot([p[0] for p in pts], [p[2] for p in pts], linestyle=":", color=colour, linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("query seconds (min of runs)")
        ax.grid(True, which="both", linewidth=0.3)
        if ax.get_lines():
            ax.legend(fontsize=6, ncol=2 if var == "N" else 1, loc="upper left")
    fig.suptitle(f"acquisition time, d={D}, C={C}, B={rows[0]['B']} (dotted: floors of entropy, badge, coreset)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N in {2000, 8000}, |L| in {50, 200}, B=50, one timed call (< 60 s)")
    ap.add_argument("--json", help="write the results here (default: benchmarks/results/scaling.json, "
                                    "scaling_quick.json with --quick); the plot goes next to it (.png)")
    ap.add_argument("--sizes", type=int, nargs="+", help="pool sizes N")
    ap.add_argument("--strategies", nargs="+", choices=STRATEGIES, help="a subset of the strategies")
    ap.add_argument("--repeats", type=int, help="timed calls after the first, at most (default 3; --quick 1)")
    ap.add_argument("--max-repeat-s", type=float, default=60.0, help="stop repeating once the calls add up to this")
    ap.add_argument("--max-call-s", type=float, default=600.0, help="skip a case whose call is estimated longer; kill a call running longer")
    ap.add_argument("--max-memory-gb", type=float, default=12.0,
                    help="skip a case estimated to need more (or more than 70%% of MemAvailable)")
    ap.add_argument("--replot", metavar="JSON", help="only redraw the figure and reprint the table of a saved run")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_machine", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        worker(json.loads(args._worker), json.loads(args._machine), args.repeats, args.max_repeat_s, args._out)
        return {}

    if args.replot:
        with open(args.replot) as f:
            result = json.load(f)
        print_table(result)
        plot(result["rows"], os.path.splitext(args.replot)[0] + ".png")
        return result
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    t_start = time.perf_counter()
    load_before = list(os.getloadavg())
    cfg = dict(QUICK if args.quick else FULL, quick=args.quick)
    budget = QUICK_BUDGET if args.quick else BUDGET
    sizes = args.sizes or cfg["sizes"]
    if args.sizes:
        cfg["lookahead_sizes"] = []
    names = list(args.strategies or STRATEGIES)
    if pool_top_k() is None:
        dropped = [s for s in names if s.endswith("pool.top_k")]
        names = [s for s in names if s not in dropped]
        if dropped:
            print(f"jaxal.pool.top_k not found: {', '.join(dropped)} not run")
    if not mesh_available():
        dropped = [s for s in names if s in MESH_VARIANTS]
        names = [s for s in names if s not in dropped]
        if dropped:
            print(f"strategies take no mesh in this jaxal: {', '.join(dropped)} not run")
    path = args.json or os.path.join(HERE, "results", "scaling_quick.json" if args.quick else "scaling.json")

    import jax

    sys.path.insert(0, HERE)
    machine = measure_machine(args.quick)
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, load {load_before}; "
          f"read {machine['read_GBps']:.1f} GB/s, matmul {machine['gemm_flops'] / 1e9:.0f} GFLOP/s", flush=True)
    rows: list[dict] = []
    if args.quick:  # one subprocess for every case (the peak mark is still reset per case)
        todo = [c for s in names for c in cases_for(s, cfg, sizes, budget)]
        rows = spawn([c for c in todo if not same_case(c, todo[:todo.index(c)])], machine, args, timeout=900)
        rows = [same_case(c, rows) for c in todo]
        names = []
    for s in names:
        for c in cases_for(s, cfg, sizes, budget):
            twin = same_case(c, rows)
            if twin is not None:  # e.g. the |L| sweep's |L| = 1000 point of the N sweep: not run twice
                rows.append(twin)
                continue
            est_mem = memory_estimate(c, rows)
            est_t = estimate_call_s(c, rows)
            cap = min(args.max_memory_gb * 1e9, 0.7 * mem_available())
            if est_mem > cap:
                what = "its S×S kernel and covariance" if s == "mlmoc" else "working memory"
                row = dict(c, skipped=f"skipped: memory (estimated {est_mem / 1e9:.3g} GB for {what}, "
                                      f"over the {cap / 1e9:.3g} GB allowed)", estimated_bytes=est_mem)
            elif est_t is not None and est_t > args.max_call_s:
                row = dict(c, skipped=f"skipped: too slow (estimated {est_t:.0f} s per call)", estimated_s=est_t)
            else:
                calls = 1 + args.repeats if est_t is None else 2 + min(args.repeats - 1,
                                                                       int(args.max_repeat_s // max(est_t, 1e-3)))
                timeout = 600 + calls * args.max_call_s  # setup and floors, then every call at its cap
                rows += spawn([c], machine, args, timeout, est_t)
                continue
            print(f"  {fmt_row(row)}", flush=True)
            rows.append(row)

    result = {
        "quick": args.quick,
        "config": {"d": D, "C": C, "B": budget, "sizes": [int(n) for n in sizes], **cfg,
                   "lookahead_memory_bytes": LOOKAHEAD_MEMORY_BYTES, "pool_memory_bytes": POOL_MEMORY_BYTES, "repeats": args.repeats,
                   "max_repeat_s": args.max_repeat_s, "max_call_s": args.max_call_s,
                   "max_memory_gb": args.max_memory_gb, "features": "standard normal float32, seed 0 (pool), 1 (L)"},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
                    "device": jax.devices()[0].device_kind, "load_average_before": load_before,
                    "load_average_after": list(os.getloadavg()), **machine},
        "rows": rows,
        "slopes": slopes(rows),
        "targets": targets(rows),
        "wall_s": time.perf_counter() - t_start,
    }
    print_table(result)
    print(f"\nwall time {result['wall_s']:.0f} s")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    plot(rows, os.path.splitext(path)[0] + ".png")
    print(f"wrote {path} and {os.path.splitext(path)[0]}.png")
    return result


if __name__ == "__main__":
    main()
