"""NTK look-ahead maths as pure functions of kernel matrices (no network inside).

Notation: labeled set ``L`` with one-hot targets ``Y_L`` and network outputs ``f(X_L)``,
residuals ``R = Y_L − f(X_L)``; an evaluation set ``S`` whose rows are also the
candidates ``x'``; kernel blocks ``K_LL``, ``K_SL``, ``K_SS``.

- Linearised prediction ``f_lin(x) = f(x) + k(x, L) K_LL⁻¹ R``.
- Posterior covariance ``Σ(x, z) = k(x, z) − k(x, L) K_LL⁻¹ k(L, z)``.
- Adding ``(x', y')``: the bordered kernel ``[[K_LL, k(L, x')], [k(x', L), k(x', x')]]``
  has Schur complement ``σ²(x') = Σ(x', x')``; its block inverse gives the new point the
  coefficient ``σ²(x')⁻¹ (y' − f_lin(x'))`` and corrects the old ones accordingly, so
  (the paper's eq. 12 with ``v = Θ(X,X)⁻¹ Θ(X,x')``)::

      f⁺_lin(x) = f_lin(x) + Σ(x, x') σ²(x')⁻¹ (y' − f_lin(x'))

Kernels come in two shapes:

- scalar ``[n1, n2]`` (``single_logit`` / ``sum_logits`` / ``trace``), used as
  ``k ⊗ I_C``: every logit shares the scalar kernel (the paper's choice, ``C²`` cheaper);
- full ``[n1, n2, C, C]`` blocks: ``Σ`` becomes ``|S|C × |S|C`` (keep ``|S|`` small).

Both are handled by one code path: a kernel is ``[n1, n2, q, q]`` with ``q = 1``
(scalar) or ``q = C`` (full), and outputs are viewed as ``[n, q, m]`` with ``q·m = C``.

The covariance is conditioned by the exact rank-``q`` rule
``Σ ← Σ − Σ(:, x*) (Σ(x*, x*) + δI)⁻¹ Σ(x*, :)`` (``δ`` the nugget, 0 unless ``K_LL``
was jittered; see Numerics), which is what both the greedy batch (with a pseudo-label)
and the sequential mode (with the true label) apply.

Scores. Write ``mean = f_lin`` on ``S``, ``reference`` for the current prediction and
``c(x) = mean(x) − reference(x)`` (the offset). For candidate ``j`` with label ``y``,
``Δ(x; j, y) = Σ(x, j) σ²(j)⁻¹ (e_y − mean_j)`` (here and below ``σ²(j)`` in a
denominator stands for ``σ²(j) + δ``) and the look-ahead change of the prediction at
``x`` is ``change(x) = c(x) + Δ(x; j, y)``. MLMOC sums ``‖change(x)‖₂``
over ``S`` with ``y = argmax reference(j)``; EMOC averages that sum over
``y ~ p(reference(j))``; EER and the flip rate look at ``f⁺ = mean + Δ`` instead (see
:func:`reduce_objective`).

Closed form (scalar kernels, MLMOC and EMOC). With ``a = Σ(x, j)/σ²(j)`` and
``e = e_y − mean_j``, ``‖c(x) + a e‖² = ‖c(x)‖² + 2a c(x)·e + a²‖e‖²`` where
``c(x)·e = c(x)[y] − c(x)·mean_j`` and ``‖e‖² = 1 − 2 mean_j[y] + ‖mean_j‖²``. So every
candidate needs only ``c(x)·mean_j`` (MLMOC: directly ``c(x)·e`` for its one label),
i.e. one ``[S, C] × [C, S]`` product for all candidates, and ``O(S²)`` (MLMOC) or
``O(S²C)`` (EMOC: every ``y``, weighted by ``p(y | j)``) elementwise work, instead of the
``[S, S, Y, C]`` change tensor. Round-off can make the expanded square slightly
negative where the change is ~0; it is clamped at 0 before the square root. EER and
the flip rate need every ``f⁺(x)`` itself, and full blocks couple the logits, so those
keep the direct path.

Numerics: ``K_LL`` is factorised once by :func:`jaxal.ops.linalg.stable_cholesky` (jitter
relative to ``mean(diag K_LL)``, at most :data:`~jaxal.ops.linalg.MAX_RELATIVE_JITTER`,
reported with an ``ok`` flag in :class:`LookaheadInfo`; callers on the host warn through
:func:`jaxal.ops.linalg.check_jitter`).

The nugget is consistent. The jitter ``δ`` added to ``K_LL`` is an observation noise
``δ`` on every labeled point, so a look-ahead label is observed with the same noise:
the bordered kernel is ``[[K_LL + δI, k(L, x')], [k(x', L), k(x', x') + δ]]``, whose
Schur complement is ``σ²(x') + δ`` with ``σ²(x') = Σ(x', x')`` the (latent) posterior
variance. Every update therefore divides by ``σ²(x') + δ`` (``Σ(j, j) + δI`` for full
blocks): ``f⁺ = f_lin + Σ(:, x') (σ²(x') + δ)⁻¹ (y' − f_lin(x'))`` and
``Σ ← Σ − Σ(:, x') Σ(x', :) / (σ²(x') + δ)``, exactly the block inverse of that
bordered matrix, so :func:`add` still equals a fresh :func:`init` with the point
appended (at the same absolute ``δ``). Dividing by ``σ²(x')`` alone would treat ``L``
as noisy and ``x'`` as exact: :func:`add` would no longer match a fresh :func:`init`
(which jitters every labeled row alike), and a duplicate of a labeled point would be
interpolated exactly while the original is fitted with noise ``δ`` (``σ²(x')`` is then
itself ``O(δ)``, so the two choices differ at first order). ``δ`` is stored in the state
(``nugget``; 0 when no jitter was needed, which leaves every result unchanged).

A candidate whose posterior variance is at
or below ``variance_floor`` (``1000·eps·mean(diag K_SS)`` by default) is *clamped*:
in float32 ``σ²`` of a candidate equal to a labeled point cancels to noise of either
sign, and dividing by it gives NaN or arbitrary huge updates. A clamped candidate is one
the kernel already knows (a duplicate of a labeled or already-added point), so its
look-ahead update is set to zero: labeling it would change nothing, and its
offset-only score ``Σ_x ‖c(x)‖`` says nothing about the candidate. :func:`scores`
therefore ranks clamped candidates last: they get one finite score below every
unclamped candidate (and above the ``−inf`` of already-queried ones), so
:func:`best` and :func:`greedy_batch` pick them only when nothing else is left. For
full blocks (``q = C``) a candidate counts as clamped for the ranking only when every
direction of ``Σ(j, j)`` is below the floor (its update is then exactly zero); one
clamped only in some directions keeps its score from the remaining directions. The
number clamped in any direction is reported. The floor tests the latent ``σ²(x')``,
not ``σ²(x') + δ``: it asks whether the kernel already knows ``x'``, which the nugget
does not change.

Greedy batch. Each pick conditions the state on the pick's pseudo-label (the argmax of
the current reference there) and re-scores; :func:`greedy_batch` runs all picks in one
compiled loop. For scalar kernels with MLMOC/EMOC a pick is one in-place rank-1 update
``Σ ← Σ − s_i⁻¹ Σ(:, i) Σ(i, :)``, ``mean ← mean + Σ(:, i) s_i⁻¹ eᵀ`` with
``s_i = σ²(i) + δ``, and one closed-form re-scoring; every score changes with every pick (all of ``Σ`` and ``mean``
move), so ``O(S²)`` work per pick is the least an exact greedy can do.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.ops.entropy import entropy
from jaxal.ops.linalg import cho_solve, stable_cholesky, symmetrize
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
    "greedy_batch_reference",
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
      nugget: scalar, the absolute jitter ``δ`` of ``K_LL``; a look-ahead label is
        observed with the same noise, so updates divide by ``Σ(j, j) + δ`` (see the
        module docstring). 0 (the default) when no jitter was added.
    """

    mean: Array
    offset: Array
    cov: Array
    queried: Array
    variance_floor: Array
    nugget: Array | float = 0.0


class LookaheadInfo(NamedTuple):
    """Diagnostics of :func:`init`.

    Attributes:
      jitter: absolute jitter added to ``diag K_LL`` by the Cholesky.
      relative_jitter: the same as a fraction of ``mean(diag K_LL)``.
      num_clamped: number of candidates whose ``σ²`` is at or below the floor.
      variance_floor: the floor used.
      jitter_ok: bool, whether the Cholesky of ``K_LL`` passed its test at that jitter
        (:attr:`jaxal.ops.linalg.Cholesky.ok`); False means the state is unreliable (NaN
        when the factorisation broke down at the cap).
    """

    jitter: Array
    relative_jitter: Array
    num_clamped: Array
    variance_floor: Array
    jitter_ok: Array


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
        per_label = -jnp.mean(entropy(to_probabilities(new_pred, probability)), axis=0)
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
    valid_l: Array | None = None,
) -> tuple[LookaheadState, LookaheadInfo]:
    """Posterior of the linearised network on ``S`` given the labeled set: one Cholesky.

    Args:
      k_ll: ``[L, L]`` or ``[L, L, C, C]`` kernel on the labeled set.
      k_sl: ``[S, L]`` or ``[S, L, C, C]``.
      k_ss: ``[S, S]`` or ``[S, S, C, C]`` (a full scalar matrix is needed: ``Σ`` is).
      f_l: ``[L, C]`` network outputs on the labeled set.
      f_s: ``[S, C]`` network outputs on ``S``.
      y_l: ``[L]`` int labels.
      jitter: fixed relative jitter for ``K_LL`` (default: the smallest that works, at
        most :data:`~jaxal.ops.linalg.MAX_RELATIVE_JITTER`). Its absolute value is the
        state's ``nugget``.
      variance_floor: absolute floor on ``σ²`` (default :func:`default_variance_floor`).
      valid_l: ``[L]`` bool, the real labeled rows when ``L`` is padded to a bucket
        (default: all). A padded row is decoupled exactly: its ``K_LL`` row and column
        become ``m·e_i`` (``m`` the mean diagonal of the real rows, so the jitter search
        sees the same scale), its ``K_SL`` column and its residual become 0. Then
        ``K_LL⁻¹`` is block diagonal and the state equals the unpadded one.

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
        jit_ok = jnp.asarray(True)
    else:
        kll = _flatten_blocks(k_ll.astype(dtype))
        ksl = _flatten_blocks(k_sl.astype(dtype))
        resid = jax.nn.one_hot(jnp.asarray(y_l), c, dtype=dtype) - f_l.astype(dtype)
        if valid_l is not None:
            kll, ksl, resid = _decouple_padding(kll, ksl, resid, jnp.asarray(valid_l, bool), q)
        chol = stable_cholesky(kll, jitter=jitter)
        resid = resid.reshape(n_l * q, m)
        mean = f_s.astype(dtype) + (ksl @ cho_solve(chol, resid)).reshape(n_s, c)
        a = jax.scipy.linalg.solve_triangular(chol.factor, ksl.T, lower=True)
        cov_flat = kss - a.T @ a
        # The full-kernel layout needs the explicit mirror; for scalar kernels K_SS and AᵀA
        # come from matrix products whose (i, j) and (j, i) entries are the same sums, and
        # any asymmetry is round-off that the symmetric rank-one updates leave as it is.
        # Skipping the S×S transpose saves about half of init on CPU (XLA:CPU transposes
        # 2,000² floats in ~25 ms, against ~10 ms for the rest; benchmarks/lookahead_vs_retraining.py).
        cov_flat = symmetrize(cov_flat) if q > 1 else cov_flat
        jit_abs, jit_rel, jit_ok = chol.jitter, chol.relative_jitter, chol.ok
    cov = _unflatten_blocks(cov_flat, q)
    state = LookaheadState(
        mean=mean,
        offset=mean - f_s.astype(dtype),
        cov=cov,
        queried=jnp.zeros((n_s,), bool),
        variance_floor=floor,
        nugget=jit_abs,
    )
    _, clamped, _ = _variance_status(state)
    return state, LookaheadInfo(jit_abs, jit_rel, jnp.sum(clamped), floor, jit_ok)


def _decouple_padding(kll: Array, ksl: Array, resid: Array, valid: Array, q: int) -> tuple[Array, Array, Array]:
    """Padded labeled rows made inert: ``K_LL`` rows/columns ``m·e_i``, ``K_SL`` columns and residuals 0."""
    v = jnp.repeat(valid, q)  # flattened row index i·q + p
    diag = jnp.diag(kll)
    m = jnp.sum(jnp.where(v, diag, 0.0)) / jnp.maximum(jnp.sum(v), 1)
    kll = jnp.where(v[:, None] & v[None, :], kll, 0.0) + jnp.diag(jnp.where(v, 0.0, m))
    return kll, jnp.where(v[None, :], ksl, 0.0), jnp.where(valid[:, None], resid, 0.0)


def reference(state: LookaheadState) -> Array:
    """``[S, C]`` the current prediction (network outputs moved by every added label)."""
    return state.mean - state.offset


def _block_inverse(blocks: Array, floor: Array, nugget: Array | float = 0.0) -> tuple[Array, Array]:
    """Clamped inverse of ``blocks + nugget·I`` for posterior variance blocks ``[b, q, q]``.

    Directions whose (latent) variance is ``≤ floor`` get inverse 0 (no update along
    them); the others ``1/(λ + nugget)`` (the Schur complement of the bordered kernel
    with the nugget on the new diagonal, see the module docstring).
    Returns ``(inverse [b, q, q], ok [b, q] bool)``: ``ok`` marks the directions kept
    (for ``q = 1`` simply ``σ² > floor``).
    """
    if blocks.shape[-1] == 1:
        s = blocks[:, 0, 0]
        ok = s > floor
        inv = jnp.where(ok, 1.0 / jnp.where(ok, s + nugget, 1.0), 0.0)
        return inv[:, None, None], ok[:, None]
    lam, vec = jnp.linalg.eigh(symmetrize(blocks))
    ok = lam > floor
    inv_lam = jnp.where(ok, 1.0 / jnp.where(ok, lam + nugget, 1.0), 0.0)
    return jnp.einsum("bpk,bk,bqk->bpq", vec, inv_lam, vec), ok


def _variance_status(state: LookaheadState) -> tuple[Array, Array, Array]:
    """``(inverse [S, q, q], clamped [S], dead [S])`` for every candidate's ``Σ(j, j)``.

    ``clamped``: at least one direction at or below the floor (reported);
    ``dead``: every direction is, so the look-ahead update is exactly zero (ranked last).
    """
    blocks = jnp.diagonal(state.cov, axis1=0, axis2=1).transpose(2, 0, 1)
    inv, ok = _block_inverse(blocks, state.variance_floor, state.nugget)
    return inv, ~jnp.all(ok, axis=-1), ~jnp.any(ok, axis=-1)


def _rank_last(s: Array, dead: Array, queried: Array) -> Array:
    """Queried candidates ``−inf``; dead (fully clamped) ones one finite score below the rest.

    The shared score is ``m − 1 − |m|`` with ``m`` the lowest score of the live
    (unqueried, unclamped) candidates, or ``m = 0`` when there is none: strictly below
    every live score in floating point, finite, and above ``−inf``.
    """
    live = ~dead & ~queried
    lowest_live = jnp.min(jnp.where(live, s, jnp.inf))
    lowest_live = jnp.where(jnp.isfinite(lowest_live), lowest_live, jnp.zeros_like(lowest_live))
    s = jnp.where(dead, lowest_live - 1.0 - jnp.abs(lowest_live), s)
    return jnp.where(queried, -jnp.inf, s)


def _condition_scalar(
    mean: Array, cov: Array, i: Array, y: Array, floor: Array, k: Array | None = None, nugget: Array | float = 0.0
) -> tuple[Array, Array]:
    """Rank-1 conditioning for a scalar kernel; ``cov`` is ``[S, S]``.

    With ``k = Σ(:, i)``, ``s = σ²(i) + nugget``, gain ``g = k/s`` (``0`` when
    ``σ²(i) ≤ floor``) and error ``e = e_y − mean_i``: ``mean ← mean + g eᵀ`` and
    ``Σ ← Σ − s⁻¹ (k kᵀ)``. The outer product ``k_x k_z`` is formed before the scaling, so a symmetric ``Σ`` stays
    exactly symmetric. ``k`` may be passed in (a separate buffer lets the compiled loop
    update ``Σ`` in place). Returns ``(mean, cov)``.
    """
    c = mean.shape[-1]
    if k is None:
        k = cov[:, i]
    var = k[i]
    ok = var > floor
    inv = jnp.where(ok, 1.0 / jnp.where(ok, var + nugget, 1.0), 0.0)
    err = jax.nn.one_hot(y, c, dtype=mean.dtype) - mean[i]
    mean = mean + (inv * k)[:, None] * err[None, :]
    cov = cov - inv * (k[:, None] * k[None, :])
    return mean, cov


def _add(state: LookaheadState, i: Array, y: Array) -> LookaheadState:
    """Un-jitted body of :func:`add` (scalar kernels by :func:`_condition_scalar`)."""
    n_s, c = state.mean.shape
    q = state.cov.shape[-1]
    queried = state.queried.at[i].set(True)
    if q == 1:
        mean, cov = _condition_scalar(state.mean, state.cov[:, :, 0, 0], i, y, state.variance_floor,
                                      nugget=state.nugget)
        return state._replace(mean=mean, cov=cov[:, :, None, None], queried=queried)
    col = state.cov[:, i]  # [S, q, q]: Σ(x, i)
    inv, _ = _block_inverse(state.cov[i, i][None], state.variance_floor, state.nugget)
    err = (jax.nn.one_hot(y, c, dtype=state.mean.dtype) - state.mean[i]).reshape(q, c // q)
    gain = jnp.einsum("xpq,qr->xpr", col, inv[0])  # [S, q, q]
    mean = state.mean + jnp.einsum("xpr,rm->xpm", gain, err).reshape(n_s, c)
    cov = state.cov - jnp.einsum("xpr,zsr->xzps", gain, col)
    cov = 0.5 * (cov + jnp.transpose(cov, (1, 0, 3, 2)))
    return state._replace(mean=mean, cov=cov, queried=queried)


@jax.jit
def add(state: LookaheadState, i: Array, y: Array) -> LookaheadState:
    """Condition on the label ``y`` (int) of candidate ``i``: rank-``q`` update, ``O(S²q²)``.

    ``mean ← mean + Σ(:, i) (Σ(i, i) + δI)⁻¹ (e_y − mean_i)`` and
    ``Σ ← Σ − Σ(:, i) (Σ(i, i) + δI)⁻¹ Σ(i, :)`` with ``δ`` the state's nugget; the
    offset is unchanged, so the reference prediction moves with the mean. Equals a
    fresh :func:`init` with ``(x_i, y)`` appended to the labeled set at the same
    absolute jitter (block inverse of the bordered kernel). Directions of
    ``Σ(i, i)`` at or below the variance floor are not updated along.
    """
    return _add(state, i, y)


# ------------------------------------------------------------------------- scoring

CLOSED_FORM_OBJECTIVES = ("mlmoc", "emoc")
SCORE_METHODS = ("auto", "closed_form", "direct")


def _auto_chunk(n_s: int, n_labels: int, c: int, q: int, memory_elements: int = 1 << 23) -> int:
    per_candidate = n_s * (n_labels * c * 4 + q * q)  # a few [S, Y, C] temporaries
    return int(max(1, min(n_s, memory_elements // max(per_candidate, 1))))


def _closed_form_chunk(n_s: int, c: int, objective: str) -> int:
    """Candidates per chunk of the closed form. MLMOC: all at once while the ``[b, S]``
    temporaries stay within about twice the ``[S, S]`` covariance (or 8M elements).
    EMOC: ``[b, C, S]`` blocks of about 1M elements, which stay in cache (measured
    several times faster than larger blocks on CPU)."""
    if objective == "mlmoc":
        return int(max(1, min(n_s, max(1 << 23, 2 * n_s * n_s) // (3 * n_s))))
    return int(max(1, min(n_s, (1 << 20) // (n_s * c))))


def _use_closed_form(method: str, objective: str, q: int) -> bool:
    check_choice("method", method, SCORE_METHODS)
    available = q == 1 and objective in CLOSED_FORM_OBJECTIVES
    if method == "closed_form" and not available:
        raise ValueError(
            f"method='closed_form' needs a scalar kernel and objective in {CLOSED_FORM_OBJECTIVES}; "
            f"got objective={objective!r} with {q}×{q} kernel blocks"
        )
    return available and method != "direct"


def _closed_form_block(
    k_rows: Array,
    offset: Array,
    offset_sq: Array,
    mean_b: Array,
    inv_b: Array,
    ref_b: Array,
    objective: str,
    probability: str,
) -> Array:
    """Closed-form MLMOC/EMOC scores ``[b]`` of a block of candidates (scalar kernel).

    Candidates are rows, ``x ∈ S`` columns. Args:
      k_rows: ``[b, S]`` ``Σ(j, x)`` (``Σ`` is symmetric);
      offset: ``[S, C]`` ``c``; offset_sq: ``[S]`` ``‖c(x)‖²``;
      mean_b, ref_b: ``[b, C]`` mean and reference at the candidates;
      inv_b: ``[b]`` ``(σ²(j) + δ)⁻¹`` (0 when clamped).

    ``‖change(x)‖² = ‖c(x)‖² + a (2 c(x)·(e_y − mean_j) + a ‖e_y − mean_j‖²)`` with
    ``a = Σ(j, x)/σ²(j)``, clamped at 0 before the square root.
    """
    a = k_rows * inv_b[:, None]
    mean_sq = jnp.sum(mean_b * mean_b, axis=-1)  # [b]
    if objective == "mlmoc":
        y = jnp.argmax(ref_b, axis=-1)  # the pseudo-label, as in label_targets
        err = jax.nn.one_hot(y, mean_b.shape[-1], dtype=mean_b.dtype) - mean_b
        dot = err @ offset.T  # [b, S]: c(x)·(e_y − mean_j), one [b, C] × [C, S] product
        err_sq = 1.0 - 2.0 * jnp.take_along_axis(mean_b, y[:, None], axis=-1)[:, 0] + mean_sq
        sq = offset_sq[None, :] + a * (2.0 * dot + a * err_sq[:, None])
        return jnp.sum(jnp.sqrt(jnp.maximum(sq, 0.0)), axis=1)
    m_rows = mean_b @ offset.T  # [b, S]: c(x)·mean_j
    weights = to_probabilities(ref_b, probability)  # [b, C]: p(y | j)
    # ‖c + a e‖² = [‖c‖² − 2a c·mean_j + a²(1 + ‖mean_j‖²)] + 2a (c[y] − a mean_j[y]);
    # laid out [b, C, S] so the long axis x is innermost (vectorised, reduced last).
    base = offset_sq[None, :] + a * (a * (1.0 + mean_sq)[:, None] - 2.0 * m_rows)  # [b, S]
    sq = base[:, None, :] + 2.0 * a[:, None, :] * (offset.T[None, :, :] - a[:, None, :] * mean_b[:, :, None])
    per_label = jnp.sum(jnp.sqrt(jnp.maximum(sq, 0.0)), axis=-1)  # [b, C]
    return jnp.sum(weights * per_label, axis=-1)


def _closed_form_scores(
    cov: Array,
    mean: Array,
    offset: Array,
    inv: Array,
    objective: str,
    probability: str,
    chunk: int,
) -> Array:
    """Raw closed-form scores ``[S]`` (no ranking rule); ``cov`` is ``[S, S]``.

    Candidates go in chunks of ``chunk`` rows (``Σ`` is symmetric, so row ``j`` is
    ``Σ(j, :) = Σ(:, j)``); the last chunk is shifted back to end at ``S`` (overlapping
    rows are recomputed identically).
    """
    n_s = mean.shape[0]
    ref = mean - offset
    offset_sq = jnp.sum(offset * offset, axis=-1)
    b = min(chunk, n_s)

    def block(start: Array) -> Array:
        rows = lambda a: jax.lax.dynamic_slice_in_dim(a, start, b, axis=0)  # noqa: E731
        return _closed_form_block(
            rows(cov), offset, offset_sq, rows(mean), rows(inv), rows(ref), objective, probability
        )

    n_chunks = math.ceil(n_s / b)
    if n_chunks == 1:
        return block(jnp.zeros((), jnp.int32))

    def body(k: Array, out: Array) -> Array:
        start = jnp.minimum(k * b, n_s - b)
        return jax.lax.dynamic_update_slice_in_dim(out, block(start), start, axis=0)

    return jax.lax.fori_loop(0, n_chunks, body, jnp.zeros((n_s,), mean.dtype))


def _direct_scores(
    state: LookaheadState, inv: Array, objective: str, probability: str, chunk: int
) -> Array:
    """Raw scores ``[S]`` from the explicit ``[S, b, Y, C]`` change tensor (any ``q``)."""
    n_s, c = state.mean.shape
    q = state.cov.shape[-1]
    m = c // q
    b = min(chunk, n_s)
    n_chunks = math.ceil(n_s / b)
    idx = jnp.minimum(jnp.arange(n_chunks * b), n_s - 1).reshape(n_chunks, b)
    ref = reference(state)

    def chunk_scores(j: Array) -> Array:
        targets, weights = label_targets(ref[j], objective, probability)  # [b, Y, C], [b, Y]
        err = (targets - state.mean[j][:, None, :]).reshape(b, -1, q, m)
        gain = jnp.einsum("jpq,jyqm->jypm", inv[j], err)  # [b, Y, q, m]
        delta = jnp.einsum("xjpq,jyqm->xjypm", state.cov[:, j], gain).reshape(n_s, b, -1, c)
        new_pred = state.mean[:, None, None, :] + delta
        change = state.offset[:, None, None, :] + delta
        return reduce_objective(objective, change, new_pred, ref, weights, probability)

    return jax.lax.map(chunk_scores, idx).reshape(-1)[:n_s]


def _scores(
    state: LookaheadState, objective: str, probability: str, chunk_size: int | None, method: str
) -> tuple[Array, Array]:
    """Un-jitted body of :func:`scores`."""
    check_choice("objective", objective, OBJECTIVES)
    check_choice("probability", probability, PROBABILITY_MAPS)
    n_s, c = state.mean.shape
    q = state.cov.shape[-1]
    inv, clamped, dead = _variance_status(state)
    if _use_closed_form(method, objective, q):
        chunk = chunk_size or _closed_form_chunk(n_s, c, objective)
        s = _closed_form_scores(
            state.cov[:, :, 0, 0], state.mean, state.offset, inv[:, 0, 0], objective, probability, chunk
        )
    else:
        n_labels = 1 if OBJECTIVES[objective] == "pseudo" else c
        s = _direct_scores(state, inv, objective, probability, chunk_size or _auto_chunk(n_s, n_labels, c, q))
    return _rank_last(s, dead, state.queried), clamped


@functools.partial(jax.jit, static_argnames=("objective", "probability", "chunk_size", "method"))
def scores(
    state: LookaheadState,
    objective: str = "mlmoc",
    probability: str = "softmax",
    chunk_size: int | None = None,
    *,
    method: str = "auto",
) -> tuple[Array, Array]:
    """Look-ahead score of every candidate in ``S``, in chunks of candidates.

    ``method="direct"``: for a chunk ``J`` of ``b`` candidates and labels ``y`` (see
    :func:`label_targets`), ``Δ(x; j, y) = Σ(x, j) Σ(j, j)⁻¹ (y − f_lin(x_j))`` over all
    ``x ∈ S`` at once, so the cost is ``O(S² Y C)`` in total and memory ``O(S·b·Y·C)``;
    no per-candidate inverse of ``K`` and no new kernel. ``method="closed_form"`` (scalar
    kernels, MLMOC/EMOC only): the expanded square of the module docstring, ``O(S²C)``
    for the product ``c · meanᵀ`` plus ``O(S²)`` (MLMOC) or ``O(S²C)`` (EMOC)
    elementwise. ``"auto"`` (default) uses the closed form where it applies.

    Already-queried candidates score ``−inf``; fully clamped ones (zero update, see the
    module docstring) share one finite score below every other unqueried candidate.

    Returns:
      ``(scores [S], clamped [S] bool)``; larger is better for every objective;
      ``clamped`` marks candidates with any direction at or below the variance floor.
    """
    return _scores(state, objective, probability, chunk_size, method)


def best(
    state: LookaheadState, objective: str = "mlmoc", probability: str = "softmax", *, method: str = "auto"
) -> Array:
    """Index of the best not-yet-queried candidate (a clamped one only if nothing else is left)."""
    return jnp.argmax(scores(state, objective, probability, method=method)[0])


def _check_budget(state: LookaheadState, budget: int) -> None:
    if budget < 0 or budget > state.mean.shape[0] - int(np.sum(np.asarray(state.queried))):
        raise ValueError(f"budget={budget} must be in [0, number of unqueried candidates]")


def greedy_batch_reference(
    state: LookaheadState,
    budget: int,
    objective: str = "mlmoc",
    probability: str = "softmax",
    chunk_size: int | None = None,
    *,
    method: str = "auto",
) -> tuple[Array, LookaheadState, Array]:
    """The greedy batch as a plain Python loop of :func:`scores` and :func:`add` calls.

    Same semantics and returns as :func:`greedy_batch` (which runs it as one compiled
    loop); kept as the readable reference. ``method`` is passed to :func:`scores`.
    """
    _check_budget(state, budget)
    picks, n_clamped = [], []
    for _ in range(budget):
        s, clamped = scores(state, objective, probability, chunk_size, method=method)
        i = jnp.argmax(s)
        picks.append(i)
        n_clamped.append(jnp.sum(clamped & ~state.queried))
        state = add(state, i, jnp.argmax(reference(state)[i]))
    if not picks:
        return jnp.zeros((0,), jnp.int32), state, jnp.zeros((0,), jnp.int32)
    return jnp.stack(picks), state, jnp.stack(n_clamped)


def _greedy_closed_form(
    state: LookaheadState, budget: int, objective: str, probability: str, chunk_size: int | None
) -> tuple[Array, LookaheadState, Array]:
    """Greedy loop for a scalar kernel and MLMOC/EMOC.

    Carries ``mean``, ``Σ [S, S]`` and ``queried`` (rank-1 updates of
    :func:`_condition_scalar`) and, from the closed-form scores of the current state,
    the next pick ``i`` with its column ``Σ(:, i)`` and clamped count. A pick costs one in-place
    rank-1 update of ``Σ``, the ``[S, C] × [C, S]`` product of the closed form and one
    elementwise pass (``O(S²)`` for MLMOC, ``O(S²C)`` for EMOC).
    """
    n_s, c = state.mean.shape
    offset, floor, nugget = state.offset, state.variance_floor, state.nugget
    chunk = chunk_size or _closed_form_chunk(n_s, c, objective)

    def rescore(mean: Array, cov: Array, queried: Array) -> tuple:
        var = jnp.diagonal(cov)
        ok = var > floor
        inv = jnp.where(ok, 1.0 / jnp.where(ok, var + nugget, 1.0), 0.0)
        s = _rank_last(_closed_form_scores(cov, mean, offset, inv, objective, probability, chunk), ~ok, queried)
        i = jnp.argmax(s)
        return i, cov[i], jnp.sum(~ok & ~queried).astype(jnp.int32)  # row i = Σ(:, i): Σ is symmetric

    def pick_and_add(t: Array, carry: tuple) -> tuple:
        mean, cov, queried, i, k, n_clamped, picks, counts = carry
        picks, counts = picks.at[t].set(i.astype(jnp.int32)), counts.at[t].set(n_clamped)
        mean, cov = _condition_scalar(mean, cov, i, jnp.argmax(mean[i] - offset[i]), floor, k, nugget)
        return mean, cov, queried.at[i].set(True), picks, counts

    def body(t: Array, carry: tuple) -> tuple:
        mean, cov, queried, picks, counts = pick_and_add(t, carry)
        return (mean, cov, queried, *rescore(mean, cov, queried), picks, counts)

    cov = state.cov[:, :, 0, 0]
    zeros = jnp.zeros((budget,), jnp.int32)
    carry = (state.mean, cov, state.queried, *rescore(state.mean, cov, state.queried), zeros, zeros)
    carry = jax.lax.fori_loop(0, budget - 1, body, carry)
    mean, cov, queried, picks, counts = pick_and_add(jnp.asarray(budget - 1), carry)
    return picks, state._replace(mean=mean, cov=cov[:, :, None, None], queried=queried), counts


def _greedy_general(
    state: LookaheadState, budget: int, objective: str, probability: str, chunk_size: int | None, method: str
) -> tuple[Array, LookaheadState, Array]:
    """Greedy loop re-scoring by :func:`scores`' path and conditioning by :func:`add`'s."""

    def rescore(st: LookaheadState) -> tuple[Array, Array]:
        s, clamped = _scores(st, objective, probability, chunk_size, method)
        return s, jnp.sum(clamped & ~st.queried).astype(jnp.int32)

    def pick_and_add(t: Array, carry: tuple) -> tuple:
        st, s, n_clamped, picks, counts = carry
        i = jnp.argmax(s)
        picks, counts = picks.at[t].set(i.astype(jnp.int32)), counts.at[t].set(n_clamped)
        return _add(st, i, jnp.argmax(reference(st)[i])), s, n_clamped, picks, counts

    def body(t: Array, carry: tuple) -> tuple:
        st, _, _, picks, counts = pick_and_add(t, carry)
        return (st, *rescore(st), picks, counts)

    zeros = jnp.zeros((budget,), jnp.int32)
    carry = jax.lax.fori_loop(0, budget - 1, body, (state, *rescore(state), zeros, zeros))
    state, _, _, picks, counts = pick_and_add(jnp.asarray(budget - 1), carry)
    return picks, state, counts


@functools.partial(jax.jit, static_argnames=("budget", "objective", "probability", "chunk_size", "method"))
def _greedy_compiled(
    state: LookaheadState, budget: int, objective: str, probability: str, chunk_size: int | None, method: str
) -> tuple[Array, LookaheadState, Array]:
    check_choice("objective", objective, OBJECTIVES)
    check_choice("probability", probability, PROBABILITY_MAPS)
    if _use_closed_form(method, objective, state.cov.shape[-1]):
        return _greedy_closed_form(state, budget, objective, probability, chunk_size)
    return _greedy_general(state, budget, objective, probability, chunk_size, method)


def greedy_batch(
    state: LookaheadState,
    budget: int,
    objective: str = "mlmoc",
    probability: str = "softmax",
    chunk_size: int | None = None,
    *,
    method: str = "auto",
) -> tuple[Array, LookaheadState, Array]:
    """Greedy batch: pick the best, :func:`add` it with its pseudo-label, re-score.

    The pseudo-label is the argmax of the current reference prediction at the pick, so
    later picks see the earlier ones as labeled (redundant neighbours lose score).
    Clamped candidates are picked only when no other unqueried candidate is left.

    All ``budget`` picks run in one compiled loop (``budget`` is static). With a scalar
    kernel and MLMOC/EMOC (``method="auto"`` or ``"closed_form"``) each pick updates
    ``mean`` and ``Σ`` in place by the rank-1 rule and re-scores by the closed form:
    ``O(S²)`` per pick for MLMOC, ``O(S²C)`` elementwise for EMOC, no ``[S, b, Y, C]``
    tensors. Otherwise (full blocks, EER, flip rate, or ``method="direct"``) each pick
    re-scores by the direct path inside the same loop. :func:`greedy_batch_reference`
    is the equivalent Python loop.

    Returns ``(indices [budget], final state, clamped counts per pick [budget])``; the
    count at a pick is the number of unqueried candidates clamped in any direction
    before it.
    """
    _check_budget(state, budget)
    if budget == 0:
        return jnp.zeros((0,), jnp.int32), state, jnp.zeros((0,), jnp.int32)
    return _greedy_compiled(state, budget, objective, probability, chunk_size, method)


# ------------------------------------------------------- candidates outside S (a pool)
#
# The functions above keep Σ on S × S, so the candidates are S. To score every row J of
# a large pool (jaxal.lookahead.pool_scores) against an evaluation set S, only the rows
# Σ(J, S) are needed, and they come from the labeled set's factor alone:
#
#     A_J = K_JL Lc⁻ᵀ,   Σ(J, S) = K_JS − A_J A_Sᵀ,   σ²(J) = diag K_JJ − ‖A_J‖²,
#     mean_J = f_J + K_JL (K_LL + δI)⁻¹ R,
#
# with Lc Lcᵀ = K_LL + δI (the same Cholesky, jitter and padding as init). For j ∈ S
# these are init's Σ(j, :), Σ(j, j) and mean_j (the same expressions, with Lc⁻¹ applied
# as a product instead of a solve), so the scores below are :func:`scores`' for those
# candidates; the clamping rule and the ranking rule are the same.


class LabeledSolve(NamedTuple):
    """The labeled set's part of the look-ahead, for candidates scored row by row (scalar kernels).

    Attributes:
      inv_factor: ``[L, L]`` ``Lc⁻¹`` (lower triangular), ``Lc Lcᵀ = K_LL + δI`` with
        padded rows decoupled as in :func:`init`.
      alpha: ``[L, C]`` ``(K_LL + δI)⁻¹ R`` (0 on padded rows).
      valid: ``[L]`` 1 on real labeled rows, 0 on padding (multiplies ``K_JL``'s columns).
      nugget: the absolute jitter ``δ``; relative_jitter, ok: as :class:`LookaheadInfo`.
    """

    inv_factor: Array
    alpha: Array
    valid: Array
    nugget: Array
    relative_jitter: Array
    ok: Array


@functools.partial(jax.jit, static_argnames=("jitter",))
def solve_labeled(
    k_ll: Array, f_l: Array, y_l: Array, *, jitter: float | None = None, valid_l: Array | None = None
) -> LabeledSolve:
    """Factor ``K_LL`` once (:func:`~jaxal.ops.linalg.stable_cholesky`, padding decoupled
    as in :func:`init`) for :func:`posterior_rows`. ``k_ll`` is a scalar ``[L, L]`` kernel
    (``L >= 1``), ``f_l`` ``[L, C]`` the network outputs, ``y_l`` ``[L]`` int labels."""
    k_ll, f_l = jnp.asarray(k_ll), jnp.asarray(f_l)
    if k_ll.ndim != 2:
        raise ValueError(f"solve_labeled takes a scalar kernel [L, L], got shape {k_ll.shape}")
    dtype = jnp.result_type(k_ll.dtype, f_l.dtype, jnp.float32)
    n_l, c = f_l.shape
    kll = k_ll.astype(dtype)
    resid = jax.nn.one_hot(jnp.asarray(y_l), c, dtype=dtype) - f_l.astype(dtype)
    valid = jnp.ones((n_l,), bool) if valid_l is None else jnp.asarray(valid_l, bool)
    kll, _, resid = _decouple_padding(kll, jnp.zeros((0, n_l), dtype), resid, valid, 1)
    chol = stable_cholesky(kll, jitter=jitter)
    alpha = cho_solve(chol, resid)
    inv_factor = jax.scipy.linalg.solve_triangular(chol.factor, jnp.eye(n_l, dtype=dtype), lower=True)
    return LabeledSolve(inv_factor, alpha, valid.astype(dtype), chol.jitter, chol.relative_jitter, chol.ok)


def _dot(a: Array, b: Array) -> Array:
    # Σ and σ² are differences of nearly equal terms: full float32 products (no TF32)
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def labeled_rows(k_jl: Array, lab: LabeledSolve | None) -> Array:
    """``A_J = K_JL Lc⁻ᵀ`` ``[b, L]`` (padded columns of ``K_JL`` zeroed); ``[b, 0]`` when
    there is no labeled set (``lab`` None)."""
    if lab is None:
        return jnp.zeros((k_jl.shape[0], 0), k_jl.dtype)
    return _dot(k_jl * lab.valid, lab.inv_factor.T)


def posterior_rows(
    k_jl: Array, k_js: Array, k_jj: Array, f_j: Array, a_s: Array, lab: LabeledSolve | None
) -> tuple[Array, Array, Array]:
    """``(Σ(J, S) [b, S], σ²(J) [b], mean_J [b, C])`` of a block of candidates ``J``.

    Args:
      k_jl: ``[b, L]``, k_js: ``[b, S]`` kernel rows; k_jj: ``[b]`` diagonal; f_j:
        ``[b, C]`` network outputs; a_s: ``[S, L]`` :func:`labeled_rows` of ``K_SL``;
      lab: :func:`solve_labeled`, or ``None`` for an empty labeled set (then ``Σ = K``
        and ``mean = f``).
    """
    if lab is None:
        return k_js, k_jj, f_j
    a_j = labeled_rows(k_jl, lab)
    cov = k_js - _dot(a_j, a_s.T)
    var = k_jj - jnp.sum(a_j * a_j, axis=-1)
    mean = f_j + _dot(k_jl * lab.valid, lab.alpha)
    return cov, var, mean


def candidate_scores(
    cov_rows: Array,
    var: Array,
    mean_j: Array,
    f_j: Array,
    mean_s: Array,
    offset_s: Array,
    floor: Array,
    nugget: Array | float,
    objective: str,
    probability: str = "softmax",
    linearised: bool = False,
) -> tuple[Array, Array]:
    """Raw look-ahead scores ``[b]`` of candidates given their rows ``Σ(J, S)``, and ``dead [b]``.

    The rule of :func:`scores` for a scalar kernel, candidate by candidate: ``σ²(j) <=
    floor`` is clamped (inverse 0, ``dead``); MLMOC/EMOC by the closed form
    (:func:`_closed_form_block`), EER/flip rate from the explicit ``[S, b, Y, C]`` change.
    ``mean_s``/``offset_s`` ``[S, C]`` are the state's on ``S``; the candidates' offset is
    ``mean_j − f_j`` (``reference="network"``) or 0 (``linearised``), as on ``S``. Apply
    :func:`rank_pool` to all candidates' raw scores for the ranking rule.
    """
    check_choice("objective", objective, OBJECTIVES)
    check_choice("probability", probability, PROBABILITY_MAPS)
    ok = var > floor
    inv = jnp.where(ok, 1.0 / jnp.where(ok, var + nugget, 1.0), 0.0)
    ref_j = mean_j if linearised else mean_j - (mean_j - f_j)  # reference = mean − offset, as in reference()
    if objective in CLOSED_FORM_OBJECTIVES:
        offset_sq = jnp.sum(offset_s * offset_s, axis=-1)
        s = _closed_form_block(cov_rows, offset_s, offset_sq, mean_j, inv, ref_j, objective, probability)
    else:
        targets, weights = label_targets(ref_j, objective, probability)  # [b, Y, C], [b, Y]
        gain = inv[:, None, None] * (targets - mean_j[:, None, :])
        delta = cov_rows.T[:, :, None, None] * gain[None]  # [S, b, Y, C]
        s = reduce_objective(objective, offset_s[:, None, None, :] + delta, mean_s[:, None, None, :] + delta,
                             mean_s - offset_s, weights, probability)
    return s, ~ok


@jax.jit
def rank_pool(s: Array, dead: Array, valid: Array) -> Array:
    """:func:`scores`' ranking rule over a pool's raw scores: rows not ``valid`` (padding)
    ``−inf``, dead (clamped) candidates one finite score below every live one."""
    return _rank_last(s, dead & valid, ~valid)
