"""k-means++ seeding (D² sampling) on factored squared distances, in one jitted loop.

BADGE needs k-means++ seeding on gradient embeddings g_x = a_x ⊗ h̃_x that are too big
to build (N × C·(d+1) floats). Squared distances between such outer products factor::

    ‖g_x − g_c‖² = n_x + n_c − 2 (a_x·a_c)(h̃_x·h̃_c),   n_x = ‖a_x‖² ‖h̃_x‖²,

with h̃ = [h, 1] (the bias block) handled as an offset: h̃_x·h̃_c = h_x·h_c + 1. This module
works on any list of factors ``F_k [N, d_k]`` with offsets ``o_k``::

    n_x = Π_k (‖F_k x‖² + o_k),   ⟨x, c⟩ = Π_k (F_k x · F_k c + o_k),

so plain Euclidean seeding is the one-factor case. Each step reads every factor once
(one matrix-vector product per factor), updates the running min D² and draws the next
centre by inverse CDF, all fused in one ``lax.fori_loop`` body. Memory: the factors plus
O(N) vectors; nothing N × B or N × C·d is built.

Edge cases handled (several public implementations get them wrong): chosen points get
D² = 0 and are never drawn again (no duplicates); the first centre is a real point (no
phantom centre at the origin); when Σ D² = 0 (all remaining points coincide with a centre,
e.g. every prediction certain so every embedding is 0) the draw falls back to uniform over
unchosen points; D² below ``1e-5 · (n_x + n_c)`` (cancellation noise of the expansion) is
treated as 0.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxal.validation import check_budget, check_choice, check_finite

__all__ = ["kmeanspp", "kmeanspp_factored", "min_sqdist_to_centres", "d2_probabilities", "FIRST_CENTRES",
           "STORAGE_DTYPES"]

FIRST_CENTRES = ("max_norm", "uniform")  # how the first centre is chosen (``first=``)
_DTYPES = {None: None, "float32": jnp.float32, "bfloat16": jnp.bfloat16}
STORAGE_DTYPES = ("float32", "bfloat16")  # ``dtype=`` values besides None
_REL_TOL = 1e-5  # D² below this fraction of n_x + n_c is rounding noise of the expansion
_BLOCK = 256  # inverse-CDF sampling: block sums first, then a cumsum inside one block


def _prepare(factors: Sequence, dtype) -> tuple[jax.Array, ...]:
    """Factors cast to the storage dtype (norms are later taken from these copies, so a
    point's distance to itself cancels exactly up to float32 accumulation)."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be None, 'float32' or 'bfloat16', got {dtype!r}")
    store = _DTYPES[dtype]
    fs = tuple(jnp.asarray(f) if store is None else jnp.asarray(f).astype(store) for f in factors)
    return fs


def _norms(fs: tuple[jax.Array, ...], offsets: tuple[float, ...]) -> jax.Array:
    n = None
    for f, o in zip(fs, offsets):
        f32 = f.astype(jnp.float32)
        term = jnp.sum(f32 * f32, axis=1) + o
        n = term if n is None else n * term
    return n


def _sqdist_to(fs, offsets, norms, c) -> jax.Array:
    """D² [N] from every point to point ``c`` (an int scalar), clamped at 0, noise zeroed."""
    dot = None
    for f, o in zip(fs, offsets):
        fc = jax.lax.dynamic_index_in_dim(f, c, axis=0, keepdims=False)
        term = jnp.dot(f, fc, preferred_element_type=jnp.float32) + o
        dot = term if dot is None else dot * term
    nc = norms[c]
    d2 = norms + nc - 2.0 * dot
    return jnp.where(d2 <= _REL_TOL * (norms + nc), 0.0, d2)


def _draw(key: jax.Array, w: jax.Array, small: Any = None) -> jax.Array:
    """One index drawn with probability w / Σw (w ≥ 0, Σw > 0) by a two-level inverse CDF.

    Blocks of 256 rows are summed where they live; the block sums and the one block the
    draw lands in are made whole on every device (``small``: the replicated sharding of a
    sharded ``w``) before their cumulative sums, so the drawn index is the same on any
    number of devices."""
    n = w.shape[0]
    nb = -(-n // _BLOCK)
    wb = jnp.pad(w, (0, nb * _BLOCK - n)).reshape(nb, _BLOCK)
    block_sums = _whole(jnp.sum(wb, axis=1), small)
    cdf_b = jnp.cumsum(block_sums)
    u = jax.random.uniform(key, dtype=jnp.float32) * cdf_b[-1]
    b = jnp.minimum(jnp.sum(cdf_b <= u), nb - 1)
    u_in = u - (cdf_b[b] - block_sums[b])
    row = _whole(jax.lax.dynamic_index_in_dim(wb, b, axis=0, keepdims=False), small)
    j = jnp.minimum(jnp.sum(jnp.cumsum(row) <= u_in), _BLOCK - 1)
    idx = b * _BLOCK + j
    # Rounding can land on a zero-weight entry at a block edge: fall back to the heaviest.
    ok = (idx < n) & (row[j] > 0)
    return jnp.where(ok, idx, jnp.argmax(w)).astype(jnp.int32)


def _whole(x: jax.Array, sharding: Any) -> jax.Array:
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


@partial(jax.jit, static_argnames=("offsets", "first", "small"))
def _seed(key, fs, offsets, budget, first, n_valid=None, small=None):
    """``[N]`` int32 whose first ``budget`` entries are the picks (budget is traced, so one
    compilation serves every budget for a given pool shape). Rows from ``n_valid`` on are
    padding: never drawn."""
    norms = _norms(fs, offsets)
    n = norms.shape[0]
    n_valid = n if n_valid is None else n_valid
    padding = jnp.arange(n) >= n_valid
    key, k0 = jax.random.split(key)
    if first == "max_norm":
        c0 = jnp.argmax(jnp.where(padding, -jnp.inf, norms)).astype(jnp.int32)
    else:
        c0 = jax.random.randint(k0, (), 0, n_valid, dtype=jnp.int32)
    chosen = padding.at[c0].set(True)
    mind2 = jnp.where(chosen, 0.0, _sqdist_to(fs, offsets, norms, c0))
    picks = jnp.zeros(n, jnp.int32).at[0].set(c0)

    def body(i, carry):
        key, mind2, chosen, picks = carry
        key, sub = jax.random.split(key)
        w = jnp.where(chosen, 0.0, mind2)
        w = jnp.where(jnp.sum(w) > 0, w, (~chosen).astype(jnp.float32))  # all certain: uniform
        c = _draw(sub, w, small)
        chosen = chosen.at[c].set(True)
        mind2 = jnp.where(chosen, 0.0, jnp.minimum(mind2, _sqdist_to(fs, offsets, norms, c)))
        return key, mind2, chosen, picks.at[i].set(c)

    _, _, _, picks = jax.lax.fori_loop(1, budget, body, (key, mind2, chosen, picks))
    return _whole(picks, small)


def _replicated_on(x: Any) -> Any:
    """The replicated sharding of the mesh ``x`` is sharded over (``None`` for a
    single-device array)."""
    sh = getattr(x, "sharding", None)
    if isinstance(sh, NamedSharding) and len(sh.device_set) > 1:
        return NamedSharding(sh.mesh, PartitionSpec())
    return None


def _check(factors, budget, first, n_valid=None) -> int:
    n = int(np.shape(factors[0])[0])
    for k, f in enumerate(factors):
        if np.ndim(f) != 2 or int(np.shape(f)[0]) != n:
            raise ValueError(f"factor {k} must be [N, d_k] with N={n}, got shape {np.shape(f)}")
        check_finite(f"factor {k} (features)", f)
    check_choice("first", first, FIRST_CENTRES)
    return check_budget(budget, n if n_valid is None else int(n_valid))


def kmeanspp_factored(
    key: jax.Array,
    a: jax.Array,
    h: jax.Array,
    budget: int,
    *,
    bias: bool = True,
    first: str = "max_norm",
    dtype: str | None = None,
    n_valid: int | None = None,
) -> np.ndarray:
    """k-means++ seeds of the outer products g_x = a_x ⊗ [h_x, 1] without building them.

    Args:
      key: ``jax.random`` key for the D² draws (and the first centre if uniform).
      a: ``[N, C]`` first factor (BADGE: p − e_ŷ).
      h: ``[N, d]`` second factor (BADGE: penultimate features).
      budget: number of distinct centres ``B ≤ N``.
      bias: include the constant-1 block of h̃ = [h, 1] (a Dense head's bias gradient).
      first: ``"max_norm"`` (official BADGE code) or ``"uniform"`` (Ash's thesis).
      dtype: ``"bfloat16"`` stores bf16 copies of the factors (half the bytes read per
        step; products accumulated in float32); ``None``/``"float32"`` keeps float32.
      n_valid: for factors sharded over a mesh and padded (:mod:`jaxal.pool`), the
        number of real rows; the picks are the same on any number of devices.

    Returns:
      ``[B]`` int indices in draw order, all distinct.
    """
    budget = _check((a, h), budget, first, n_valid)
    fs = _prepare((a, h), dtype)
    n = int(np.shape(a)[0]) if n_valid is None else int(n_valid)
    picks = _seed(key, fs, (0.0, 1.0 if bias else 0.0), budget, first, np.int32(n), _replicated_on(fs[0]))
    return np.asarray(picks[:budget] if _replicated_on(fs[0]) is None else picks.addressable_data(0)[:budget])


def kmeanspp(
    key: jax.Array, x: jax.Array, budget: int, *, first: str = "max_norm", dtype: str | None = None,
    n_valid: int | None = None,
) -> np.ndarray:
    """k-means++ seeds of the rows of ``x [N, D]`` (Euclidean D² sampling); see
    :func:`kmeanspp_factored` for the options. Returns ``[B]`` distinct int indices."""
    budget = _check((x,), budget, first, n_valid)
    fs = _prepare((x,), dtype)
    n = int(np.shape(x)[0]) if n_valid is None else int(n_valid)
    picks = _seed(key, fs, (0.0,), budget, first, np.int32(n), _replicated_on(fs[0]))
    return np.asarray(picks[:budget] if _replicated_on(fs[0]) is None else picks.addressable_data(0)[:budget])


@partial(jax.jit, static_argnames=("offsets",))
def _min_sqdist(fs, offsets, centres):
    norms = _norms(fs, offsets)

    def step(m, c):
        return jnp.minimum(m, _sqdist_to(fs, offsets, norms, c)), None

    m, _ = jax.lax.scan(step, jnp.full(norms.shape, jnp.inf, jnp.float32), centres)
    return m


def min_sqdist_to_centres(
    factors: Sequence[jax.Array],
    centres: Sequence[int],
    *,
    offsets: Sequence[float] | None = None,
    dtype: str | None = None,
) -> jax.Array:
    """Min factored squared distance ``[N]`` from every point to the given centre rows.

    ``factors`` as in the module docstring (BADGE: ``(a, h)`` with ``offsets=(0, 1)``);
    offsets default to 0. One matrix-vector product per factor and centre; O(N) extra memory.
    """
    fs = _prepare(tuple(factors), dtype)
    offs = tuple(float(o) for o in (offsets if offsets is not None else (0.0,) * len(fs)))
    if len(offs) != len(fs):
        raise ValueError(f"offsets has {len(offs)} entries for {len(fs)} factors")
    return _min_sqdist(fs, offs, jnp.asarray(np.asarray(centres, np.int32)))


def d2_probabilities(
    factors: Sequence[jax.Array],
    centres: Sequence[int],
    *,
    offsets: Sequence[float] | None = None,
    dtype: str | None = None,
) -> jax.Array:
    """k-means++ draw probabilities ``[N]`` given the centres chosen so far (D² / ΣD²;
    uniform over unchosen points when ΣD² = 0)."""
    m = min_sqdist_to_centres(factors, centres, offsets=offsets, dtype=dtype)
    chosen = jnp.zeros(m.shape, bool).at[jnp.asarray(np.asarray(centres, np.int32))].set(True)
    w = jnp.where(chosen, 0.0, m)
    w = jnp.where(jnp.sum(w) > 0, w, (~chosen).astype(jnp.float32))
    return w / jnp.sum(w)
