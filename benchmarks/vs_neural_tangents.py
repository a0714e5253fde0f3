"""jaxal's empirical NTK against neural-tangents: agreement and speed on identical networks.

neural-tangents 0.6.5 (the newest on PyPI) imports only with jax/jaxlib 0.5.3, so it runs
in its own virtual environment (created from ``benchmarks/nt_requirements.txt`` and
cached under ``benchmarks/results/tmp/nt-venv/``, or given by ``--nt-python``). Both
sides build the network from the same spec in ``benchmarks/nt_models.py`` (plain
``jax.numpy`` / ``lax``) and read the same float64 parameters and inputs from an
``.npz`` file; this script re-runs itself as the neural-tangents *worker*
(``--worker JOB OUT``), which writes kernels and timings to another ``.npz``.

Contractions (jaxal names; neural-tangents settings):

- ``trace``: ``[n1, n2]``, ``trace_axes=(-1,)``. neural-tangents divides the trace by
  its size (``_trace_and_diagonal`` returns ``ntk / contract_size``): it is the *mean*
  over logits, jaxal's the sum, so its kernel is multiplied by ``C`` here.
- ``full``: ``[n1, n2, C, C]``, ``trace_axes=()``.
- ``diagonal``: ``[n1, C, C]``, ``trace_axes=(), diagonal_axes=(0,)``, ``x2=None``.
- ``trace_diagonal``: ``[n1]`` (jaxal ``diagonal=True``), ``trace_axes=(-1,),
  diagonal_axes=(0,)``, times ``C``.

Error of a cell: ``max|K_jaxal - K_nt| / max|K_nt|`` (max-norm relative: the ``full``
kernel has off-diagonal logit pairs near zero, where an entrywise ratio means nothing).
Times: the first call (trace, compile and one run) and the minimum of N further calls,
``compile ≈ first - min``; ``os.getloadavg()`` before and after each case.

    python benchmarks/vs_neural_tangents.py              # full run (≈ 1 h on 2 CPUs)
    python benchmarks/vs_neural_tangents.py --quick      # tiny networks (≈ 6 min on 2 CPUs)
    python benchmarks/vs_neural_tangents.py --write-reference   # tests/data/nt_reference_kernels.npz
    python benchmarks/vs_neural_tangents.py --live      # the reference test, live, under jax 0.5.3
    python benchmarks/vs_neural_tangents.py --nt-python /path/to/python   # an existing environment
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import nt_models  # noqa: E402

try:  # the jaxal side (this project's environment)
    import jaxal
    from jaxal import ntk
    from jaxal.ntk.kernel import engine_for
    from jaxal.ntk.params import split_params
except ImportError:  # the neural-tangents worker's environment has no jaxal
    jaxal = ntk = engine_for = split_params = None
try:  # the worker side (jax 0.5.3)
    import neural_tangents as nt
except ImportError:
    nt = None

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = HERE / "results" / "tmp" / "nt-venv"
REQUIREMENTS = HERE / "nt_requirements.txt"
REFERENCE = ROOT / "tests" / "data" / "nt_reference_kernels.npz"
JSON_OUT = HERE / "results" / "vs_neural_tangents.json"
MD_OUT = HERE / "results" / "vs_neural_tangents.md"
LIVE_OUT = HERE / "results" / "vs_neural_tangents_live.json"

CONTRACTIONS = ("trace", "full", "diagonal", "trace_diagonal")
#: neural-tangents' ``NtkImplementation`` values: 1 JACOBIAN_CONTRACTION, 2 NTK_VECTOR_PRODUCTS,
#: 3 STRUCTURED_DERIVATIVES.
NT_IMPLS = {1: "jacobian_contraction", 2: "ntk_vector_products", 3: "structured_derivatives"}
JAXAL_IMPLS = ("jacobian", "ntvp", "structured", "auto")
DTYPES = ("float32", "float64")

BIG_MLP = {"kind": "mlp", "widths": [64, 1024, 1024, 10]}
RESNET18 = {"kind": "resnet", "in_shape": [16, 16, 3], "width": 8, "blocks": [2, 2, 2, 2], "classes": 10}


# --------------------------------------------------------------------------- cases


def case(name: str, spec: dict, n1: int, n2: int, *, contractions=CONTRACTIONS, nt_impls=(1, 2, 3),
         jaxal_impls=JAXAL_IMPLS, dtypes=DTYPES, reps: int = 3, nt_reps: int | None = None, seed: int = 0,
         jaxal_model: str = "functions", flops: bool = False, nt_batches: tuple[int, ...] = (0,)) -> dict:
    """One benchmark case: a network, its sizes and what to run on it.

    Each neural-tangents implementation runs once per entry of ``nt_batches``: ``0`` is
    one unbatched call, ``b > 0`` goes through ``nt.batch`` in ``b``-blocks (its own way
    to bound memory: one unbatched Jacobian of the 1M-parameter MLP over 350 examples
    would take 15 GB); the first call of a batched run is one block (compile + run) and
    the timed calls are the whole kernel.
    """
    return dict(name=name, spec=spec, n1=n1, n2=n2, contractions=list(contractions), nt_impls=list(nt_impls),
                jaxal_impls=list(jaxal_impls), dtypes=list(dtypes), reps=reps,
                nt_reps=reps if nt_reps is None else nt_reps, seed=seed, jaxal_model=jaxal_model, flops=flops,
                nt_batches=list(nt_batches))


def reference_cases() -> list[dict]:
    """The tiny cases committed as ``tests/data/nt_reference_kernels.npz`` (a few KB each)."""
    return [
        case("ref_mlp", {"kind": "mlp", "widths": [8, 16, 16, 3]}, 3, 2, nt_impls=(1, 2, 3), seed=1),
        case("ref_cnn", {"kind": "cnn", "in_shape": [6, 6, 2], "channels": [4, 4], "classes": 3}, 3, 2,
             nt_impls=(1, 2, 3), seed=2),
        case("ref_resnet", {"kind": "resnet", "in_shape": [8, 8, 3], "width": 2, "blocks": [1, 1], "classes": 3},
             3, 2, nt_impls=(1, 2, 3), seed=3),
    ]


def quick_cases() -> list[dict]:
    """``--quick``: the reference networks (plus the NNX adapter), seconds each."""
    cases = reference_cases()
    cases.append(dict(cases[1], name="ref_cnn_nnx", jaxal_model="nnx"))
    cases.append(case("mlp_trace_quick", {"kind": "mlp", "widths": [64, 128, 128, 10]}, 60, 20,
                      contractions=("trace",), dtypes=("float32",), flops=True, nt_batches=(0, 20)))
    return cases


def full_cases() -> list[dict]:
    """The full run: the MLP trace speed case, then agreement on mid-sized networks."""
    cnn = {"kind": "cnn", "in_shape": [8, 8, 1], "channels": [16, 32], "classes": 10}
    return [
        # neural-tangents' implementations 1 and 2 need minutes here even on 50 rows (and
        # implementation 1 cannot hold the Jacobians of all 1,700 inputs at once): all three are
        # timed on a 50x200 block through nt.batch, the fastest (3) then on the whole kernel,
        # unbatched and batched. jaxal's jacobian / ntvp take minutes per run on this network
        # (2 C P FLOPs per pair; n2 C passes): they are timed on the smaller networks below.
        case("mlp_1024_sub", BIG_MLP, 50, 200, contractions=("trace",), dtypes=("float32",), seed=14, reps=1,
             nt_batches=(50,), jaxal_impls=("structured", "auto")),
        case("mlp_1024", BIG_MLP, 1500, 200, contractions=("trace",), dtypes=("float32",), seed=14,
             nt_impls=("best:mlp_1024_sub",), jaxal_impls=("structured", "auto"), reps=3, nt_reps=3, flops=True,
             nt_batches=(0, 50)),
        case("mlp", {"kind": "mlp", "widths": [64, 256, 256, 10]}, 64, 32, seed=11),
        case("cnn", cnn, 32, 16, seed=12, reps=5),
        case("cnn_nnx", cnn, 32, 16, seed=12, jaxal_model="nnx", reps=5),
        # compilation dominates here (10-15 s a program): "auto" (which is "structured" on this
        # network) is left out
        case("resnet18", RESNET18, 8, 4, seed=13, jaxal_impls=("jacobian", "ntvp", "structured"), reps=3),
        # the same ResNet on a kernel 32x larger, trace only: speed where the run time is not ~0.1 s
        case("resnet18_64x16", RESNET18, 64, 16, seed=13, contractions=("trace",), dtypes=("float32",),
             jaxal_impls=("structured",), nt_impls=(3,), reps=3),
    ]


# --------------------------------------------------------------------------- shared helpers


def rel_error(a, ref) -> float:
    """``max|a - ref| / max|ref|`` in float64."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))


def case_arrays(c: dict) -> dict[str, np.ndarray]:
    """float64 ``params/…``, ``stats/…``, ``x1``, ``x2`` of a case, from its seed."""
    params, stats = nt_models.init(c["spec"], c["seed"])
    arrays = nt_models.flatten({"params": params, "stats": stats})
    arrays["x1"] = nt_models.inputs(c["spec"], c["n1"], c["seed"] + 1000)
    arrays["x2"] = nt_models.inputs(c["spec"], c["n2"], c["seed"] + 2000)
    return arrays


def unpack(arrays: dict, dtype: str) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """``(params, stats, x1, x2)`` cast to ``dtype``."""
    tree = lambda p: nt_models.cast(nt_models.unflatten(arrays, p), dtype)  # noqa: E731
    return tree("params"), tree("stats"), arrays["x1"].astype(dtype), arrays["x2"].astype(dtype)


def timed(fn, reps: int) -> tuple[Any, float, float]:
    """``(result, first-call seconds, min of reps further calls)``."""
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t
    runs = []
    for _ in range(reps):
        t = time.perf_counter()
        out = jax.block_until_ready(fn())
        runs.append(time.perf_counter() - t)
    return out, first, min(runs) if runs else first


def num_classes(spec: dict) -> int:
    return spec["widths"][-1] if spec["kind"] == "mlp" else spec["classes"]


# --------------------------------------------------------------------------- neural-tangents side (worker)


def nt_settings(contraction: str) -> tuple[tuple, tuple, bool]:
    """``(trace_axes, diagonal_axes, with_x2)`` of a contraction for ``nt.empirical_ntk_fn``."""
    return {"trace": ((-1,), (), True), "full": ((), (), True), "diagonal": ((), (0,), False),
            "trace_diagonal": ((-1,), (0,), False)}[contraction]


def nt_kernel_fn(spec: dict, stats: dict, contraction: str, impl: int):
    """A jitted ``(x1, x2, params) -> kernel`` in jaxal's convention (trace = sum over logits)."""
    trace_axes, diagonal_axes, _ = nt_settings(contraction)
    f = nt_models.apply_fn(spec, stats)
    fn = nt.empirical_ntk_fn(f, trace_axes=trace_axes, diagonal_axes=diagonal_axes, vmap_axes=0,
                             implementation=nt.NtkImplementation(impl))
    scale = float(num_classes(spec)) if trace_axes else 1.0
    return jax.jit(lambda x1, x2, p: fn(x1, x2, p) * scale)


def patch_nt_for_jax_053() -> None:
    """Restore two names neural-tangents 0.6.5's STRUCTURED_DERIVATIVES reads from ``jax.interpreters.ad``.

    It was written against jax 0.4.2x, whose ``ad`` module re-exported ``source_info_util``
    and ``config``; jax 0.5.3 does not, and implementation 3 fails with an AttributeError.
    Both are the same objects under their jax 0.5.3 names; nothing else is changed.
    """
    from jax._src import source_info_util
    from jax.interpreters import ad

    for name, value in (("source_info_util", source_info_util), ("config", jax.config)):
        if not hasattr(ad, name):
            setattr(ad, name, value)


def nt_timed(fn, x1, x2, params, reps: int, batch: int) -> tuple[Any, float, float]:
    """:func:`timed` for neural-tangents; with ``batch``, ``nt.batch`` and a one-block first call."""
    if not batch:
        return timed(lambda: fn(x1, x2, params), reps)
    batched = nt.batch(fn, batch_size=batch, device_count=0)
    _, first, _ = timed(lambda: fn(x1[:batch], None if x2 is None else x2[:batch], params), 0)
    k, _, best = timed(lambda: batched(x1, x2, params), max(reps, 1) - 1)
    return k, first, best


def worker(job_path: str, out_path: str) -> None:
    """Run every neural-tangents task of a job file; write kernels and a ``__timings__`` JSON."""
    patch_nt_for_jax_053()
    jax.config.update("jax_enable_x64", True)  # float32 tasks stay float32: every array is cast
    job = np.load(job_path, allow_pickle=False)
    tasks = json.loads(str(job["__tasks__"]))
    arrays = {k: job[k] for k in job.files if k != "__tasks__"}
    out, timings = {}, []
    for i, t in enumerate(tasks):
        sub = {k[len(t["case"]) + 1:]: v for k, v in arrays.items() if k.startswith(t["case"] + "/")}
        params, stats, x1, x2 = unpack(sub, t["dtype"])
        _, _, with_x2 = nt_settings(t["contraction"])
        row = dict(t, load_before=os.getloadavg()[0])
        try:
            fn = nt_kernel_fn(t["spec"], stats, t["contraction"], t["impl"])
            k, first, best = nt_timed(fn, x1, x2 if with_x2 else None, params, t["reps"], t["batch"])
            out[f"t{i}"] = np.asarray(k)
            row.update(first_s=first, min_s=best, error=None)
        except Exception as e:  # noqa: BLE001 - a failing implementation is a result, not a crash
            row.update(first_s=None, min_s=None, error=f"{type(e).__name__}: {str(e)[:300]}")
        row["load_after"] = os.getloadavg()[0]
        timings.append(row)
        print(f"[nt] {t['case']} {t['contraction']} impl={t['impl']} {t['dtype']}: "
              f"first {row['first_s']} min {row['min_s']} {row['error'] or ''}", flush=True)
    versions = {name: importlib.metadata.version(name) for name in ("jax", "jaxlib", "neural-tangents", "numpy")}
    np.savez(out_path, __timings__=json.dumps(timings), __versions__=json.dumps(versions), **out)


# --------------------------------------------------------------------------- environment


def ensure_venv(nt_python: str | None) -> str:
    """The neural-tangents interpreter: ``--nt-python``, or the cached venv (created on first use)."""
    if nt_python:
        return nt_python
    py = VENV / "bin" / "python"
    marker = VENV / "requirements.txt"
    if py.exists() and marker.exists() and marker.read_text() == REQUIREMENTS.read_text():
        return str(py)
    print(f"creating {VENV} from {REQUIREMENTS.name} (downloads ~700 MB: TensorFlow comes along)", flush=True)
    subprocess.run([os.environ.get("NT_BASE_PYTHON", sys.executable), "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)
    marker.write_text(REQUIREMENTS.read_text())
    return str(py)


def run_worker(nt_python: str, cases: list[dict], tasks: list[dict], timeout: float) -> tuple[dict, list, dict]:
    """Write the job, run the worker in the neural-tangents environment, read its output."""
    with tempfile.TemporaryDirectory() as tmp:
        job, out = os.path.join(tmp, "job.npz"), os.path.join(tmp, "out.npz")
        arrays = {f"{c['name']}/{k}": v for c in cases for k, v in case_arrays(c).items()}
        np.savez(job, __tasks__=json.dumps(tasks), **arrays)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
        env.pop("XLA_FLAGS", None)  # the same XLA optimisation level as the jaxal side below
        subprocess.run([nt_python, __file__, "--worker", job, out], check=True, timeout=timeout, env=env)
        res = np.load(out, allow_pickle=False)
        kernels = {k: res[k] for k in res.files if not k.startswith("__")}
        return kernels, json.loads(str(res["__timings__"])), json.loads(str(res["__versions__"]))


def nt_tasks(cases: list[dict], timings_so_far: list[dict]) -> list[dict]:
    """Every (case, contraction, NT implementation, dtype) task; ``best:CASE`` picks the fastest there."""
    tasks = []
    for c in cases:
        for impl in c["nt_impls"]:
            if isinstance(impl, str):
                impl = best_nt_impl(timings_so_far, impl.split(":", 1)[1])
            for batch in c["nt_batches"]:
                for con in c["contractions"]:
                    for dt in c["dtypes"]:
                        tasks.append(dict(case=c["name"], spec=c["spec"], contraction=con, impl=impl, dtype=dt,
                                          reps=c["nt_reps"], n1=c["n1"], n2=c["n2"], batch=batch))
    return tasks


def best_nt_impl(timings: list[dict], case_name: str) -> int:
    """The neural-tangents implementation with the smallest min time on ``case_name``."""
    rows = [t for t in timings if t["case"] == case_name and t["side"] == "neural_tangents" and t["min_s"] is not None]
    if not rows:  # that case was not run (--only): structured derivatives, fastest on MLPs in its paper
        return 3
    return min(rows, key=lambda t: t["min_s"])["impl"]


# --------------------------------------------------------------------------- jaxal side


def jaxal_model(c: dict, params: dict, stats: dict):
    """A :class:`jaxal.Model` of a case: ``from_functions`` on nt_models, or ``from_nnx``."""
    if c["jaxal_model"] == "nnx":
        return jaxal.from_nnx(nnx_cnn(c["spec"], params))
    features, head = nt_models.functions(c["spec"], stats)
    return jaxal.from_functions(features, head, params, dense_head=True)


def nnx_cnn(spec: dict, params: dict):
    """The ``cnn`` spec as a Flax NNX module holding ``params`` (same layers, same names)."""
    from flax import nnx

    class CNN(nnx.Module):
        def __init__(self, c_in: int, c1: int, c2: int, classes: int, rngs: nnx.Rngs):
            self.conv_0 = nnx.Conv(c_in, c1, (3, 3), padding="SAME", rngs=rngs)
            self.conv_1 = nnx.Conv(c1, c2, (3, 3), strides=2, padding="SAME", rngs=rngs)
            self.head = nnx.Linear(c2, classes, rngs=rngs)

        def features(self, x):
            h = nnx.relu(self.conv_1(nnx.relu(self.conv_0(x))))
            return jnp.mean(h, axis=(1, 2))

    m = CNN(spec["in_shape"][-1], *spec["channels"], spec["classes"], rngs=nnx.Rngs(0))
    state = nnx.state(m, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map(jnp.asarray, {**params["body"], "head": params["head"]}))
    nnx.update(m, state)
    return m


def jaxal_call(model, x1, x2, contraction: str, impl: str):
    """``() -> kernel`` for a jaxal contraction name."""
    if contraction == "trace_diagonal":
        return lambda: ntk.kernel(model, x1, contraction="trace", diagonal=True, implementation=impl)
    if contraction == "diagonal":
        return lambda: ntk.kernel(model, x1, contraction="diagonal", implementation=impl)
    return lambda: ntk.kernel(model, x1, x2, contraction=contraction, implementation=impl)


def run_jaxal(c: dict) -> tuple[dict, list[dict]]:
    """jaxal kernels ``{(contraction, impl, dtype): array}`` and timing rows of a case."""
    arrays = case_arrays(c)
    kernels, rows = {}, []
    for dt in c["dtypes"]:
        with jax.enable_x64(dt == "float64"):
            params, stats, x1, x2 = unpack(arrays, dt)
            model = jaxal_model(c, params, stats)
            for con in c["contractions"]:
                for impl in c["jaxal_impls"]:
                    load = os.getloadavg()[0]
                    k, first, best = timed(jaxal_call(model, x1, x2, con, impl), c["reps"])
                    kernels[(con, impl, dt)] = np.asarray(k)
                    rows.append(dict(case=c["name"], side="jaxal", impl=impl, contraction=con, dtype=dt, n1=c["n1"],
                                     n2=c["n2"], first_s=first, min_s=best, load_before=load,
                                     load_after=os.getloadavg()[0]))
                    print(f"[jaxal] {c['name']} {con} {impl} {dt}: first {first:.3f} min {best:.4f}", flush=True)
    return kernels, rows


# --------------------------------------------------------------------------- FLOPs


def mlp_trace_flops(widths: list[int], n1: int, n2: int) -> dict:
    """FLOPs of jaxal's structured ``trace`` kernel of an MLP (multiply-add = 2).

    Per example (``prepare``): one forward pass, ``2 Σ_l d_l d_{l+1}``, and ``C``
    backward passes for the layer-output cotangents ``δ_l``, ``2 C Σ_{l≥1} d_l d_{l+1}``
    (no gradient w.r.t. the input). Per pair (``pair``): for every Dense layer
    ``(a·a')`` (``2 d_l``) times ``Σ_c δ_c·δ'_c`` (``2 C d_{l+1}``), plus the bias
    Jacobians ``[C, d_{l+1}]`` contracted (``2 C d_{l+1}``). Elementwise work (ReLU
    masks, additions) is left out: it is O(width), not O(width²).
    """
    c = widths[-1]
    fwd = 2 * sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    bwd = 2 * c * sum(a * b for a, b in zip(widths[1:-1], widths[2:]))
    pair = sum(2 * a + 2 * c * b + 2 * c * b for a, b in zip(widths[:-1], widths[1:]))
    return dict(per_example=fwd + bwd, per_pair=pair, prepare=(n1 + n2) * (fwd + bwd), pairs=n1 * n2 * pair,
                total=(n1 + n2) * (fwd + bwd) + n1 * n2 * pair)


def xla_flops(c: dict) -> dict:
    """XLA's own FLOP count (``cost_analysis``) of the structured engine's programs on the whole blocks.

    A cross-check of :func:`mlp_trace_flops`: ``prepare`` on x1 and on x2, ``pair`` on
    their features (compiled, not run; the chunked run does the same work in pieces).
    """
    params, stats, x1, x2 = unpack(case_arrays(c), "float32")
    model = jaxal_model(c, params, stats)
    split = split_params(model.params, "all")
    eng = engine_for(model, split, "trace", "structured", jax.ShapeDtypeStruct(x1.shape[1:], x1.dtype), 2**31)
    cost = lambda f, *a: jax.jit(f).lower(*a).compile().cost_analysis()  # noqa: E731
    flops = lambda ca: float((ca[0] if isinstance(ca, list) else ca)["flops"])  # noqa: E731
    f1 = jax.eval_shape(eng.prepare, split.selected, split.fixed, x1)
    f2 = jax.eval_shape(eng.prepare, split.selected, split.fixed, x2)
    prep = flops(cost(eng.prepare, split.selected, split.fixed, x1)) + flops(cost(eng.prepare, split.selected,
                                                                                   split.fixed, x2))
    pair = flops(cost(eng.pair, split.selected, split.fixed, f1, f2))
    return dict(prepare=prep, pairs=pair, total=prep + pair)


def matmul_flops_per_s(n: int = 2048, reps: int = 5) -> dict:
    """This machine's float32 GEMM rate: ``2 n³ / min time`` of a jitted ``[n, n] @ [n, n]``."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    mm = jax.jit(lambda a, b: a @ b)
    _, _, best = timed(lambda: mm(a, a), reps)
    return dict(n=n, min_s=best, flops_per_s=2 * n**3 / best)


# --------------------------------------------------------------------------- comparison and report


def agreement(c: dict, jk: dict, nt_k: dict, tasks: list[dict]) -> list[dict]:
    """One row per (contraction, jaxal impl, NT impl, dtype) with the max-norm relative error."""
    rows = []
    for i, t in enumerate(tasks):
        if t["case"] != c["name"] or f"t{i}" not in nt_k:
            continue
        for impl in c["jaxal_impls"]:
            key = (t["contraction"], impl, t["dtype"])
            if key in jk:
                rows.append(dict(case=c["name"], model=c["spec"]["kind"] + ("(nnx)" if c["jaxal_model"] == "nnx" else ""),
                                 contraction=t["contraction"], jaxal_impl=impl, nt_impl=t["impl"], dtype=t["dtype"],
                                 max_rel_error=rel_error(jk[key], nt_k[f"t{i}"])))
    return rows


def float32_accuracy(c: dict, jk: dict, nt_k: dict, tasks: list[dict]) -> list[dict]:
    """Each float32 kernel, of either library, against the float64 one (jaxal ``structured``).

    The float64 kernels of every implementation of both libraries agree to ~1e-15, so
    any of them is the exact kernel at float32's scale; this says which side a float32
    disagreement comes from.
    """
    rows = []
    for con in c["contractions"]:
        truth = jk.get((con, "structured", "float64"))
        if truth is None:
            continue
        for impl in c["jaxal_impls"]:
            if (con, impl, "float32") in jk:
                rows.append(dict(case=c["name"], contraction=con, side="jaxal", impl=impl,
                                 max_rel_error_vs_f64=rel_error(jk[(con, impl, "float32")], truth)))
        for i, t in enumerate(tasks):
            if (t["case"], t["contraction"], t["dtype"]) == (c["name"], con, "float32") and f"t{i}" in nt_k:
                rows.append(dict(case=c["name"], contraction=con, side="neural_tangents", impl=t["impl"],
                                 max_rel_error_vs_f64=rel_error(nt_k[f"t{i}"], truth)))
    return rows


def ratios(timing: list[dict]) -> dict:
    """Per case, float32 ``trace``: jaxal best / neural-tangents best min time."""
    out = {}
    for name in sorted({t["case"] for t in timing}):
        rows = [t for t in timing if t["case"] == name and t["contraction"] == "trace" and t["dtype"] == "float32"
                and t.get("min_s") is not None]
        j = [t for t in rows if t["side"] == "jaxal"]
        n = [t for t in rows if t["side"] == "neural_tangents"]
        if j and n:
            jb, nb = min(j, key=lambda t: t["min_s"]), min(n, key=lambda t: t["min_s"])
            out[name] = dict(jaxal_best=jb["impl"], jaxal_min_s=jb["min_s"], nt_best=nb["impl"],
                             nt_best_label=impl_label(nb), nt_min_s=nb["min_s"],
                             jaxal_over_nt=jb["min_s"] / nb["min_s"], n1=jb["n1"], n2=jb["n2"])
    return out


def impl_label(t: dict) -> str:
    """``structured_derivatives``, ``structured_derivatives (nt.batch 50)``, or a jaxal name."""
    name = NT_IMPLS.get(t["impl"], t["impl"])
    return f"{name} (nt.batch {t['batch']})" if t.get("batch") else name


def sci(v: float | None) -> str:
    """``1.2e-07``, or ``-`` for a missing number."""
    return "-" if v is None else f"{v:.2e}"


def loads(avg) -> str:
    return ", ".join(f"{v:.1f}" for v in avg)


def markdown(result: dict) -> str:
    """The Markdown report: agreement, timings, ratios, FLOP/s."""
    lines = ["# jaxal vs neural-tangents", "",
             f"`{result['command']}` on {result['machine']['platform']}, {result['machine']['cpus']} CPUs; "
             f"load average (1, 5, 15 min) {loads(result['machine']['load_average_start'])} at the start, "
             f"{loads(result['machine']['load_average_end'])} at the end. jaxal side: jax {result['versions']['jaxal_side']['jax']}; "
             f"neural-tangents side: {result['versions']['nt_side']}.", "",
             f"Error: {result['error_definition']}", "",
             f"**max relative error: float32 {sci(result['max_rel_error_f32'])}, float64 "
             f"{sci(result['max_rel_error_f64'])}**; against neural-tangents implementation "
             + "; ".join(f"{i}: {sci(result['max_rel_error_by_nt_impl']['float32'][str(i)])} (float32), "
                         f"{sci(result['max_rel_error_by_nt_impl']['float64'][str(i)])} (float64)" for i in NT_IMPLS)
             + ".", "",
             "## Agreement: max relative error against neural-tangents implementation 1 / 2 / 3", "",
             "| case | model | contraction | jaxal impl | float32: NT 1 | NT 2 | NT 3 | float64: NT 1 | NT 2 | NT 3 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    cells: dict = {}
    for r in result["agreement"]:
        k = (r["case"], r["model"], r["contraction"], r["jaxal_impl"])
        cells.setdefault(k, {})[(r["dtype"], r["nt_impl"])] = r["max_rel_error"]
    for (cs, model, con, impl), v in cells.items():
        errs = " | ".join(f"{v[(d, i)]:.1e}" if (d, i) in v else "-" for d in DTYPES for i in NT_IMPLS)
        lines.append(f"| {cs} | {model} | {con} | {impl} | {errs} |")
    if result.get("float32_accuracy"):
        f = result["float32_error_vs_float64"]
        lines += ["", "## Which side a float32 difference comes from: error against the float64 kernel", "",
                  f"Largest float32 error against the float64 kernel: jaxal {sci(f['jaxal'])} (every implementation); "
                  "neural-tangents " + ", ".join(f"implementation {i} {sci(f['neural_tangents'][str(i)])}"
                                                 for i in NT_IMPLS) + ".", "",
                  "| case | contraction | jaxal (max over impls) | NT 1 | NT 2 | NT 3 |", "|---|---|---|---|---|---|"]
        acc: dict = {}
        for r in result["float32_accuracy"]:
            cell = acc.setdefault((r["case"], r["contraction"]), {})
            key = "jaxal" if r["side"] == "jaxal" else r["impl"]
            cell[key] = max(cell.get(key, 0.0), r["max_rel_error_vs_f64"])
        for (cs, con), v in acc.items():
            errs = " | ".join(f"{v[k]:.1e}" if k in v else "-" for k in ("jaxal", *NT_IMPLS))
            lines.append(f"| {cs} | {con} | {errs} |")
    lines += ["", "## Times (seconds; min of N after a first call that compiles; compile ≈ first - min)", "",
              "`nt.batch B`: neural-tangents through `nt.batch` in B-blocks; its first call is one block "
              "(compile + run), its min the whole kernel.", "",
              "| case | n1×n2 | contraction | dtype | side | impl | first call | min | load |",
              "|---|---|---|---|---|---|---|---|---|"]
    for t in result["timing"]:
        fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
        note = f" ({t['error'][:60]})" if t.get("error") else ""
        lines.append(f"| {t['case']} | {t['n1']}×{t['n2']} | {t['contraction']} | {t['dtype']} | {t['side']} | "
                     f"{impl_label(t)}{note} | {fmt(t['first_s'])} | {fmt(t['min_s'])} | {t['load_before']:.1f} |")
    lines += ["", "## jaxal best / neural-tangents best (float32 trace)", "",
              "| case | n1×n2 | jaxal | s | neural-tangents | s | jaxal / NT | NT / jaxal |",
              "|---|---|---|---|---|---|---|---|"]
    for name, r in result["ratios"].items():
        lines.append(f"| {name} | {r['n1']}×{r['n2']} | {r['jaxal_best']} | {r['jaxal_min_s']:.4g} | "
                     f"{r['nt_best_label']} | {r['nt_min_s']:.4g} | {r['jaxal_over_nt']:.3g} | "
                     f"{1 / r['jaxal_over_nt']:.3g} |")
    if result.get("flops"):
        fl = result["flops"]
        lines += ["", "## FLOP/s of jaxal's structured MLP trace kernel", "",
                  f"{fl['case']}: {fl['count']['total']:.3e} FLOPs (prepare {fl['count']['prepare']:.3e}, pairs "
                  f"{fl['count']['pairs']:.3e}; XLA's cost analysis counts {fl['xla_count']['total']:.3e}) in "
                  f"{fl['min_s']:.4g} s = {fl['achieved_flops_per_s']:.3e} FLOP/s; "
                  f"float32 GEMM {fl['matmul']['n']}³ on this machine, same run: "
                  f"{fl['matmul']['flops_per_s']:.3e} FLOP/s; fraction {fl['fraction_of_matmul']:.2f}."]
    if result.get("mlp_trace_speedup_vs_nt_best") is not None:
        lines += ["", f"**MLP trace speed-up vs neural-tangents' best: {result['mlp_trace_speedup_vs_nt_best']:.3g}×**"]
    return "\n".join(lines) + "\n"


def nt_timing_rows(tasks: list[dict], nt_t: list[dict]) -> list[dict]:
    """The worker's timing rows in the report's shape."""
    return [dict(case=t["case"], side="neural_tangents", impl=t["impl"], contraction=t["contraction"],
                 dtype=t["dtype"], n1=t["n1"], n2=t["n2"], batch=t["batch"], first_s=t["first_s"], min_s=t["min_s"],
                 load_before=t["load_before"], load_after=t["load_after"], error=t["error"]) for t in nt_t]


def run_benchmark(cases: list[dict], nt_python: str, timeout: float, path: str | None = None) -> dict:
    """Every case on both sides; the ``vs_neural_tangents.json`` dictionary (rewritten after each case)."""
    load_start = os.getloadavg()
    timing, agree, acc, nt_versions, flops = [], [], [], {}, None
    for c in cases:
        if path and timing:
            write_result(summarize(timing, agree, acc, flops, cases, nt_versions, load_start), path)
        tasks = nt_tasks([c], timing)
        nt_k, nt_t, nt_versions = run_worker(nt_python, [c], tasks, timeout)
        timing += nt_timing_rows(tasks, nt_t)
        jk, jrows = run_jaxal(c)
        timing += jrows
        agree += agreement(c, jk, nt_k, tasks)
        acc += float32_accuracy(c, jk, nt_k, tasks)
        if c["flops"]:
            flops = flops_report(c, jrows)
    result = summarize(timing, agree, acc, flops, cases, nt_versions, load_start)
    if path:
        write_result(result, path)
    return result


def write_result(result: dict, path: str) -> None:
    """The JSON and its Markdown table next to it."""
    pathlib.Path(path).write_text(json.dumps(result, indent=1))
    pathlib.Path(path).with_suffix(".md").write_text(markdown(result))
    print(f"wrote {path} and {pathlib.Path(path).with_suffix('.md')}", flush=True)


def summarize(timing: list, agree: list, acc: list, flops: dict | None, cases: list, nt_versions: dict,
              load_start) -> dict:
    """The report dictionary from the rows so far."""
    rat = ratios(timing)
    mlp_case = flops["case"] if flops else next((c["name"] for c in reversed(cases) if c["flops"]), None)
    speed = None if mlp_case not in rat else 1.0 / rat[mlp_case]["jaxal_over_nt"]
    err = lambda d: max([r["max_rel_error"] for r in agree if r["dtype"] == d], default=None)  # noqa: E731
    by_impl = {d: {str(i): max([r["max_rel_error"] for r in agree if r["dtype"] == d and r["nt_impl"] == i],
                               default=None) for i in NT_IMPLS} for d in DTYPES}
    vs_f64 = lambda side, impl=None: max([r["max_rel_error_vs_f64"] for r in acc if r["side"] == side  # noqa: E731
                                          and impl in (None, r["impl"])], default=None)
    return dict(
        max_rel_error_f32=err("float32"), max_rel_error_f64=err("float64"), mlp_trace_speedup_vs_nt_best=speed,
        max_rel_error_by_nt_impl=by_impl,
        float32_error_vs_float64=dict(jaxal=vs_f64("jaxal"),
                                      neural_tangents={str(i): vs_f64("neural_tangents", i) for i in NT_IMPLS}),
        float32_accuracy=acc,
        mlp_trace_case=mlp_case, error_definition="max|K_jaxal - K_nt| / max|K_nt| per cell (trace kernels of "
        "neural-tangents multiplied by C: its trace_axes is the mean over logits)",
        machine=dict(platform=platform.platform(), cpus=os.cpu_count(), load_average_start=load_start,
                     load_average_end=os.getloadavg()),
        versions=dict(jaxal_side=dict(jax=jax.__version__, jaxal=getattr(jaxal, "__version__", "?")),
                      nt_side=nt_versions),
        command=" ".join(["python", "benchmarks/vs_neural_tangents.py"] + sys.argv[1:]),
        cases=[c["name"] for c in cases], ratios=rat, flops=flops, agreement=agree, timing=timing)


def flops_report(c: dict, jrows: list[dict]) -> dict:
    """Achieved FLOP/s of the structured trace kernel next to this machine's GEMM rate."""
    row = min((r for r in jrows if r["impl"] in ("structured", "auto") and r["contraction"] == "trace"),
              key=lambda r: r["min_s"])
    count = mlp_trace_flops(c["spec"]["widths"], c["n1"], c["n2"])
    xla = xla_flops(c)
    mm = matmul_flops_per_s()
    achieved = count["total"] / row["min_s"]
    return dict(case=c["name"], impl=row["impl"], min_s=row["min_s"], count=count, xla_count=xla,
                achieved_flops_per_s=achieved, achieved_flops_per_s_xla_count=xla["total"] / row["min_s"],
                matmul=mm, fraction_of_matmul=achieved / mm["flops_per_s"], load=os.getloadavg()[0])


# --------------------------------------------------------------------------- reference kernels


def write_reference(nt_python: str, timeout: float, path: pathlib.Path = REFERENCE) -> None:
    """Tiny neural-tangents kernels (implementation 1) for ``tests/test_vs_neural_tangents.py``.

    Stored: each case's spec, float64 params / stats / inputs, and its kernels per
    contraction and dtype in jaxal's convention; ``__meta__`` holds the versions and the
    largest disagreement between neural-tangents' three implementations.
    """
    cases = [dict(c, reps=0, nt_reps=0) for c in reference_cases()]
    tasks = nt_tasks(cases, [])
    kernels, timings, versions = run_worker(nt_python, cases, tasks, timeout)
    out, spread = {}, 0.0
    for c in cases:
        out.update({f"{c['name']}/{k}": v for k, v in case_arrays(c).items()})
        out[f"{c['name']}/spec"] = np.array(json.dumps(c["spec"]))
        for con in c["contractions"]:
            for dt in c["dtypes"]:
                ks = {t["impl"]: kernels[f"t{i}"] for i, t in enumerate(tasks)
                      if (t["case"], t["contraction"], t["dtype"]) == (c["name"], con, dt) and f"t{i}" in kernels}
                out[f"{c['name']}/kernel/{con}/{dt}"] = ks[1]
                spread = max([spread] + [rel_error(k, ks[1]) for k in ks.values()])
    meta = dict(versions=versions, nt_implementation="JACOBIAN_CONTRACTION (1)", nt_impls_max_rel_spread=spread,
                command="python benchmarks/vs_neural_tangents.py --write-reference",
                errors=[t for t in timings if t["error"]])
    out["__meta__"] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB); NT implementations agree to {spread:.1e}")


def run_live(nt_python: str, timeout: float, path: pathlib.Path = LIVE_OUT) -> bool:
    """``tests/test_vs_neural_tangents.py`` under pytest in the neural-tangents environment.

    jaxal's NTK code runs on jax 0.5.3, so there the test's live cases run too: every
    jaxal implementation against ``implementation="neural_tangents"`` (neural-tangents
    called now) on every reference network, contraction and dtype. Writes the outcome.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    cmd = [nt_python, "-m", "pytest", "-q", "-rs", "-o", "addopts=", "-p", "no:cacheprovider",
           str(ROOT / "tests" / "test_vs_neural_tangents.py")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout.strip().splitlines()
    print("\n".join(out[-15:]), flush=True)
    versions = subprocess.run([nt_python, "-c", "import importlib.metadata as m, json; print(json.dumps("
                               "{n: m.version(n) for n in ('jax', 'jaxlib', 'neural-tangents', 'flax', 'pytest')}))"],
                              capture_output=True, text=True, env=env, check=True).stdout
    result = dict(command="python benchmarks/vs_neural_tangents.py --live", passed=proc.returncode == 0,
                  returncode=proc.returncode, summary=out[-1] if out else "", skipped=[l for l in out if "SKIP" in l],
                  versions=json.loads(versions), load_average=os.getloadavg())
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}", flush=True)
    return result["passed"]


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a minute or two)")
    ap.add_argument("--write-reference", action="store_true", help=f"write {REFERENCE.relative_to(ROOT)}")
    ap.add_argument("--live", action="store_true", help="run tests/test_vs_neural_tangents.py in the "
                    "neural-tangents environment, where its live comparisons run (writes "
                    f"{LIVE_OUT.relative_to(ROOT)})")
    ap.add_argument("--nt-python", default=None, help="python of an environment with neural-tangents 0.6.5")
    ap.add_argument("--json", default=None, help=f"output JSON (default {JSON_OUT.relative_to(ROOT)}; "
                    "--quick writes none unless given)")
    ap.add_argument("--only", default=None, help="comma-separated case names to run")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per neural-tangents worker run")
    ap.add_argument("--worker", nargs=2, metavar=("JOB", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return None
    nt_python = ensure_venv(args.nt_python)
    if args.write_reference:
        write_reference(nt_python, args.timeout)
        return None
    if args.live:
        sys.exit(0 if run_live(nt_python, args.timeout) else 1)
    cases = quick_cases() if args.quick else full_cases()
    if args.only:
        cases = [c for c in cases if c["name"] in args.only.split(",")]
    path = args.json or (None if args.quick else str(JSON_OUT))
    result = run_benchmark(cases, nt_python, args.timeout, path)
    print(f"max rel error f32 {result['max_rel_error_f32']}, f64 {result['max_rel_error_f64']}; "
          f"MLP trace speed-up vs neural-tangents best: {result['mlp_trace_speedup_vs_nt_best']}")
    return result


if __name__ == "__main__":
    main()
