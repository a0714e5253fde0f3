"""NTK look-ahead maths as pure functions of kernel matrices (no network inside).

Notation (DESIGN.md §4): labeled set ``L`` with one-hot targets ``Y_L`` and network
outputs ``f(X_L)``, residuals ``R = Y_L − f(X_L)``; an evaluation set ``S`` whose rows are
also the candidates ``x'``; kernel blocks ``K_LL``, ``K_SL``, ``K_SS``.

- Linearised prediction ``f_lin(x) = f(x) + k(x, L) K_LL⁻¹ R``.
- Posterior covariance ``Σ(x, z) = k(x, z) − k(x, L) K_LL⁻¹ k(L, z)``.
- Adding ``(x', y')`` (block inverse of the bordered kernel, Schur complement
  ``σ²(x') = Σ(x', x')``; the paper's eq. 12 with ``v = Θ(X,X)⁻¹ Θ(X,x')``)::

      f⁺_lin(x) = f_lin(x) + Σ(x, x') σ²(x')⁻¹ (y' − f_lin(x'))

Kernels come in two shapes:

- scalar ``[n1, n2]`` (``single_logit`` / ``sum_logits`` / ``trace``), used as
  ``k ⊗ I_C``: every logit shares the scalar kernel (the paper's choice, ``C²`` cheaper);
- full ``[n1, n2, C, C]`` blocks: ``Σ`` becomes ``|S|C × |S|C`` (keep ``|S|`` small).

Both are handled by one code path: a kernel is ``[n1, n2, q, q]`` with ``q = 1``
(scalar) or ``q = C`` (full), and outputs are viewed as ``[n, q, m]`` with ``q·m = C``.

The covariance is conditioned by the exact rank-``q`` rule
``Σ ← Σ − Σ(:, x*) Σ(x*, x*)⁻¹ Σ(x*, :)``, which is what both the greedy batch (with a
pseudo-label) and the sequential mode (with the true label) apply.

Numerics: ``K_LL`` is factorised once by :func:`jaxal.linalg.stable_cholesky` (jitter
relative to ``mean(diag K_LL)``, reported). A candidate whose posterior variance is at
or below ``variance_floor`` (``1000·eps·mean(diag K_SS)`` by default) is *clamped*:
in float32 ``σ²`` of a candidate equal to a labeled point cancels to noise of either
sign, and dividing by it gives NaN or arbitrary huge updates. A clamped candidate is one
the kernel already knows, so its look-ahead update is set to zero (it changes nothing)
and its score stays finite; the number clamped is reported.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxal.linalg import cho_solve, stable_cholesky, symmetrize
from jaxal.validation import check_choice

Array = jax.Array

__all__ = [
    "LookaheadState",
    "LookaheadInfo",
    "OBJECTIVES",
    "PROBABILITY_MAPS",
    "init",
    "add",
    "scores",
    "best",
    "greedy_batch",
    "reference",
    "reduce_objective",
    "label_targets",
    "to_probabilities",
    "simplex_projection",
]

#: objective -> (which labels y' it looks at, larger score is better after this sign)
#: ``pseudo``: y' = one-hot argmax of the current prediction at x';
#: ``expected``: every class, weighted by the probability map of that prediction.
OBJECTIVES = {
    "mlmoc": "pseudo",  # Σ_x ‖f(x) − f⁺_lin(x)‖₂: largest change is best
    "emoc": "expected",  # E_y' Σ_x ‖f(x) − f⁺_lin(x)‖₂: largest expected change is best
    "eer": "expected",  # −E_y' mean_x H(p(f⁺_lin(x))): lowest expected entropy is best
    "flip_rate": "pseudo",  # mean_x [argmax f⁺_lin(x) ≠ argmax f(x)]: most flips is best
}
PROBABILITY_MAPS = ("softmax", "simplex")


class LookaheadState(NamedTuple):
    """Everything the look-ahead needs about the evaluation set ``S`` (a pytree).

    Attributes:
      mean: ``[S, C]`` the linearised predictions ``f_lin`` on ``S`` given every label
        seen so far (initial labeled set, then each :func:`add`).
      offset: ``[S, C]`` ``f_lin − reference``: the candidate-independent part of the
        change (the kernel regression's fit of the residuals on ``L``). The reference
        prediction — what "the network predicts now" — is ``mean − offset``; it starts
        at the network's outputs ``f(S)`` and moves with every :func:`add`.
      cov: ``[S, S, q, q]`` posterior covariance ``Σ`` of the outputs on ``S``
        (``q = 1``: scalar kernel shared by the ``C`` logits; ``q = C``: full blocks).
      queried: ``[S]`` bool, candidates already added (never proposed again).
      variance_floor: scalar; posterior variances at or below it are clamped.
    """

    mean: Array
    offset: Array
    cov: Array
    queried: Array
    variance_floor: Array


class LookaheadInfo(NamedTuple):
    """Diagnostics of :func:`init`.

    Attributes:
      jitter: absolute jitter added to ``diag K_LL`` by the Cholesky.
      relative_jitter: the same as a fraction of ``mean(diag K_LL)``.
      num_clamped: number of candidates whose ``σ²`` is at or below the floor.
      variance_floor: the floor used.
    """

    jitter: Array
    relative_jitter: Array
    num_clamped: Array
    variance_floor: Array


# --------------------------------------------------------------------------- shapes


def _as_blocks(k: Array) -> Array:
    """``[n1, n2]`` -> ``[n1, n2, 1, 1]``; ``[n1, n2, q, q]`` unchanged."""
    k = jnp.asarray(k)
    if k.ndim == 2:
        return k[:, :, None, None]
    if k.ndim == 4 and k.shape[2] == k.shape[3]:
        return k
    raise ValueError(f"a kernel must be [n1, n2] or [n1, n2, C, C], got shape {k.shape}")


def _flatten_blocks(k: Array) -> Array:
    """``[n1, n2, q, q]`` -> ``[n1·q, n2·q]`` with row index ``i·q + p``."""
    n1, n2, q, _ = k.shape
    return jnp.transpose(k, (0, 2, 1, 3)).reshape(n1 * q, n2 * q)


def _unflatten_blocks(k: Array, q: int) -> Array:
    n1, n2 = k.shape[0] // q, k.shape[1] // q
    return jnp.transpose(k.reshape(n1, q, n2, q), (0, 2, 1, 3))


# ----------------------------------------------------------------- probability maps


def simplex_projection(v: Array) -> Array:
    """Euclidean projection of each row of ``v [..., C]`` onto the probability simplex.

    ``argmin_p ‖p − v‖₂`` s.t. ``p ≥ 0, Σp = 1``: sort descending, ``τ`` from the
    largest ``ρ`` with ``u_ρ > (Σ_{j≤ρ} u_j − 1)/ρ``, then ``p = max(v − τ, 0)``.
    """
    u = -jnp.sort(-v, axis=-1)
    css = jnp.cumsum(u, axis=-1) - 1.0
    ks = jnp.arange(1, v.shape[-1] + 1, dtype=v.dtype)
    rho = jnp.sum(u - css / ks > 0, axis=-1, keepdims=True)
    tau = jnp.take_along_axis(css, rho - 1, axis=-1) / rho.astype(v.dtype)
    return jnp.maximum(v - tau, 0.0)


def to_probabilities(outputs: Array, probability: str = "softmax") -> Array:
    """Map outputs ``[..., C]`` to class probabilities.

    ``"softmax"``: the usual map (flat for squared-loss outputs near one-hot scale);
    ``"simplex"``: Euclidean projection onto the simplex (what the look-ahead authors'
    code does for squared-loss networks; confident outputs get exact zeros).
    """
    if probability == "softmax":
        return jax.nn.softmax(outputs, axis=-1)
    if probability == "simplex":
        return simplex_projection(outputs)
    raise ValueError(f"unknown probability {probability!r}; valid: {', '.join(PROBABILITY_MAPS)}")


def _entropy(p: Array) -> Array:
    safe = jnp.where(p > 0, p, 1.0)
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(safe), 0.0), axis=-1)


# ------------------------------------------------------------------- objectives


def label_targets(ref: Array, objective: str, probability: str) -> tuple[Array, Array]:
    """Look-ahead labels for candidates whose current prediction is ``ref [b, C]``.

    Returns ``targets [b, Y, C]`` (one-hot rows) and ``weights [b, Y]``: ``Y = 1`` with
    the argmax pseudo-label for ``mlmoc``/``flip_rate``; ``Y = C`` every class weighted by
    ``to_probabilities(ref)`` for ``emoc``/``eer``.
    """
    c = ref.shape[-1]
    if OBJECTIVES[objective] == "pseudo":
        targets = jax.nn.one_hot(jnp.argmax(ref, axis=-1), c, dtype=ref.dtype)[:, None, :]
        return targets, jnp.ones(targets.shape[:2], ref.dtype)
    targets = jnp.broadcast_to(jnp.eye(c, dtype=ref.dtype), (ref.shape[0], c, c))
    return targets, to_probabilities(ref, probability)


def reduce_objective(
    objective: str, change: Array, new_pred: Array, ref: Array, weights: Array, probability: str = "softmax"
) -> Array:
    """Score candidates from their look-ahead outputs on ``S``.

    Args:
      objective: one of :data:`OBJECTIVES`.
      change: ``[S, b, Y, C]`` ``f⁺(x) − reference(x)`` for candidate ``j`` and label ``y``.
      new_pred: ``[S, b, Y, C]`` the look-ahead predictions ``f⁺(x)``.
      ref: ``[S, C]`` the reference (current) predictions.
      weights: ``[b, Y]`` label weights (sum to 1 over ``Y``).
      probability: probability map for ``eer``.

    Returns:
      ``[b]`` scores, larger is better for every objective.
    """
    if objective in ("mlmoc", "emoc"):
        per_label = jnp.sum(jnp.sqrt(jnp.sum(change * change, axis=-1)), axis=0)
    elif objective == "eer":
        per_label = -jnp.mean(_entropy(to_probabilities(new_pred, probability)), axis=0)
    elif objective == "flip_rate":
        flips = jnp.argmax(new_pred, axis=-1) != jnp.argmax(ref, axis=-1)[:, None, None]
        per_label = jnp.mean(flips.astype(change.dtype), axis=0)
    else:
        check_choice("objective", objective, OBJECTIVES)
    return jnp.sum(weights * per_label, axis=-1)


# ------------------------------------------------------------------ init / update


def default_variance_floor(k_ss_diag_mean: Array, dtype) -> Array:
    """``1000·eps(dtype)·mean(diag K_SS)``: below this ``σ²`` is float round-off."""
    return 1e3 * jnp.finfo(dtype).eps * jnp.abs(k_ss_diag_mean)


@functools.partial(jax.jit, static_argnames=("jitter", "variance_floor"))
def init(
    k_ll: Array,
    k_sl: Array,
    k_ss: Array,
    f_l: Array,
    f_s: Array,
    y_l: Array,
    *,
    jitter: float | None = None,
    variance_floor: float | None = None,
) -> tuple[LookaheadState, LookaheadInfo]:
    """Posterior of the linearised network on ``S`` given the labeled set: one Cholesky.

    Args:
      k_ll: ``[L, L]`` or ``[L, L, C, C]`` kernel on the labeled set.
      k_sl: ``[S, L]`` or ``[S, L, C, C]``.
      k_ss: ``[S, S]`` or ``[S, S, C, C]`` (a full scalar matrix is needed: ``Σ`` is).
      f_l: ``[L, C]`` network outputs on the labeled set.
      f_s: ``[S, C]`` network outputs on ``S``.
      y_l: ``[L]`` int labels.
      jitter: fixed relative jitter for ``K_LL`` (default: smallest that works).
      variance_floor: absolute floor on ``σ²`` (default :func:`default_variance_floor`).

    Returns:
      ``(state, info)``. Cost ``O(L³ + L²S + S²L)`` for scalar kernels.
    """
    k_ll, k_sl, k_ss = _as_blocks(k_ll), _as_blocks(k_sl), _as_blocks(k_ss)
    f_l, f_s = jnp.asarray(f_l), jnp.asarray(f_s)
    dtype = jnp.result_type(k_ll.dtype, k_sl.dtype, k_ss.dtype, f_l.dtype, f_s.dtype, jnp.float32)
    n_l, n_s, q = k_ll.shape[0], k_ss.shape[0], k_ss.shape[-1]
    c = f_s.shape[-1]
    if c % q:
        raise ValueError(f"full kernel blocks are {q}×{q} but the model has {c} outputs")
    if k_sl.shape[:2] != (n_s, n_l) or k_ll.shape[:2] != (n_l, n_l) or k_ss.shape[1] != n_s:
        raise ValueError(f"kernel shapes disagree: K_LL {k_ll.shape}, K_SL {k_sl.shape}, K_SS {k_ss.shape}")
    if f_l.shape != (n_l, c) or f_s.shape != (n_s, c) or jnp.shape(y_l) != (n_l,):
        raise ValueError(f"outputs/labels disagree with kernels: f_l {f_l.shape}, f_s {f_s.shape}, y_l {jnp.shape(y_l)}")
    m = c // q
    kss = _flatten_blocks(k_ss.astype(dtype))
    scale = jnp.mean(jnp.diag(kss))
    floor = default_variance_floor(scale, dtype) if variance_floor is None else jnp.asarray(variance_floor, dtype)
    if n_l == 0:
        zero = jnp.zeros((), dtype)
        mean, cov_flat, jit_abs, jit_rel = f_s.astype(dtype), symmetrize(kss), zero, zero
    else:
        chol = stable_cholesky(_flatten_blocks(k_ll.astype(dtype)), jitter=jitter)
        ksl = _flatten_blocks(k_sl.astype(dtype))
        resid = (jax.nn.one_hot(jnp.asarray(y_l), c, dtype=dtype) - f_l.astype(dtype)).reshape(n_l * q, m)
        mean = f_s.astype(dtype) + (ksl @ cho_solve(chol, resid)).reshape(n_s, c)
        a = jax.scipy.linalg.solve_triangular(chol.factor, ksl.T, lower=True)
        cov_flat = symmetrize(kss - a.T @ a)
        jit_abs, jit_rel = chol.jitter, chol.relative_jitter
    cov = _unflatten_blocks(cov_flat, q)
    state = LookaheadState(
        mean=mean,
        offset=mean - f_s.astype(dtype),
        cov=cov,
        queried=jnp.zeros((n_s,), bool),
        variance_floor=floor,
    )
    _, clamped = _block_inverse(jnp.diagonal(cov, axis1=0, axis2=1).transpose(2, 0, 1), floor)
    return state, LookaheadInfo(jit_abs, jit_rel, jnp.sum(clamped), floor)


def reference(state: LookaheadState) -> Array:
    """``[S, C]`` the current prediction (network outputs moved by every added label)."""
    return state.mean - state.offset


def _block_inverse(blocks: Array, floor: Array) -> tuple[Array, Array]:
    """Clamped inverse of posterior variance blocks ``[b, q, q]``.

    Directions with variance ``≤ floor`` get inverse 0 (no update along them).
    Returns ``(inverse [b, q, q], clamped [b] bool)``.
    """
    if blocks.shape[-1] == 1:
        s = blocks[:, 0, 0]
        ok = s > floor
        inv = jnp.where(ok, 1.0 / jnp.where(ok, s, 1.0), 0.0)
        return inv[:, None, None], ~ok
    lam, vec = jnp.linalg.eigh(symmetrize(blocks))
    ok = lam > floor
    inv_lam = jnp.where(ok, 1.0 / jnp.where(ok, lam, 1.0), 0.0)
    return jnp.einsum("bpk,bk,bqk->bpq", vec, inv_lam, vec), ~jnp.all(ok, axis=-1)


@jax.jit
def add(state: LookaheadState, i: Array, y: Array) -> LookaheadState:
    """Condition on the label ``y`` (int) of candidate ``i``: rank-``q`` update, ``O(S²q²)``.

    ``mean ← mean + Σ(:, i) Σ(i, i)⁻¹ (e_y − mean_i)`` and
    ``Σ ← Σ − Σ(:, i) Σ(i, i)⁻¹ Σ(i, :)``; the offset is unchanged, so the reference
    prediction moves with the mean. Equals a fresh :func:`init` with ``(x_i, y)``
    appended to the labeled set (block inverse of the bordered kernel).
    """
    n_s, c = state.mean.shape
    q = state.cov.shape[-1]
    col = state.cov[:, i]  # [S, q, q]: Σ(x, i)
    inv, _ = _block_inverse(state.cov[i, i][None], state.variance_floor)
    err = (jax.nn.one_hot(y, c, dtype=state.mean.dtype) - state.mean[i]).reshape(q, c // q)
    gain = jnp.einsum("xpq,qr->xpr", col, inv[0])  # [S, q, q]
    mean = state.mean + jnp.einsum("xpr,rm->xpm", gain, err).reshape(n_s, c)
    cov = state.cov - jnp.einsum("xpr,zsr->xzps", gain, col)
    cov = 0.5 * (cov + jnp.transpose(cov, (1, 0, 3, 2)))
    return state._replace(mean=mean, cov=cov, queried=state.queried.at[i].set(True))


def _auto_chunk(n_s: int, n_labels: int, c: int, q: int, memory_elements: int = 1 << 23) -> int:
    per_candidate = n_s * (n_labels * c * 4 + q * q)  # a few [S, Y, C] temporaries
    return int(max(1, min(n_s, memory_elements // max(per_candidate, 1))))


@functools.partial(jax.jit, static_argnames=("objective", "probability", "chunk_size"))
def scores(
    state: LookaheadState,
    objective: str = "mlmoc",
    probability: str = "softmax",
    chunk_size: int | None = None,
) -> tuple[Array, Array]:
    """Look-ahead score of every candidate in ``S``, in chunks of candidates.

    For a chunk ``J`` of ``b`` candidates and labels ``y`` (see :func:`label_targets`),
    ``Δ(x; j, y) = Σ(x, j) Σ(j, j)⁻¹ (y − f_lin(x_j))`` over all ``x ∈ S`` at once, so the
    cost is ``O(S² Y C)`` in total and memory ``O(S·b·Y·C)``; no per-candidate inverse of
    ``K`` and no new kernel. Already-queried candidates score ``−inf``.

    Returns:
      ``(scores [S], clamped [S] bool)``; larger is better for every objective.
    """
    check_choice("objective", objective, OBJECTIVES)
    check_choice("probability", probability, PROBABILITY_MAPS)
    n_s, c = state.mean.shape
    q = state.cov.shape[-1]
    m = c // q
    n_labels = 1 if OBJECTIVES[objective] == "pseudo" else c
    b = chunk_size or _auto_chunk(n_s, n_labels, c, q)
    b = min(b, n_s)
    n_chunks = math.ceil(n_s / b)
    idx = jnp.minimum(jnp.arange(n_chunks * b), n_s - 1).reshape(n_chunks, b)
    ref = reference(state)

    def chunk(j):
        inv, clamped = _block_inverse(state.cov[j, j], state.variance_floor)  # [b, q, q]
        targets, weights = label_targets(ref[j], objective, probability)  # [b, Y, C], [b, Y]
        err = (targets - state.mean[j][:, None, :]).reshape(b, -1, q, m)
        gain = jnp.einsum("jpq,jyqm->jypm", inv, err)  # [b, Y, q, m]
        delta = jnp.einsum("xjpq,jyqm->xjypm", state.cov[:, j], gain).reshape(n_s, b, -1, c)
        new_pred = state.mean[:, None, None, :] + delta
        change = state.offset[:, None, None, :] + delta
        return reduce_objective(objective, change, new_pred, ref, weights, probability), clamped

    s, clamped = jax.lax.map(chunk, idx)
    s, clamped = s.reshape(-1)[:n_s], clamped.reshape(-1)[:n_s]
    return jnp.where(state.queried, -jnp.inf, s), clamped


def best(state: LookaheadState, objective: str = "mlmoc", probability: str = "softmax") -> Array:
    """Index of the best not-yet-queried candidate."""
    return jnp.argmax(scores(state, objective, probability)[0])


def greedy_batch(
    state: LookaheadState,
    budget: int,
    objective: str = "mlmoc",
    probability: str = "softmax",
    chunk_size: int | None = None,
) -> tuple[Array, LookaheadState, Array]:
    """Greedy batch: pick the best, :func:`add` it with its pseudo-label, re-score.

    The pseudo-label is the argmax of the current reference prediction at the pick, so
    later picks see the earlier ones as labeled (redundant neighbours lose score).
    Returns ``(indices [budget], final state, clamped counts per pick [budget])``.
    """
    if budget > state.mean.shape[0] - int(jnp.sum(state.queried)):
        raise ValueError(f"budget={budget} exceeds the number of unqueried candidates")
    picks, n_clamped = [], []
    for _ in range(budget):
        s, clamped = scores(state, objective, probability, chunk_size)
        i = jnp.argmax(s)
        picks.append(i)
        n_clamped.append(jnp.sum(clamped & ~state.queried))
        state = add(state, i, jnp.argmax(reference(state)[i]))
    return jnp.stack(picks), state, jnp.stack(n_clamped)
