"""Look-ahead scores of every row of a large pool, the pool sharded over a device mesh.

:func:`jaxal.lookahead.core.init` keeps the posterior covariance on ``S × S``, so its
candidates are ``S`` and ``|S|`` stays in the thousands. Here the candidates ``J`` are
the whole pool (``10⁵``–``10⁶`` rows), streamed from the host and split over the devices
of a :func:`jaxal.pool.pool_mesh` by :func:`jaxal.pool.map_rows`; ``S`` is a uniform
subset of the pool (the evaluation set, ``eval_rows``) and ``L`` the labeled set. Only
rows of the covariance are ever formed (scalar kernels, ``k ⊗ I_C``):

- once, on one device: the kernel's per-example features of ``L`` and ``S``, ``K_LL``
  and its Cholesky ``Lc`` (the jitter rule and bucket padding of
  :func:`~jaxal.lookahead.from_model.init_from_model`), ``A_S = K_SL Lc⁻ᵀ``,
  ``α = (K_LL + δI)⁻¹ R``, ``mean_S``, the offset and the variance floor on ``S``;
- per chunk of ``b`` candidates on every device: ``K_JL [b, L]``, ``K_JS [b, S]``,
  ``diag K_JJ [b]`` and ``f_J``, then ``A_J = K_JL Lc⁻ᵀ``,
  ``Σ(J, S) = K_JS − A_J A_Sᵀ``, ``σ²(J) = diag K_JJ − ‖A_J‖²``,
  ``mean_J = f_J + K_JL α``, and the score by the rule of
  :func:`jaxal.lookahead.core.scores` (closed form for MLMOC/EMOC, the explicit change
  for EER/flip rate, the same variance floor and clamping);
- the ranking rule (clamped candidates last) over all candidates, then
  :func:`jaxal.pool.top_k`.

For a candidate ``j ∈ S`` every quantity is the one :func:`core.init` computes for it,
so its score is :func:`core.scores`' (to float round-off); candidates outside ``S`` are
new. Memory per device: the replicated ``[L, L]`` factor, ``[S, L]`` rows and the
features of ``L ∪ S``, plus one chunk of ``b × (L + S)`` kernel entries and the
objective's temporaries; ``memory_bytes`` bounds that and sets ``b``.

The kernel rows are computed inside the jitted chunk function by the NTK
:class:`~jaxal.ntk.engine.Engine` that :func:`jaxal.ntk.kernel` would use (its
``prepare``/``pair``/``diag`` are pure, traceable functions of the parameters and a
batch), so the empirical NTK here is the same kernel as on the single-device path.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxal import pool
from jaxal.lookahead import core
from jaxal.lookahead.from_model import pad_to_bucket
from jaxal.ntk.engine import Engine, merge_leaves
from jaxal.ntk.kernel import DEFAULT_MEMORY_BYTES
from jaxal.ntk.kernel import engine_for
from jaxal.ntk.params import split_params
from jaxal.ops.linalg import check_jitter
from jaxal.validation import check_choice

__all__ = ["DEFAULT_EVAL_SIZE", "SCALAR_CONTRACTIONS", "PoolScores", "pool_scores", "pool_memory"]

#: ``|S|`` when the caller does not choose it: ``min(pool, DEFAULT_EVAL_SIZE)``.
DEFAULT_EVAL_SIZE = 2000
#: Contractions the pool path takes (a scalar kernel used ``⊗ I_C``).
SCALAR_CONTRACTIONS = ("single_logit", "sum_logits", "trace")
_MAX_CHUNK_ROWS = 4096
_DEFAULT_CHUNK_BYTES = 256 * 2**20  # per-device chunk working set when memory_bytes is None


class PoolScores(NamedTuple):
    """What :func:`pool_scores` returns.

    Attributes:
      scores: :class:`jaxal.pool.Sharded` ``[N_pad]`` ranked scores (larger is better;
        clamped candidates share one score below every other; padding ``−inf``).
      info: :class:`~jaxal.lookahead.core.LookaheadInfo` (jitter of ``K_LL``, number of
        clamped candidates in the pool, variance floor, ``jitter_ok``).
      chunk_rows: candidates per device per step.
      memory: the per-device byte estimate (:func:`pool_memory`) at that chunk.
    """

    scores: pool.Sharded
    info: core.LookaheadInfo
    chunk_rows: int
    memory: int


@dataclasses.dataclass(frozen=True)
class _Kernel:
    """The network and its NTK engine, static (hashable: compiled programs are reused
    across rounds while the model's functions, shapes and options stay the same)."""

    engine: Engine
    treedef: Any
    mask: tuple
    features: Callable[..., Any]
    head: Callable[..., Any]
    linearised: bool
    labeled: bool

    def logits(self, sel: list, fixed: list, x: jax.Array) -> jax.Array:
        params = merge_leaves(self.treedef, self.mask, sel, fixed)
        return self.head(params["head"], self.features(params["body"], x, None))


@dataclasses.dataclass(frozen=True)
class _Spec:
    """The chunk function of :func:`jaxal.pool.map_rows` (static: see :class:`_Kernel`)."""

    kernel: _Kernel
    objective: str
    probability: str

    def __call__(self, sel, fixed, feats_l, feats_s, lab, a_s, mean_s, offset_s, floor, xb):
        """Raw scores ``[b]`` and ``dead [b]`` of a chunk of candidates ``xb``."""
        k, e = self.kernel, self.kernel.engine
        dtype = mean_s.dtype
        f_j = k.logits(sel, fixed, xb).astype(dtype)
        feats = e.prepare(sel, fixed, xb)
        k_js = e.pair(sel, fixed, feats, feats_s).astype(dtype)
        k_jj = e.diag(sel, fixed, feats).astype(dtype)
        k_jl = e.pair(sel, fixed, feats, feats_l).astype(dtype) if k.labeled else None
        cov, var, mean = core.posterior_rows(k_jl, k_js, k_jj, f_j, a_s, lab if k.labeled else None)
        nugget = lab.nugget if k.labeled else jnp.zeros((), dtype)
        return core.candidate_scores(cov, var, mean, f_j, mean_s, offset_s, floor, nugget, self.objective,
                                     self.probability, k.linearised)


@functools.partial(jax.jit, static_argnames=("kern", "jitter", "variance_floor"))
def _setup(kern: _Kernel, sel, fixed, x_l, y_l, valid_l, x_s, *, jitter, variance_floor):
    """The replicated part, computed once on one device (the same program on any mesh)."""
    e = kern.engine
    feats_s = e.prepare(sel, fixed, x_s)
    k_ss_diag = e.diag(sel, fixed, feats_s)
    f_s = kern.logits(sel, fixed, x_s)
    dtype = jnp.result_type(k_ss_diag.dtype, f_s.dtype, jnp.float32)
    f_s, k_ss_diag = f_s.astype(dtype), k_ss_diag.astype(dtype)
    if variance_floor is None:
        floor = core.default_variance_floor(jnp.mean(k_ss_diag), dtype)
    else:
        floor = jnp.asarray(variance_floor, dtype)
    if kern.labeled:
        feats_l = e.prepare(sel, fixed, x_l)
        k_ll = e.pair(sel, fixed, feats_l, feats_l).astype(dtype)
        k_sl = e.pair(sel, fixed, feats_s, feats_l).astype(dtype)
        lab = core.solve_labeled(k_ll, kern.logits(sel, fixed, x_l).astype(dtype), y_l, jitter=jitter,
                                 valid_l=valid_l)
        a_s = core.labeled_rows(k_sl, lab)
        mean_s = f_s + core._dot(k_sl * lab.valid, lab.alpha)
    else:
        feats_l, lab = None, None
        a_s = jnp.zeros((f_s.shape[0], 0), dtype)
        mean_s = f_s
    offset_s = jnp.zeros_like(mean_s) if kern.linearised else mean_s - f_s
    return feats_l, feats_s, lab, a_s, mean_s, offset_s, floor


@jax.jit
def _finish(s: jax.Array, dead: jax.Array, n: jax.Array):
    valid = jnp.arange(s.shape[0]) < n
    return core.rank_pool(s, dead, valid), jnp.sum(dead & valid), jnp.sum(valid & ~jnp.isfinite(s))


def _tree_bytes(tree: Any) -> int:
    return int(sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree)))


def pool_memory(engine: Engine, *, n_l: int, n_s: int, num_classes: int, row_bytes: int, objective: str,
                replicated_bytes: int, itemsize: int = 4) -> tuple[int, int]:
    """``(fixed, per_candidate)`` bytes per device: ``fixed`` is what every device holds
    (``replicated_bytes``: parameters and the features of ``L ∪ S``; the ``[L, L]`` factor,
    ``[S, L]`` rows, ``K_LL`` and ``K_SL`` while they are built, ``[S, C]`` means), and
    every candidate of a chunk adds ``per_candidate`` (its input row, features, the
    ``(L + S)`` kernel entries and their pair intermediates, ``A_J``, ``Σ(J, S)`` and the
    objective's temporaries). An estimate of the largest live set, not XLA's exact peak."""
    c = num_classes
    fixed = replicated_bytes + itemsize * (2 * n_l * n_l + 2 * n_s * n_l + n_l * c + 3 * n_s * c + n_l + 2 * n_s)
    if objective == "mlmoc":
        temps = 4 * n_s
    elif objective == "emoc":
        temps = 3 * c * n_s + 3 * n_s
    else:  # the explicit [S, Y, C] change, a few copies
        temps = 4 * n_s * (1 if core.OBJECTIVES[objective] == "pseudo" else c) * c
    per = (row_bytes + engine.feature_bytes + engine.pair_bytes * (n_l + n_s)
           + itemsize * (2 * n_l + 2 * n_s + 4 * c + temps))
    return int(fixed), int(per)


def pool_scores(
    model: Any,
    x_labeled: Any,
    y_labeled: Any,
    x_pool: Any,
    mesh: Any,
    eval_rows: Any,
    *,
    objective: str = "mlmoc",
    probability: str = "softmax",
    reference: str = "network",
    contraction: str = "single_logit",
    subset: Any = "all",
    implementation: str = "auto",
    jitter: float | None = None,
    variance_floor: float | None = None,
    memory_bytes: int | None = None,
    chunk_rows: int | None = None,
) -> PoolScores:
    """Look-ahead score of every row of ``x_pool`` against the evaluation set ``x_pool[eval_rows]``.

    Args:
      model: the trained :class:`~jaxal.model.Model`; x_labeled ``[L, ...]``, y_labeled ``[L]``.
      x_pool: ``[N, ...]`` candidates: an array, a memory map or :class:`jaxal.pool.Rows`
        (read chunk by chunk; only ``eval_rows`` are read at once).
      mesh: a one-axis mesh (:func:`jaxal.pool.pool_mesh`; one device is a mesh too).
      eval_rows: ``[S]`` pool rows forming ``S``.
      objective: ``mlmoc`` | ``emoc`` | ``eer`` | ``flip_rate``; probability, reference:
        as the strategies' options (:mod:`jaxal.strategies.model_change`).
      contraction: a scalar contraction (:data:`SCALAR_CONTRACTIONS`); subset,
        implementation: of the empirical NTK (:func:`jaxal.ntk.kernel`).
      jitter, variance_floor: as :func:`jaxal.lookahead.core.init`.
      memory_bytes: per-device bound on the estimate of :func:`pool_memory` (and on the
        cached scores, :func:`jaxal.pool.map_rows`); sets the chunk. ``ValueError``
        with the size asked when not even one candidate per chunk fits.
      chunk_rows: at most this many candidates per device per step (default 4096,
        fewer when ``memory_bytes`` or 256 MiB of chunk working set asks for fewer).

    Returns:
      :class:`PoolScores`; ``jaxal.pool.top_k(result.scores.data, k, key, n=N)`` picks.
    """
    check_choice("objective", objective, core.OBJECTIVES)
    check_choice("probability", probability, core.PROBABILITY_MAPS)
    check_choice("reference", reference, ("network", "linearised"))
    if contraction not in SCALAR_CONTRACTIONS:
        raise ValueError(
            f"contraction={contraction!r} is not available for the look-ahead over a sharded pool: it scores "
            f"candidates by rows of a scalar kernel used ⊗ I_C; use one of {', '.join(SCALAR_CONTRACTIONS)} "
            "(or mesh=None, where 'full' works on a small eval_size)"
        )
    n = int(np.shape(x_pool)[0]) if hasattr(x_pool, "shape") else len(x_pool)
    eval_rows = np.asarray(eval_rows, np.int64).reshape(-1)
    if eval_rows.size == 0 or eval_rows.min() < 0 or eval_rows.max() >= n:
        raise ValueError(f"eval_rows must be non-empty rows of the pool [0, {n})")
    x_s = np.asarray(x_pool[eval_rows])
    dtype = jax.dtypes.canonicalize_dtype(x_s.dtype)
    x_s = x_s.astype(dtype, copy=False)
    x_l = np.asarray(x_labeled, dtype).reshape((-1,) + x_s.shape[1:])
    y_l = np.asarray(y_labeled, np.int32).reshape(-1)
    labeled = x_l.shape[0] > 0
    valid = np.zeros((0,), bool)
    if labeled:
        x_l, y_l, valid = pad_to_bucket(x_l, y_l)
    split = split_params(model.params, subset)
    row = jax.ShapeDtypeStruct(x_s.shape[1:], dtype)
    engine = engine_for(model, split, contraction, implementation, row, int(memory_bytes or DEFAULT_MEMORY_BYTES))
    kern = _Kernel(engine, split.treedef, split.mask, model.features, model.head, reference == "linearised", labeled)
    spec = _Spec(kern, objective, probability)

    # memory: what every device holds, then the chunk that fits beside it
    shapes = jax.eval_shape(functools.partial(_setup, kern, jitter=jitter, variance_floor=variance_floor),
                            split.selected, split.fixed, x_l, y_l, valid, x_s)
    feats_l, feats_s, _, _, mean_s, _, _ = shapes
    n_l, n_s, c = x_l.shape[0], x_s.shape[0], mean_s.shape[-1]
    itemsize = jnp.dtype(mean_s.dtype).itemsize
    fixed, per = pool_memory(engine, n_l=n_l, n_s=n_s, num_classes=c, objective=objective,
                             row_bytes=math.prod(x_s.shape[1:]) * dtype.itemsize, itemsize=itemsize,
                             replicated_bytes=_tree_bytes((split.selected, split.fixed, feats_l, feats_s)))
    per_device = pool.padded_rows(n, mesh)[0]
    out = (itemsize + 1) * per_device  # the cached raw scores and flags of this device's rows
    what = (f"the look-ahead over the pool on each device (replicated: the [L, L] = [{n_l}, {n_l}] factor, "
            f"[S, L] = [{n_s}, {n_l}] rows and the kernel features of L and S; then the scores of this "
            f"device's {per_device:,} rows and a chunk of at least one candidate at {per:,} bytes each; a smaller "
            "eval_size or labeled set shrinks the replicated part)")
    pool.check_fits(what, fixed + out + per, memory_bytes)
    room = (memory_bytes - fixed - out) if memory_bytes is not None else _DEFAULT_CHUNK_BYTES
    b = max(1, min(int(chunk_rows or _MAX_CHUNK_ROWS), room // per))
    b = 1 << (b.bit_length() - 1)  # a power of two: rounds whose sizes move a little share programs

    feats_l, feats_s, lab, a_s, mean_s, offset_s, floor = _setup(
        kern, split.selected, split.fixed, x_l, y_l, valid, x_s, jitter=jitter, variance_floor=variance_floor)
    if labeled:  # concrete values here: the jitted setup cannot warn
        check_jitter(lab.relative_jitter, lab.ok, what="the labeled kernel K_LL", fixed=jitter is not None)
    raw = pool.map_rows(spec, x_pool, mesh, split.selected, split.fixed, feats_l, feats_s, lab, a_s, mean_s,
                        offset_s, floor, chunk_rows=b, memory_bytes=memory_bytes,
                        what="the look-ahead's raw scores of the pool")
    ranked, n_dead, n_bad = _finish(raw.data[0], raw.data[1], np.int32(n))
    if int(n_bad):
        raise ValueError(f"{int(n_bad)} look-ahead score(s) of the pool are NaN/inf (non-finite inputs or "
                         "network outputs, or a failed Cholesky of K_LL: see the JitterWarning)")
    zero = jnp.zeros((), mean_s.dtype)
    info = core.LookaheadInfo(lab.nugget if labeled else zero, lab.relative_jitter if labeled else zero,
                              n_dead, floor, lab.ok if labeled else jnp.asarray(True))
    return PoolScores(pool.Sharded(ranked, n, mesh), info, b, fixed + out + b * per)
