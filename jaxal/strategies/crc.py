"""CRC: convergence-rate control (Kong et al., "Relieving the Plateau", Algorithm 1).

Gradient descent on a (linearised) network converges on the labeled set at a rate set
by the smallest positive eigenvalue of its empirical-NTK Gram matrix. CRC picks the
groups of candidates that keep that matrix best conditioned:

    score(g) = λ⁺_min(K over L ∪ g),   K(x, x') = Σ_c Θ_cc(x, x')  (trace kernel)

1. Partition the candidates (``ctx.x_pool``) at random into groups of ``G`` (``G``
   must divide the query size ``Q``; leftover candidates are dropped at random).
2. Score every group in one batched, vmapped ``eigvalsh``.
3. Return the members of the ``Q/G`` best groups.

Kernels: ``kernel="last"`` (default, the paper's better variant) uses the head's
parameters only; for a Dense head ``Θ_cc'(x, x') = (h·h' + 1) δ_cc'``, so
``K = C·ΦΦᵀ`` with ``φ(x) = [h(x), 1]`` and no NTK engine is needed. ``kernel="full"``
(all parameters; also ``"last"`` for a non-dense head) calls :func:`jaxal.ntk.kernel`.

Dual trick (Dense head): the nonzero spectrum of ``C·ΦΦᵀ`` (``n×n``, ``n = |L|+G``)
equals that of ``C·ΦᵀΦ`` (``(d+1)×(d+1)``), and ``ΦᵀΦ = Φ_LᵀΦ_L + Φ_gᵀΦ_g`` — a
shared matrix plus a rank-``G`` update per group. ``method="auto"`` solves the smaller
side. The zero rule (which eigenvalues count as 0) is the same on both sides; see
:mod:`jaxal.spectral` for the two definitions of λ⁺_min (``spectrum="generic"``, the
default, satisfies the paper's Proposition 2: a group holding a duplicate or an
already-labeled point scores 0 when ``|L|+G`` does not exceed the feature rank).

Pseudo-AL (experiments only, uses the pool's TRUE labels): with ``pool_labels`` and
``per_class=R`` every group holds ``R`` candidates of each class (``G = R·C``). This is
the paper's class-balanced "pseudo-AL" setting, an oracle-cheating upper bound, not an
active-learning strategy.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxal.model import Model
from jaxal.ntk import head_features, kernel as ntk_kernel
from jaxal.spectral import bordered_scores, default_rtol, dual_scores, numerical_rank
from jaxal.strategies.base import Context, Query, register
from jaxal.strategies.common import top_k_indices
from jaxal.validation import check_choice

__all__ = ["crc", "group_scores", "random_groups", "class_balanced_groups"]

KERNELS = ("last", "full")
METHODS = ("auto", "dual", "primal")
SPECTRA = ("generic", "positive")


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def random_groups(key: jax.Array, n: int, group_size: int, max_groups: int | None = None) -> np.ndarray:
    """Random partition of ``range(n)`` into ``[B, group_size]`` groups.

    ``B = n // group_size`` (at most ``max_groups``); the candidates left over are
    dropped uniformly at random.
    """
    num = n // group_size if max_groups is None else min(n // group_size, max_groups)
    perm = np.asarray(jax.random.permutation(key, n))
    return perm[: num * group_size].reshape(num, group_size).astype(np.int64)


def class_balanced_groups(
    key: jax.Array, labels: Any, per_class: int, num_classes: int, max_groups: int | None = None
) -> np.ndarray:
    """Groups ``[B, per_class·C]`` holding ``per_class`` candidates of every class.

    Uses TRUE labels: for the paper's pseudo-AL experiments only. ``B`` is limited by
    the rarest class (``min_c n_c // per_class``, at most ``max_groups``).
    """
    labels = np.asarray(labels)
    keys = jax.random.split(key, num_classes)
    blocks = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        blocks.append(members[np.asarray(jax.random.permutation(keys[c], members.shape[0]))])
    num = min(b.shape[0] for b in blocks) // per_class
    if max_groups is not None:
        num = min(num, max_groups)
    per = [b[: num * per_class].reshape(num, per_class) for b in blocks]
    return np.concatenate(per, axis=1).astype(np.int64)


def _num_params(tree: Any) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(tree)))


def _take(x: Any, idx: np.ndarray) -> Any:
    return x[idx] if isinstance(x, np.ndarray) else jnp.asarray(x)[jnp.asarray(idx)]


def _ntk_blocks(model, x_labeled, x_groups, groups_shape, subset, dtype, chunk_points=256):
    """``K_LL [L,L]``, ``K_Lg [B,L,G]``, ``K_gg [B,G,G]`` from :func:`jaxal.ntk.kernel` (trace)."""
    num, g = groups_shape
    n_l = int(np.shape(x_labeled)[0])

    def kern(a, b=None):
        return jnp.asarray(ntk_kernel(model, a, b, contraction="trace", subset=subset), dtype)

    if n_l:
        k_ll = kern(x_labeled)
        k_lg = kern(x_labeled, x_groups).reshape(n_l, num, g).transpose(1, 0, 2)
    else:
        k_ll = jnp.zeros((0, 0), dtype)
        k_lg = jnp.zeros((num, 0, g), dtype)
    per_chunk = max(1, chunk_points // g)
    blocks = []
    for start in range(0, num, per_chunk):
        b = min(per_chunk, num - start)
        xs = x_groups[start * g : (start + b) * g]
        k4 = kern(xs).reshape(b, g, b, g)
        ar = jnp.arange(b)
        blocks.append(k4[ar, :, ar, :])  # diagonal blocks [b, G, G]
    return k_ll, k_lg, jnp.concatenate(blocks, axis=0)


def group_scores(
    model: Model,
    x_labeled: Any,
    x_pool: Any,
    groups: Any,
    *,
    num_classes: int,
    kernel: str = "last",
    method: str = "auto",
    spectrum: str = "generic",
    rtol: float | None = None,
    dtype: Any = None,
    memory_bytes: int | None = None,
    batch_size: int = 4096,
) -> tuple[jax.Array, dict]:
    """λ⁺_min of the trace-NTK Gram matrix over ``L ∪ g`` for every group.

    Args:
      model: the trained model.
      x_labeled: ``[L, ...]`` labeled inputs (may be empty).
      x_pool: ``[U, ...]`` candidates.
      groups: ``[B, G]`` int indices into ``x_pool``.
      num_classes: ``C`` (the trace kernel of a Dense head is ``C·(h·h' + 1)``).
      kernel: ``"last"`` (head parameters) or ``"full"`` (all parameters).
      method: ``"dual"`` (``(d+1)``-sized eigenproblems; Dense head and ``"last"`` only),
        ``"primal"`` (``(|L|+G)``-sized), ``"auto"`` (the smaller).
      spectrum: ``"generic"`` (skip the eigenvalues that are zero for every group,
        degenerate groups score 0) or ``"positive"`` (smallest eigenvalue above the
        threshold); see :mod:`jaxal.spectral`.
      rtol: eigenvalues ``≤ rtol·λ_max`` are zero; default ``eps·max(|L|+G, p)`` with
        ``p = d+1`` for a Dense head's last-layer kernel, ``p = 0`` otherwise.
      dtype: compute dtype (e.g. ``jnp.float64`` inside ``jax.enable_x64``); default
        the model's.
      memory_bytes: bound on the working memory of one vmapped batch of eigenproblems.
      batch_size: rows per forward pass when embedding.

    Returns:
      ``(scores [B], info)``; ``info`` has ``method``, ``rtol``, ``rank`` (the ``k`` of
      the generic rule, ``None`` for ``"positive"``) and ``labeled_score`` (λ⁺_min of
      ``K_LL`` alone, same rule; 0 when ``L`` is empty).
    """
    check_choice("kernel", kernel, KERNELS)
    check_choice("method", method, METHODS)
    check_choice("spectrum", spectrum, SPECTRA)
    groups = np.asarray(groups, dtype=np.int64)
    if groups.ndim != 2 or groups.shape[0] == 0 or groups.shape[1] == 0:
        raise ValueError(f"groups must be a non-empty [B, G] index array, got shape {groups.shape}")
    num, g = groups.shape
    n_l = int(np.shape(x_labeled)[0])
    n = n_l + g
    x_groups = _take(x_pool, groups.reshape(-1))
    dense_last = kernel == "last" and model.dense_head
    if method == "dual" and not dense_last:
        raise ValueError("method='dual' needs kernel='last' and a Dense head (model.dense_head)")

    if dense_last:
        phi_g = head_features(model, x_groups, batch_size)
        phi_l = head_features(model, x_labeled, batch_size) if n_l else jnp.zeros((0, phi_g.shape[1]), phi_g.dtype)
        if dtype is not None:
            phi_g, phi_l = phi_g.astype(dtype), phi_l.astype(dtype)
        p = phi_g.shape[1]
        phi_g = phi_g.reshape(num, g, p)
        tol = default_rtol(phi_g.dtype, n, p) if rtol is None else float(rtol)
        tol_l = default_rtol(phi_g.dtype, n_l, p) if rtol is None else float(rtol)
        if spectrum == "generic":
            # rank reached by the features of every point, under the groups' zero rule
            phi_all = np.concatenate([np.asarray(phi_l, np.float64), np.asarray(phi_g, np.float64).reshape(-1, p)])
            p_eff = numerical_rank(phi_all.T @ phi_all, tol)
        else:
            p_eff = None
        scale = float(num_classes)
        a_l = phi_l.T @ phi_l
        use_dual = method == "dual" or (method == "auto" and p < n)
        if use_dual:
            def score(pg, tol_, k):
                return dual_scores(a_l, pg, scale=scale, rtol=tol_, rank=k, memory_bytes=memory_bytes)
        else:
            k_ll = scale * (phi_l @ phi_l.T)

            def score(pg, tol_, k):
                k_lg = scale * jnp.einsum("lp,bgp->blg", phi_l, pg)
                k_gg = scale * jnp.einsum("bgp,bhp->bgh", pg, pg)
                return bordered_scores(k_ll, k_lg, k_gg, rtol=tol_, rank=k, memory_bytes=memory_bytes)

        score_groups = lambda tol_, k: score(phi_g, tol_, k)  # noqa: E731
        score_labeled = lambda tol_, k: score(phi_g[:1, :0], tol_, k)  # noqa: E731 - empty group
        out_dtype = phi_g.dtype
    else:
        use_dual = False
        subset = "head" if kernel == "last" else "all"
        dt = dtype if dtype is not None else jnp.result_type(*jax.tree_util.tree_leaves(model.params))
        k_ll, k_lg, k_gg = _ntk_blocks(model, x_labeled, x_groups, (num, g), subset, dt)
        n_params = _num_params(model.params["head"] if subset == "head" else model.params)
        p_eff = n_params if spectrum == "generic" else None
        tol = default_rtol(k_gg.dtype, n) if rtol is None else float(rtol)
        tol_l = default_rtol(k_gg.dtype, n_l) if rtol is None else float(rtol)

        def score_groups(tol_, k):
            return bordered_scores(k_ll, k_lg, k_gg, rtol=tol_, rank=k, memory_bytes=memory_bytes)

        def score_labeled(tol_, k):  # the labeled set alone: an empty group
            return bordered_scores(k_ll, k_lg[:1, :, :0], k_gg[:1, :0, :0], rtol=tol_, rank=k, memory_bytes=memory_bytes)

        out_dtype = k_gg.dtype

    def rank_for(size: int) -> int | None:
        return None if p_eff is None else min(size, p_eff)

    k = rank_for(n)
    scores = jnp.zeros((num,), out_dtype) if k == 0 else score_groups(tol, k)
    k_lab = rank_for(n_l)
    labeled_score = float(score_labeled(tol_l, k_lab)[0]) if n_l and k_lab != 0 else 0.0
    info = {
        "method": "dual" if use_dual else "primal",
        "rtol": tol,
        "rank": k,
        "labeled_score": labeled_score,
    }
    return scores, info


@register("crc")
def crc(
    key: jax.Array,
    ctx: Context,
    budget: int,
    *,
    group_size: int | None = None,
    kernel: str = "last",
    method: str = "auto",
    spectrum: str = "generic",
    rtol: float | None = None,
    max_groups: int | None = None,
    pool_labels: Any = None,
    per_class: int | None = None,
    dtype: Any = None,
    memory_bytes: int | None = None,
    batch_size: int = 4096,
) -> Query:
    """CRC (Algorithm 1): the ``budget/G`` random groups with the largest λ⁺_min.

    Args:
      key: randomness of the partition and of tie-breaks.
      ctx: the round's :class:`~jaxal.strategies.base.Context`.
      budget: query size ``Q``.
      group_size: ``G``; must divide ``budget``. Default ``budget`` (one group).
      kernel, method, spectrum, rtol, dtype, memory_bytes, batch_size: see
        :func:`group_scores`.
      max_groups: score at most this many random groups (a random pool subset).
      pool_labels: ``[U]`` TRUE pool labels — pseudo-AL experiments only (uses the
        oracle's labels; an upper bound, not active learning). Needs ``per_class``.
      per_class: ``R`` candidates of each class per group (``G = R·C``).

    Returns:
      :class:`~jaxal.strategies.base.Query` whose ``info`` records the selected groups'
      scores (``group_scores``), ``labeled_score`` (λ⁺_min of the labeled set alone),
      ``num_groups``, ``group_size``, ``method``, ``kernel``, ``rtol``, ``rank``.
    """
    n_pool = int(np.shape(ctx.x_pool)[0])
    if max_groups is not None:
        max_groups = _check_positive_int("max_groups", max_groups)
    k_part, k_tie = jax.random.split(key)
    if (pool_labels is None) != (per_class is None):
        raise ValueError("pool_labels and per_class must be given together (pseudo-AL setting)")
    if per_class is not None:
        per_class = _check_positive_int("per_class", per_class)
        labels = np.asarray(pool_labels)
        if labels.shape != (n_pool,):
            raise ValueError(f"pool_labels must have shape ({n_pool},), got {labels.shape}")
        balanced = per_class * ctx.num_classes
        if group_size is not None and int(group_size) != balanced:
            raise ValueError(
                f"group_size={group_size} must equal per_class*num_classes={balanced} when per_class is given"
            )
        group_size = balanced
    g = budget if group_size is None else _check_positive_int("group_size", group_size)
    if budget % g:
        raise ValueError(f"group_size={g} must divide the query size budget={budget}")
    if per_class is not None:
        groups = class_balanced_groups(k_part, labels, per_class, ctx.num_classes, max_groups)
    else:
        groups = random_groups(k_part, n_pool, g, max_groups)
    wanted = budget // g
    if groups.shape[0] < wanted:
        raise ValueError(
            f"only {groups.shape[0]} groups of size {g} could be formed but budget={budget} needs {wanted}"
            " (raise max_groups or lower per_class)"
        )
    scores, info = group_scores(
        ctx.model,
        ctx.x_labeled,
        ctx.x_pool,
        groups,
        num_classes=ctx.num_classes,
        kernel=kernel,
        method=method,
        spectrum=spectrum,
        rtol=rtol,
        dtype=dtype,
        memory_bytes=memory_bytes,
        batch_size=batch_size,
    )
    best = top_k_indices(scores, wanted, k_tie)
    s = np.asarray(scores, dtype=np.float64)
    info.update(
        kernel=kernel,
        spectrum=spectrum,
        group_size=g,
        num_groups=int(groups.shape[0]),
        group_scores=[float(v) for v in s[best]],
        uses_true_labels=per_class is not None,
    )
    return Query(indices=groups[best].reshape(-1), info=info)
