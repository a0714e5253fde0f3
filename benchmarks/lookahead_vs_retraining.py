"""NTK look-ahead against actually retraining: per-candidate fidelity, speed, and an AL run.

Question: does the empirical-NTK look-ahead predict how the network's outputs on a pool
``S`` change when one candidate ``x'`` is added with its pseudo-label and the network is
retrained, and how much faster is it than retraining once per candidate?

Protocol (per width ``w`` and seed):

- Data: MNIST-1D (built offline), ``|L|`` labeled points, a pool ``S`` of ``|S|`` points,
  ``m`` candidates drawn from ``S``. Model: jaxal's ReLU MLP with widths ``(w, w)``
  (Flax defaults), trained on ``L`` with the squared loss (full-batch Adam) to a small
  residual.
- Pseudo-labels ``y' = one-hot argmax f(x')`` are computed **once** per candidate and
  shared by every method below.
- **Retraining (the truth).** Deterministic full-batch gradient descent from the trained
  weights ``θ₀`` on ``L ∪ {(x', y')}`` with the mean squared loss
  ``(1/n) Σ_i ‖f(x_i) − y_i‖²`` (``n = |L| + 1``) and step ``η = 0.9 n/λ_max``, i.e. every
  example's squared error weighted by ``a = η/n = 0.9/λ_max``: the linearised residuals
  move by ``r ← (I − 2aΘ) r``, stable up to ``2aλ < 2``. ``λ_max`` is the largest
  eigenvalue of the empirical NTK Gram over all ``C`` logits (``[nC, nC]``) on
  ``L ∪ {x'}``, maximised over the seed's candidates, so one ``a`` serves every run.
  ``T`` steps, the fewest (multiple of 10, capped) for which the linearisation predicts
  that the median candidate's own residual is fitted to ``≥ --fit-target`` (98%;
  ``--fit-quantile 0`` asks it of every candidate, about twice the steps); the fraction
  actually fitted, ``1 − ‖y' − f_T(x')‖/‖y' − f₀(x')‖``, is reported (median, min).
  All candidates' runs are one compiled call: ``lax.fori_loop`` over steps, ``vmap``
  over a small chunk of candidates, ``lax.map`` over chunks. The **drift** — the same
  ``T`` steps on ``L`` alone, same ``a`` — is run once and subtracted:
  ``Δ_true(x') = f_T^{L∪x'}(S) − f_T^{L}(S)`` (``[|S|, C]``).
- **NTK look-ahead** (jaxal, single-logit empirical kernel ``⊗ I_C``): the
  candidate-specific part ``Δ_NTK(x') = Σ(·, x')/σ²(x') (y' − f_lin(x'))`` on ``S``, from
  one :func:`jaxal.lookahead.core.init`. Its scores are checked against
  :func:`jaxal.lookahead.core.scores` (with the ``L``-fit offset removed).
- Baselines, same pseudo-labels: the same formula with the **infinite-width** kernels
  (``approximation="infinite"``: the standard-parametrisation limit of this very MLP;
  ``"infinite_ntk_param"``: the NTK-parametrisation limit); **one-step SGD**
  (:func:`jaxal.lookahead.baselines.one_step_sgd_outputs`, default step fitting the
  candidate's residual); and, for rankings only, the **residual** ``‖y' − f(x')‖``.
- Fidelity per method: median over candidates of ``cos(Δ_true, Δ)`` (flattened over
  ``S × C``), median norm ratio ``‖Δ‖/‖Δ_true‖``, Spearman correlation between the
  candidates' MLMOC-style scores ``Σ_{x∈S} ‖Δ(x)‖₂`` and the true ones, top-10 overlap.
- Speed: seconds per acquisition (scoring all ``|S|`` candidates) for naive retraining
  (the compiled GD run over all candidates, per candidate, × ``|S|``; compile time
  apart) and for the NTK look-ahead (kernel, one Cholesky, all scores; min of
  ``--repeats`` runs after a compile run, compile time reported apart); median over
  seeds. The load average is recorded.
- **Active learning** (the paper's Fig. 1a, small): a few rounds choosing, from a random
  candidate subset of the pool each round, by naive-retraining MLMOC (the protocol
  above, drift-subtracted), by NTK MLMOC (the library's scores), or at random; the
  network is retrained from the same initialisation each round. Test accuracy per
  round and query seconds (a second call of the round's query: the first compiles for
  the round's shapes and is reported apart).

    python benchmarks/lookahead_vs_retraining.py [--quick] [--json OUT] [--png OUT]

``--json`` writes ``speedup_vs_naive``, ``fidelity_cosine_median`` and
``fidelity_spearman`` (width 512 or the first width, median over seeds) at the top level,
``ntk_breakdown`` (the look-ahead query part by part against each part's FLOP or memory
floor, see :func:`ntk_breakdown`) and ``ntk_total_over_floor``, and everything else
below them.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

from jaxal import data, models
from jaxal.lookahead import baselines, core, init_from_model, kernel_blocks
from jaxal.ntk import kernel as ntk_kernel

Array = jax.Array
METHODS = ("ntk", "infinite_standard", "infinite_ntk_param", "one_step_sgd", "residual")
KERNEL_OF = {"ntk": "empirical", "infinite_standard": "infinite", "infinite_ntk_param": "infinite_ntk_param"}
TOP_K = 10


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


# ------------------------------------------------------------------- training


def sq_loss_sum(module, params, x: Array, y: Array) -> Array:
    """``Σ_i ‖f(x_i) − y_i‖²`` (``y`` one-hot)."""
    return jnp.sum((module.apply({"params": params}, x) - y) ** 2)


@functools.lru_cache(maxsize=None)
def _adam_trainer(module, max_steps: int, tol: float, lr: float) -> Callable:
    tx = optax.adam(lr)

    @jax.jit
    def run(params, x, y):
        n = x.shape[0]

        def cond(c):
            return (c[2] < max_steps) & (c[3] > tol)

        def body(c):
            p, o, t, _ = c
            loss, g = jax.value_and_grad(lambda q: sq_loss_sum(module, q, x, y) / n)(p)
            u, o = tx.update(g, o, p)
            return optax.apply_updates(p, u), o, t + 1, loss

        p, _, t, _ = jax.lax.while_loop(cond, body, (params, tx.init(params), 0, jnp.inf))
        return p, t, sq_loss_sum(module, p, x, y) / n

    return run


def train_labeled(module, params, x: Array, y: Array, max_steps: int, tol: float, lr: float = 1e-3):
    """Full-batch Adam on the mean squared loss until it is ``≤ tol`` (or ``max_steps``)."""
    p, t, loss = _adam_trainer(module, max_steps, tol, lr)(params, x, y)
    return p, int(t), float(loss)


@functools.lru_cache(maxsize=None)
def make_gd(module, chunk: int) -> tuple[Callable, Callable]:
    """Compiled full-batch GD: ``θ ← θ − a ∇ Σ_i ‖f(x_i) − y_i‖²`` for ``steps`` steps.

    ``drift(params, x, y, a, steps)`` on one set; ``per_candidate(params, xl, yl, xc, yc,
    a, steps, x_eval)`` runs one GD per candidate on ``L ∪ {(x'_j, y'_j)}`` for all
    candidates ``xc [m, d]``, ``yc [m, C]`` in one compiled call (``lax.map`` over chunks
    of ``chunk`` candidates, ``vmap`` inside a chunk: small chunks keep each candidate's
    weights in cache) and returns the outputs on ``x_eval`` ``[m, S, C]`` and at the
    candidates ``[m, C]``.
    """

    def step(p, x, y, a):
        g = jax.grad(lambda q: sq_loss_sum(module, q, x, y))(p)
        return jax.tree_util.tree_map(lambda u, v: u - a * v, p, g)

    @jax.jit
    def drift(params, x, y, a, steps):
        return jax.lax.fori_loop(0, steps, lambda _, p: step(p, x, y, a), params)

    @jax.jit
    def per_candidate(params, xl, yl, xc, yc, a, steps, x_eval):
        def one(xj, yj):
            x = jnp.concatenate([xl, xj[None]])
            y = jnp.concatenate([yl, yj[None]])
            p = jax.lax.fori_loop(0, steps, lambda _, q: step(q, x, y, a), params)
            return module.apply({"params": p}, x_eval), module.apply({"params": p}, xj[None])[0]

        return jax.lax.map(lambda args: one(*args), (xc, yc), batch_size=chunk)

    return drift, per_candidate


# ---------------------------------------------------------- step size and steps


def full_gram_lambda_max(model, xl: Array, xc: Array, iters: int = 60) -> np.ndarray:
    """``λ_max`` of the full (all-logit) empirical NTK Gram on ``L ∪ {x'_j}`` for every ``j``.

    Blocks ``Θ[i, k, c, e]`` from one :func:`jaxal.ntk.kernel` call on ``L ∪ C``; power
    iteration on each bordered ``[(L+1)C, (L+1)C]`` Gram, vectorised over candidates.
    """
    n_l, m = xl.shape[0], xc.shape[0]
    k = np.asarray(ntk_kernel(model, jnp.concatenate([xl, xc]), contraction="full"), np.float64)
    c = k.shape[-1]
    k_ll = k[:n_l, :n_l].transpose(0, 2, 1, 3).reshape(n_l * c, n_l * c)
    k_lc = k[:n_l, n_l:].transpose(1, 0, 2, 3).reshape(m, n_l * c, c)  # [m, LC, C]
    k_cc = k[np.arange(n_l, n_l + m), np.arange(n_l, n_l + m)]  # [m, C, C]
    v_l, v_c = np.ones((m, n_l * c)), np.ones((m, c))
    lam = np.zeros(m)
    for _ in range(iters):
        u_l = v_l @ k_ll + np.einsum("jpc,jc->jp", k_lc, v_c)
        u_c = np.einsum("jpc,jp->jc", k_lc, v_l) + np.einsum("jce,je->jc", k_cc, v_c)
        lam = np.sum(u_l * v_l, 1) + np.sum(u_c * v_c, 1)  # Rayleigh quotient (v normalised)
        norm = np.sqrt(np.sum(u_l**2, 1) + np.sum(u_c**2, 1))
        v_l, v_c = u_l / norm[:, None], u_c / norm[:, None]
    return lam


def choose_steps(k_ll: np.ndarray, k_cl: np.ndarray, k_cc: np.ndarray, a: float, target: float,
                 quantile: float, cap: int) -> tuple[int, np.ndarray]:
    """Fewest steps ``T`` (multiple of 10, ``≤ cap``) fitting the candidates' own residuals to ``target``.

    Linearised GD with the single-logit kernel: a residual at ``x'`` alone (``L`` already
    fitted) becomes ``e'ᵀ (I − 2aG)^T e'`` of itself, ``G`` the bordered Gram on ``L ∪ {x'}``.
    ``T`` is the first for which the ``quantile``-quantile over candidates of the
    predicted fitted fraction reaches ``target`` (``0.5``: the median candidate; ``0``:
    every candidate). Returns ``(T, predicted fractions [m])``.
    """
    m = k_cl.shape[0]
    eig = []
    for j in range(m):
        g = np.block([[k_ll, k_cl[j][:, None]], [k_cl[j][None, :], np.array([[k_cc[j]]])]])
        lam, u = np.linalg.eigh(g)
        eig.append((lam, u[-1] ** 2))

    def fitted(t: int) -> np.ndarray:
        return np.array([1.0 - abs(float(np.sum(w * (1.0 - 2.0 * a * lam) ** t))) for lam, w in eig])

    t = 10
    while t < cap and np.quantile(fitted(t), quantile) < target:
        t += 10
    t = min(t, cap)
    return t, fitted(t)


# ------------------------------------------------------------------ look-aheads


def kernel_deltas(state: core.LookaheadState, cand: np.ndarray, y_c: Array) -> Array:
    """Candidate-specific look-ahead change ``Σ(·, x')/σ²(x') (y' − f_lin(x'))``: ``[m, S, C]``.

    Scalar kernel state (``q = 1``); a candidate with ``σ² ≤`` the state's floor changes
    nothing (the library's clamp).
    """
    cov = state.cov[..., 0, 0]
    sig = cov[cand, cand]
    inv = jnp.where(sig > state.variance_floor, 1.0 / jnp.where(sig > 0, sig, 1.0), 0.0)
    err = y_c - state.mean[cand]  # [m, C]
    return jnp.einsum("sj,j,jc->jsc", cov[:, cand], inv, err)


def sgd_deltas(model, x_s: Array, f_s: Array, x_c: Array, y_c: Array, chunk: int) -> Array:
    """One-step-SGD change on ``S`` for every candidate (default fitted step): ``[m, S, C]``."""
    fn = jax.jit(jax.vmap(lambda xj, yj: baselines.one_step_sgd_outputs(model, x_s, xj, yj) - f_s))
    return jnp.concatenate([fn(x_c[i:i + chunk], y_c[i:i + chunk]) for i in range(0, x_c.shape[0], chunk)])


def mlmoc(delta: Array) -> np.ndarray:
    """``Σ_{x∈S} ‖Δ(x)‖₂`` per candidate, ``delta [m, S, C]``."""
    return np.asarray(jnp.sum(jnp.linalg.norm(delta, axis=-1), axis=-1), np.float64)


def fidelity(d_true: np.ndarray, s_true: np.ndarray, d: np.ndarray | None, s: np.ndarray) -> dict:
    top = min(TOP_K, max(1, len(s) // 2))
    out = {
        "spearman": float(stats.spearmanr(s, s_true).statistic),
        "top_overlap": len(set(np.argsort(-s)[:top]) & set(np.argsort(-s_true)[:top])) / top,
    }
    if d is not None:
        a, b = d_true.reshape(len(d_true), -1), d.reshape(len(d), -1)
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        cos = np.sum(a * b, 1) / np.maximum(na * nb, 1e-30)
        out.update(cosine_median=float(np.median(cos)), cosine_q25=float(np.quantile(cos, 0.25)),
                   cosine_q75=float(np.quantile(cos, 0.75)), norm_ratio_median=float(np.median(nb / na)))
    return out


# ------------------------------------------------------------------ one setting


def setting(ds, width: int, seed: int, n_labeled: int, n_eval: int):
    rng = np.random.default_rng(seed)
    perm = rng.permutation(ds.x_train.shape[0])
    lab, ev = perm[:n_labeled], perm[n_labeled:n_labeled + n_eval]
    c = ds.num_classes
    x_l, x_s = jnp.asarray(ds.x_train[lab]), jnp.asarray(ds.x_train[ev])
    y_l = jnp.asarray(ds.y_train[lab], jnp.int32)
    module = models.create("mlp", c, input_shape=ds.x_train.shape[1:], widths=(width, width))
    params = module.init(jax.random.key(seed), x_l[:1])["params"]
    return rng, module, params, x_l, y_l, x_s


def retrain_truth(module, model, params, x_l, y1h_l, x_c, y_c, x_s, args, max_steps: int) -> dict:
    """Drift-subtracted true changes ``[m, S, C]`` and everything about the GD runs."""
    lam = full_gram_lambda_max(model, x_l, x_c)
    a = 0.9 / float(lam.max())
    k = np.asarray(ntk_kernel(model, jnp.concatenate([x_l, x_c]), contraction="single_logit"), np.float64)
    n_l, m = x_l.shape[0], x_c.shape[0]
    steps, predicted = choose_steps(k[:n_l, :n_l], k[n_l:, :n_l], np.diag(k)[n_l:], a, args.fit_target,
                                    args.fit_quantile, max_steps)
    n_params = sum(int(np.size(p)) for p in jax.tree_util.tree_leaves(params))
    b = int(min(m, max(1, args.gd_chunk_elements // n_params)))
    drift_fn, cand_fn = make_gd(module, b)
    p_drift = drift_fn(params, x_l, y1h_l, a, steps)
    f_drift_s = module.apply({"params": p_drift}, x_s)
    f_drift_c = module.apply({"params": p_drift}, x_c)
    t0 = time.perf_counter()  # compile (a zero-step call: the step count is a traced argument)
    jax.block_until_ready(cand_fn(params, x_l, y1h_l, x_c, y_c, a, 0, x_s))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    f_s_new, f_c_new = jax.block_until_ready(cand_fn(params, x_l, y1h_l, x_c, y_c, a, steps, x_s))
    run_s = time.perf_counter() - t0
    f0_c = module.apply({"params": params}, x_c)
    fitted = 1.0 - np.linalg.norm(np.asarray(y_c - f_c_new), axis=1) / np.linalg.norm(np.asarray(y_c - f0_c), axis=1)
    delta = f_s_new - f_drift_s[None]
    drift = np.linalg.norm(np.asarray(f_drift_s - module.apply({"params": params}, x_s)))
    return {
        "delta": np.asarray(delta, np.float64),
        "steps": steps,
        "a": a,
        "lambda_max": float(lam.max()),
        "learning_rate_mse_mean": a * (n_l + 1),
        "fraction_fitted": fitted,
        "fraction_fitted_predicted_median": float(np.median(predicted)),
        "fraction_fitted_predicted_min": float(predicted.min()),
        "drift_norm_over_median_delta_norm": float(drift / np.median(np.linalg.norm(np.asarray(delta).reshape(m, -1),
                                                                                      axis=1))),
        "drift_fit_at_candidates": float(np.median(np.linalg.norm(np.asarray(f_drift_c - f0_c), axis=1))),
        "seconds_per_candidate": run_s / m,
        "compile_seconds": compile_s,
        "chunk": b,
    }


def ntk_seconds(model, x_l, y_l, x_s, repeats: int) -> tuple[float, float]:
    """(compile-and-run seconds, min of ``repeats`` seconds) of a full NTK acquisition."""

    def run():
        state, _ = init_from_model(model, x_l, y_l, x_s)
        return jax.block_until_ready(core.scores(state, "mlmoc")[0])

    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return first, min(times)


def _min_seconds(fn, repeats: int) -> float:
    """Min over ``repeats`` timed calls, after one untimed call (compiles)."""
    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_flops_per_second(n: int = 1024, d: int = 1024, repeats: int = 5) -> float:
    """This machine's float32 matrix-product rate (FLOP/s), the yardstick for the floors."""
    a = jax.device_put(np.random.default_rng(0).standard_normal((n, d)).astype(np.float32))
    mm = jax.jit(lambda a: a @ a.T)
    return 2.0 * n * n * d / _min_seconds(lambda: mm(a), repeats)


def copy_bytes_per_second(n: int = 2048, repeats: int = 5) -> float:
    """This machine's rate for a read-and-write pass over a float32 matrix (bytes/s)."""
    a = jax.device_put(np.ones((n, n), np.float32))
    op = jax.jit(lambda a: a * 2.0)
    return 2.0 * 4 * n * n / _min_seconds(lambda: op(a), repeats)


def ntk_breakdown(model, module_widths: tuple[int, ...], x_l, y_l, x_s, repeats: int) -> dict:
    """Seconds of each part of one look-ahead acquisition (min of ``repeats`` after a
    compile run) next to its floor: the part's FLOPs at this machine's matrix-product
    rate, or its unavoidable memory passes at its copy rate, whichever is larger.

    Parts: the joint kernel on ``[L; S]`` (one call, single-logit; FLOPs of the Gram
    matrices of every layer's inputs and output cotangents, ``2n²(d_in + d_out)`` per
    Dense layer), the network's outputs on ``L`` and ``S``, ``core.init`` (one
    Cholesky ``L³/3``, the solve ``2S·L²``, the covariance ``K_SS − AᵀA``: ``2S²·L``,
    or one read of ``K_SS`` and one write of ``Σ`` if that takes longer), the MLMOC scores (closed form: one
    ``S×S`` product with the ``[S, C]`` residuals, ``2S²C``, and passes over ``Σ``), and
    the host overhead: the end-to-end call minus the parts.
    """
    from jaxal.lookahead.from_model import _split_blocks
    from jaxal.model import predict_logits
    from jaxal.ops.buckets import bucket

    n_l, n_s = int(x_l.shape[0]), int(x_s.shape[0])
    c = int(model.logits(x_s[:1]).shape[-1])
    rows = bucket(n_l)
    x_lp = np.concatenate([np.asarray(x_l), np.zeros((rows - n_l,) + x_l.shape[1:], np.float32)])
    x_joint = jax.device_put(np.concatenate([x_lp, np.asarray(x_s)]))
    n = x_joint.shape[0]
    y_lp = jax.device_put(np.concatenate([np.asarray(y_l, np.int32), np.zeros(rows - n_l, np.int32)]))
    valid = jax.device_put(np.arange(rows) < n_l)
    blocks = _split_blocks(ntk_kernel(model, x_joint, contraction="single_logit"), rows)
    f_s, f_l = predict_logits(model, x_s), predict_logits(model, x_lp)
    state, _ = core.init(*blocks, f_l, f_s, y_lp, valid_l=valid)

    seconds = {
        "kernel": _min_seconds(lambda: ntk_kernel(model, x_joint, contraction="single_logit"), repeats),
        "outputs": _min_seconds(lambda: (predict_logits(model, x_s), predict_logits(model, x_lp)), repeats),
        "init": _min_seconds(lambda: core.init(*blocks, f_l, f_s, y_lp, valid_l=valid)[0].cov, repeats),
        "scores": _min_seconds(lambda: core.scores(state, "mlmoc")[0], repeats),
    }

    def end_to_end():
        st, _ = init_from_model(model, x_l, y_l, x_s)
        return core.scores(st, "mlmoc")[0]

    total = _min_seconds(end_to_end, repeats)
    seconds["host_overhead"] = max(0.0, total - sum(seconds.values()))
    flops_rate, bytes_rate = gemm_flops_per_second(), copy_bytes_per_second()
    dims = [int(np.prod(x_s.shape[1:])), *module_widths, c]
    kernel_flops = sum(2.0 * n * n * (d_in + d_out) for d_in, d_out in zip(dims[:-1], dims[1:]))
    ss_pass = 2.0 * 4 * n_s * n_s / bytes_rate  # read and write one S×S float32 matrix
    floors = {
        "kernel": max(kernel_flops / flops_rate, 2 * 4 * n * n / bytes_rate),
        "outputs": 2.0 * (n_s + rows) * sum(a * b for a, b in zip(dims[:-1], dims[1:])) / flops_rate,
        "init": max((rows**3 / 3 + 2.0 * n_s * rows**2 + 2.0 * n_s * n_s * rows) / flops_rate, ss_pass),
        "scores": max(2.0 * n_s * n_s * c / flops_rate, ss_pass),
        "host_overhead": 0.0,
    }
    floor_total = sum(floors.values())
    return {
        "n_labeled": n_l, "n_labeled_bucket": rows, "n_eval": n_s,
        "seconds": seconds, "floor_seconds": floors,
        "over_floor": {k: (seconds[k] / floors[k] if floors[k] else None) for k in seconds},
        "total_seconds": total, "floor_total_seconds": floor_total, "total_over_floor": total / floor_total,
        "machine": {"gemm_gflops": flops_rate / 1e9, "copy_gbytes_per_second": bytes_rate / 1e9},
    }


def run_seed(ds, width: int, seed: int, args, n_cand: int, max_steps: int) -> dict:
    t_start = time.perf_counter()
    rng, module, params, x_l, y_l, x_s = setting(ds, width, seed, args.labeled, args.eval_size)
    c = ds.num_classes
    y1h_l = jax.nn.one_hot(y_l, c)
    params, train_steps, train_loss = train_labeled(module, params, x_l, y1h_l, args.train_steps, args.train_tol)
    phases = {"train": time.perf_counter() - t_start}
    model = models.as_model(module, {"params": params})
    f_s = model.logits(x_s)
    f_l = model.logits(x_l)
    cand = np.sort(rng.choice(x_s.shape[0], n_cand, replace=False))
    x_c = x_s[cand]
    pseudo = np.asarray(jnp.argmax(f_s[cand], axis=-1))  # once per candidate, shared by every method
    y_c = jax.nn.one_hot(pseudo, c)

    t0 = time.perf_counter()
    truth = retrain_truth(module, model, params, x_l, y1h_l, x_c, y_c, x_s, args, max_steps)
    phases["retrain_truth"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    d_true = truth.pop("delta")
    s_true = mlmoc(d_true)

    deltas, info = {}, {}
    for name, kern in KERNEL_OF.items():
        blocks = kernel_blocks(model, x_l, x_s, approximation=kern)
        state, linfo = core.init(*blocks, f_l.astype(blocks[0].dtype), f_s.astype(blocks[0].dtype), y_l)
        deltas[name] = kernel_deltas(state, cand, y_c)
        info[name] = {"num_clamped": int(linfo.num_clamped), "relative_jitter": float(linfo.relative_jitter)}
        if name == "ntk":  # the library's scores (same pseudo-labels: argmax of f(x')) give the same numbers
            lib = np.asarray(core.scores(state._replace(offset=jnp.zeros_like(state.offset)), "mlmoc")[0])[cand]
            info[name]["scores_vs_core_max_rel_diff"] = float(np.max(np.abs(lib - mlmoc(deltas[name])) / lib))
            info[name]["offset_norm_over_median_delta_norm"] = float(
                np.linalg.norm(np.asarray(state.offset))
                / np.median(np.linalg.norm(np.asarray(deltas[name]).reshape(n_cand, -1), axis=1)))
    deltas["one_step_sgd"] = sgd_deltas(model, x_s, f_s, x_c, y_c, chunk=max(1, min(n_cand, (1 << 26) // (
        sum(int(np.size(p)) for p in jax.tree_util.tree_leaves(params)) * 4))))
    residual = np.linalg.norm(np.asarray(y_c - f_s[cand]), axis=1)
    phases["lookaheads"] = time.perf_counter() - t0

    fid = {name: fidelity(d_true, s_true, np.asarray(d, np.float64), mlmoc(d)) for name, d in deltas.items()}
    fid["residual"] = fidelity(d_true, s_true, None, residual)
    t0 = time.perf_counter()
    first, sec_ntk = ntk_seconds(model, x_l, y_l, x_s, args.repeats)
    breakdown = ntk_breakdown(model, (width, width), x_l, y_l, x_s, args.repeats)
    phases["ntk_timing"] = time.perf_counter() - t0
    sec_naive = truth["seconds_per_candidate"] * x_s.shape[0]
    ff = truth.pop("fraction_fitted")
    return {
        "width": width,
        "seed": seed,
        "candidates": int(n_cand),
        "train_adam_steps": train_steps,
        "train_mean_squared_loss": train_loss,
        "gd": {**truth, "fraction_fitted_median": float(np.median(ff)), "fraction_fitted_min": float(ff.min())},
        "fidelity": fid,
        "kernels": info,
        "seconds_per_acquisition": {"naive": sec_naive, "ntk": sec_ntk, "ntk_first_call_with_compile": first},
        "speedup_vs_naive": sec_naive / sec_ntk,
        "ntk_breakdown": breakdown,
        "seconds_total": time.perf_counter() - t_start,
        "phase_seconds": phases,
        "load_average_end": load_average(),
    }


# ------------------------------------------------------------ active learning


def run_al(ds, args, seed: int) -> dict:
    """Rounds of MLMOC by naive retraining vs by the NTK look-ahead vs random (Fig. 1a, small)."""
    c = ds.num_classes
    rng = np.random.default_rng(1000 + seed)
    perm = rng.permutation(ds.x_train.shape[0])
    pool_all = perm[:args.al_pool]
    x_test, y_test = jnp.asarray(ds.x_test), np.asarray(ds.y_test)
    module = models.create("mlp", c, input_shape=ds.x_train.shape[1:], widths=(args.al_width, args.al_width))
    init = module.init(jax.random.key(seed), jnp.asarray(ds.x_train[:1]))["params"]
    out = {}
    for strategy in ("naive", "ntk", "random"):
        srng = np.random.default_rng(2000 + seed)  # every strategy starts from the same draws
        pick_rng = np.random.default_rng(3000 + seed)
        labeled = list(pool_all[:args.al_initial])
        acc, q_sec, q_first, steps_used = [], [], [], []
        for r in range(args.al_rounds + 1):
            x_l = jnp.asarray(ds.x_train[labeled])
            y_l = jnp.asarray(ds.y_train[labeled], jnp.int32)
            y1h = jax.nn.one_hot(y_l, c)
            params, _, _ = train_labeled(module, init, x_l, y1h, args.train_steps, args.train_tol)
            acc.append(float(np.mean(np.argmax(np.asarray(module.apply({"params": params}, x_test)), -1) == y_test)))
            if r == args.al_rounds:
                break
            unl = np.setdiff1d(pool_all, labeled)
            rows = srng.choice(unl, args.al_eval, replace=False)  # S; its first al_candidates rows are candidates
            x_s = jnp.asarray(ds.x_train[rows])
            mc = args.al_candidates
            model = models.as_model(module, {"params": params})

            def query() -> tuple[np.ndarray, int | None]:
                if strategy == "ntk":
                    state, _ = init_from_model(model, x_l, y_l, x_s)
                    return np.asarray(core.scores(state, "mlmoc")[0])[:mc], None
                y_c = jax.nn.one_hot(jnp.argmax(model.logits(x_s[:mc]), -1), c)
                truth = retrain_truth(module, model, params, x_l, y1h, x_s[:mc], y_c, x_s, args, args.al_max_steps)
                return mlmoc(truth["delta"]), truth["steps"]

            if strategy == "random":
                pick = pick_rng.permutation(mc)[:args.al_batch]
                q_first.append(0.0)
                q_sec.append(0.0)
            else:
                for timing in (q_first, q_sec):  # first call compiles for this round's shapes; the second is timed
                    t0 = time.perf_counter()
                    s, steps = query()
                    timing.append(time.perf_counter() - t0)
                pick = np.argsort(-s)[:args.al_batch]
                if steps is not None:
                    steps_used.append(steps)
            labeled += [int(rows[i]) for i in pick]
        out[strategy] = {"n_labeled": [args.al_initial + r * args.al_batch for r in range(args.al_rounds + 1)],
                         "test_accuracy": acc, "query_seconds": q_sec, "query_seconds_first_call": q_first}
        if steps_used:
            out[strategy]["gd_steps"] = steps_used
    return out


# ---------------------------------------------------------------------- report


def per_width_value(spec: list[str], width: int, default: int) -> int:
    for item in spec or []:
        w, v = item.split(":")
        if int(w) == width:
            return int(v)
    return default


def summarise(rows: list[dict]) -> dict:
    """Median (and min/max) over seeds of each method's per-seed fidelity numbers."""
    out = {}
    for name in METHODS:
        keys = rows[0]["fidelity"][name].keys()
        out[name] = {}
        for k in keys:
            v = np.array([r["fidelity"][name][k] for r in rows])
            out[name][k] = {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}
    return out


def plot(per_width: list[dict], path: str) -> None:
    """Median cosine and Spearman against width (bars: min–max over seeds); tick labels
    give seeds × candidates and the median fraction of the candidates' residual fitted."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 3.4), dpi=80)
    FigureCanvasAgg(fig)
    widths = [p["width"] for p in per_width]
    ticks = [f"{p['width']}\n{p['seeds']}×{p['candidates']}, fit {p['fraction_fitted_median']:.0%}" for p in per_width]
    colours = {"ntk": "tab:blue", "infinite_standard": "tab:green", "infinite_ntk_param": "tab:olive",
               "one_step_sgd": "tab:red", "residual": "grey"}
    for i, (metric, label) in enumerate([("cosine_median", "median cos(Δ_true, Δ)"),
                                         ("spearman", "Spearman of Σ‖Δ‖")]):
        ax = fig.add_subplot(1, 2, i + 1)
        for name in METHODS:
            if metric not in per_width[0]["summary"][name]:
                continue
            med = np.array([p["summary"][name][metric]["median"] for p in per_width])
            lo = np.array([p["summary"][name][metric]["min"] for p in per_width])
            hi = np.array([p["summary"][name][metric]["max"] for p in per_width])
            ax.errorbar(widths, med, yerr=[med - lo, hi - med], marker="o", markersize=3, capsize=3,
                        color=colours[name], label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, ticks, fontsize=7)
        ax.set_xlabel("width (seeds × candidates, residual fitted by GD)", fontsize=8)
        ax.set_ylabel(label)
        ax.axhline(0, color="k", linewidth=0.5)
        if i == 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized run (< 60 s): width 128, 1 seed, small sets")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--png", help="fidelity-vs-width figure (default: next to --json)")
    ap.add_argument("--widths", type=int, nargs="+", default=None)
    ap.add_argument("--seeds", type=int, default=None, help="seeds per width")
    ap.add_argument("--labeled", type=int, default=100)
    ap.add_argument("--eval-size", type=int, default=None, help="|S|")
    ap.add_argument("--candidates", type=int, default=None, help="candidates per seed")
    ap.add_argument("--max-steps", type=int, default=None, help="cap on the GD steps of retraining")
    ap.add_argument("--seeds-for", nargs="*", default=None, metavar="W:N", help="seeds for width W")
    ap.add_argument("--candidates-for", nargs="*", default=None, metavar="W:M", help="candidates for width W")
    ap.add_argument("--max-steps-for", nargs="*", default=None, metavar="W:T", help="GD step cap for width W")
    ap.add_argument("--fit-target", type=float, default=0.98,
                    help="fraction of a candidate's own residual the linearised GD must fit (chooses T)")
    ap.add_argument("--fit-quantile", type=float, default=0.5,
                    help="...for this quantile of the candidates (0.5: the median one; 0: all)")
    ap.add_argument("--train-steps", type=int, default=3000, help="cap on full-batch Adam steps on L")
    ap.add_argument("--train-tol", type=float, default=1e-6, help="stop Adam at this mean squared loss on L")
    ap.add_argument("--gd-chunk-elements", type=int, default=1 << 20,
                    help="candidates per vmapped GD chunk ≈ this / number of parameters")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--al-seeds", type=int, default=None)
    ap.add_argument("--al-rounds", type=int, default=None)
    ap.add_argument("--al-width", type=int, default=128)
    ap.add_argument("--al-pool", type=int, default=1500)
    ap.add_argument("--al-initial", type=int, default=None)
    ap.add_argument("--al-batch", type=int, default=10)
    ap.add_argument("--al-candidates", type=int, default=None)
    ap.add_argument("--al-eval", type=int, default=None)
    ap.add_argument("--al-max-steps", type=int, default=None)
    args = ap.parse_args(argv)
    q = args.quick
    args.widths = args.widths or ([128] if q else [128, 512, 2048])
    args.seeds = args.seeds or (1 if q else 3)
    args.eval_size = args.eval_size or (120 if q else 1000)
    args.candidates = args.candidates or (10 if q else 100)
    args.max_steps = args.max_steps or (80 if q else 600)
    args.al_seeds = args.al_seeds if args.al_seeds is not None else 1
    args.al_rounds = args.al_rounds if args.al_rounds is not None else (1 if q else 3)
    # quick: the AL run uses the fidelity part's |L|, |S| and candidate count, so its
    # programs (training, kernels, GD, look-ahead) are those already compiled
    args.al_initial = args.al_initial or (args.labeled if q else 50)
    args.al_candidates = args.al_candidates or (args.candidates if q else 30)
    args.al_eval = args.al_eval or (args.eval_size if q else 200)
    args.al_max_steps = args.al_max_steps or (60 if q else 400)
    if q:
        args.train_steps = min(args.train_steps, 1500)

    ds = data.load("mnist1d")
    load_start = load_average()
    t_start = time.perf_counter()
    per_width = []
    for w in args.widths:
        n_seeds = per_width_value(args.seeds_for, w, args.seeds)
        n_cand = per_width_value(args.candidates_for, w, args.candidates)
        cap = per_width_value(args.max_steps_for, w, args.max_steps)
        rows = [run_seed(ds, w, s, args, n_cand, cap) for s in range(n_seeds)]
        per_width.append({
            "width": w, "seeds": n_seeds, "candidates": n_cand, "max_steps": cap,
            "summary": summarise(rows),
            "speedup_vs_naive_median": float(np.median([r["speedup_vs_naive"] for r in rows])),
            "fraction_fitted_median": float(np.median([r["gd"]["fraction_fitted_median"] for r in rows])),
            "fraction_fitted_min": float(min(r["gd"]["fraction_fitted_min"] for r in rows)),
            "per_seed": rows,
        })
        print_width(per_width[-1])
    al = {f"seed_{s}": run_al(ds, args, s) for s in range(args.al_seeds)} if args.al_rounds > 0 else {}
    print_al(al)
    main_w = next((p for p in per_width if p["width"] == 512), per_width[0])
    out = {
        "speedup_vs_naive": main_w["speedup_vs_naive_median"],
        "fidelity_cosine_median": main_w["summary"]["ntk"]["cosine_median"]["median"],
        "fidelity_spearman": main_w["summary"]["ntk"]["spearman"]["median"],
        "fidelity_top_overlap": main_w["summary"]["ntk"]["top_overlap"]["median"],
        "fidelity_norm_ratio_median": main_w["summary"]["ntk"]["norm_ratio_median"]["median"],
        "fraction_fitted_median": main_w["fraction_fitted_median"],
        "headline_width": main_w["width"],
        # the first seed's look-ahead query, part by part, against each part's floor
        "ntk_breakdown": main_w["per_seed"][0]["ntk_breakdown"],
        "ntk_total_over_floor": float(np.median([r["ntk_breakdown"]["total_over_floor"] for r in main_w["per_seed"]])),
        "setting": {"dataset": "mnist1d", "labeled": args.labeled, "eval_size": args.eval_size,
                    "fit_target": args.fit_target, "quick": q, "device": jax.devices()[0].platform,
                    "load_average_start": load_start, "load_average_end": load_average(),
                    "seconds_total": time.perf_counter() - t_start,
                    "argv": list(argv) if argv is not None else sys.argv[1:]},
        "per_width": per_width,
        "active_learning": al,
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
        png = args.png or os.path.splitext(args.json)[0] + ".png"
        plot(per_width, png)
    elif args.png:
        plot(per_width, args.png)
    return out


def print_width(p: dict) -> None:
    s = p["summary"]
    seeds = p["per_seed"]
    print(f"width {p['width']}: {p['seeds']} seed(s) × {p['candidates']} candidates, GD steps "
          f"{[r['gd']['steps'] for r in seeds]}, fitted median {p['fraction_fitted_median']:.3f} "
          f"(min {p['fraction_fitted_min']:.3f}), speed-up vs naive {p['speedup_vs_naive_median']:.0f}x "
          f"(naive {np.median([r['seconds_per_acquisition']['naive'] for r in seeds]):.1f} s/acq, "
          f"NTK {np.median([r['seconds_per_acquisition']['ntk'] for r in seeds]):.3f} s/acq), load "
          f"{seeds[-1]['load_average_end']:.1f}")
    b = seeds[0]["ntk_breakdown"]
    print("  look-ahead query, seed 0: " + ", ".join(
        f"{k} {v * 1e3:.1f} ms (floor {b['floor_seconds'][k] * 1e3:.1f})" for k, v in b["seconds"].items())
        + f"; total {b['total_seconds'] * 1e3:.1f} ms = {b['total_over_floor']:.1f}x its floor")
    print(f"  {'method':<20} {'cos med':>8} {'norm ratio':>10} {'spearman':>9} {'top-10':>7}   (median over seeds "
          f"[min, max])")
    for name in METHODS:
        m = s[name]
        cos = f"{m['cosine_median']['median']:8.3f}" if "cosine_median" in m else f"{'—':>8}"
        nr = f"{m['norm_ratio_median']['median']:10.3f}" if "norm_ratio_median" in m else f"{'—':>10}"
        print(f"  {name:<20} {cos} {nr} {m['spearman']['median']:9.3f} {m['top_overlap']['median']:7.2f}   "
              f"spearman [{m['spearman']['min']:.2f}, {m['spearman']['max']:.2f}]")


def print_al(al: dict) -> None:
    for seed, res in al.items():
        for strategy, r in res.items():
            print(f"AL {seed} {strategy:<7} acc {' '.join(f'{a:.3f}' for a in r['test_accuracy'])}  query s "
                  f"{' '.join(f'{t:.2f}' for t in r['query_seconds'])}")


if __name__ == "__main__":
    main()
