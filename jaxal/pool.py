"""The unlabeled pool as one global array, sharded along its rows over a device mesh.

A strategy reads the pool through a row-wise function (the network's logits, its
penultimate features, a score) and then reduces over the rows (a top-B, a greedy
k-center or k-means++ loop). Both parts scale with the pool, so both are spread over
the devices of a one-axis :class:`~jax.sharding.Mesh` (axis ``"pool"``):

- :func:`map_rows` streams the pool from the host (a NumPy array, a memory-mapped
  ``.npy``, a TFDS ``data_source``, anything indexable by row) chunk by chunk, runs the
  function on every device at once, and writes the outputs into a global ``jax.Array``
  of ``[N_pad, ...]`` rows with ``NamedSharding(mesh, P("pool"))``: device ``k`` holds
  rows ``[k·S, (k+1)·S)`` and computes them from its own rows of the pool, so no row of
  the input crosses a device (or a host: each process reads only the rows of its own
  devices). Peak memory: the outputs plus one chunk of inputs per device.
- Reductions then run under ``jit`` on the sharded outputs; XLA's SPMD partitioner
  splits them per device and adds the collectives (a global max, a global sum). The
  functions here and in :mod:`jaxal.ops.kcenter` / :mod:`jaxal.ops.kmeanspp` are written
  so that the answer does not depend on the number of devices: elementwise work,
  order-free reductions (max, argmax) and small replicated arrays for anything
  order-dependent (a cumulative sum), so 8 devices pick the same indices as one.

Rows are padded, never dropped: ``N`` is rounded up to a multiple of the mesh size
(and to a shape bucket, so a pool that shrinks every round reuses its programs).
Padded rows hold the function of an all-zero input; every reduction masks them with
:func:`valid_rows`.

Across hosts (``jax.distributed``), the mesh spans every process's devices; the same
code runs in every process (SPMD), each process reading its own rows, and results that
every process needs (the chosen indices) come back replicated.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxal.ops.buckets import bucket

__all__ = ["POOL_AXIS", "pool_mesh", "Sharded", "Rows", "padded_rows", "rows_sharding", "replicated", "read_rows",
           "shard_rows", "map_rows", "valid_rows", "top_k", "to_host", "check_fits"]

POOL_AXIS = "pool"


def pool_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named ``"pool"`` over ``devices`` (default: every device of every
    process, ``jax.devices()``)."""
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise ValueError("pool_mesh needs at least one device")
    return Mesh(np.array(devs), (POOL_AXIS,))


def rows_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over the mesh's (first) axis, every other dimension whole."""
    return NamedSharding(mesh, P(mesh.axis_names[0]))


def replicated(mesh: Mesh) -> NamedSharding:
    """The whole array on every device of the mesh."""
    return NamedSharding(mesh, P())


class Sharded(NamedTuple):
    """Row outputs of the pool on a mesh.

    Attributes:
      data: ``[N_pad, ...]`` global array, rows sharded over the mesh; rows ``>= n`` are padding.
      n: the number of real rows.
      mesh: the mesh it lives on.
    """

    data: jax.Array
    n: int
    mesh: Mesh


def padded_rows(n: int, mesh: Mesh, chunk: int | None = None) -> tuple[int, int]:
    """``(rows per device S, chunk rows c)`` for a pool of ``n`` rows: ``S`` is a multiple
    of ``c`` and ``D·S >= bucket(n)``, so every device holds the same number of rows and
    pools of nearby sizes share compiled programs."""
    d = mesh.size
    per_device = max(1, -(-bucket(max(int(n), 1)) // d))
    c = per_device if chunk is None else max(1, min(int(chunk), per_device))
    return -(-per_device // c) * c, c


class Rows:
    """A TFDS ``data_source`` (or any sequence of rows) seen as an array of inputs.

    ``Rows(tfds.data_source("mnist", split="train"), field="image")`` has ``len``,
    ``shape``, ``dtype`` and row slicing like a NumPy array, reading only the rows asked
    for (with the source's ``__getitems__`` when it has one), so it can be the pool of
    :func:`jaxal.strategies.select` on a mesh, or of :func:`map_rows`. ``transform`` maps
    each row's input (e.g. ``lambda im: im.astype(np.float32) / 255``).
    """

    def __init__(self, source: Any, field: str | None = None, transform: Callable[[Any], Any] | None = None):
        self.source, self.field, self.transform = source, field, transform
        first = self._rows([0])
        self.shape = (len(source),) + first.shape[1:]
        self.dtype = first.dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _rows(self, index: Sequence[int]) -> np.ndarray:
        index = [int(i) for i in index]
        got = self.source.__getitems__(index) if hasattr(self.source, "__getitems__") else [self.source[i] for i in index]
        out = []
        for r in got:
            if isinstance(r, dict):
                if self.field is None:
                    raise ValueError(f"the pool's rows are dicts with keys {sorted(r)}: say which one is the input "
                                     "(Rows(source, field=...))")
                r = r[self.field]
            out.append(np.asarray(r if self.transform is None else self.transform(r)))
        return np.stack(out) if out else np.zeros((0,) + tuple(getattr(self, "shape", (0,))[1:]), np.float32)

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, slice):
            return self._rows(range(*index.indices(len(self))))
        if isinstance(index, (int, np.integer)):
            return self._rows([index])[0]
        return self._rows(np.asarray(index).reshape(-1))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self[:]
        return a if dtype is None else a.astype(dtype)


def read_rows(source: Any, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of a pool (an array, a memory map, :class:`Rows`) as NumPy:
    only those rows are read."""
    return np.asarray(source[start:stop])


def check_fits(what: str, nbytes: int, memory_bytes: int | None) -> None:
    """``ValueError`` when ``nbytes`` (something a strategy must hold at once) exceeds the
    ``memory_bytes`` bound, saying how much it asked for."""
    if memory_bytes is not None and nbytes > memory_bytes:
        raise ValueError(
            f"{what} needs {nbytes / 2**30:.2f} GiB ({nbytes:,} bytes) but memory_bytes is "
            f"{memory_bytes / 2**30:.2f} GiB ({memory_bytes:,}); raise memory_bytes, spread the pool over more "
            "devices (each holds its share), or score a subsample of the pool"
        )


def shard_rows(x: Any, mesh: Mesh, *, chunk_rows: int = 4096, memory_bytes: int | None = None) -> Sharded:
    """Place a pool's rows on the mesh as they are (padded with zero rows): see :func:`map_rows`."""
    return map_rows(_identity, x, mesh, chunk_rows=chunk_rows, memory_bytes=memory_bytes, what="the pool's rows")


def _identity(x: jax.Array) -> jax.Array:
    return x


def map_rows(
    fn: Callable[..., Any],
    x: Any,
    mesh: Mesh,
    *args: Any,
    chunk_rows: int = 4096,
    memory_bytes: int | None = None,
    row_index: bool = False,
    what: str = "the pool's outputs",
) -> Sharded:
    """``fn(*args, rows)`` for every row of the pool ``x``, as a global array sharded over ``mesh``.

    Args:
      fn: a row-wise function ``fn(*args, xb [b, ...]) -> [b, ...]`` (or a pytree of such
        arrays); a module-level function, so its compiled program is reused. With
        ``row_index=True`` it is called ``fn(*args, xb, rows)`` with ``rows [b]`` the
        rows' global indices (for per-row randomness that does not depend on the chunking).
      x: the pool: an array, a memory map (``np.load(path, mmap_mode="r")``) or
        :class:`Rows` (a TFDS ``data_source``); only the rows of this process's devices
        are read, one chunk at a time.
      mesh: a one-axis device mesh (:func:`pool_mesh`).
      *args: pytrees passed to ``fn`` whole (a :class:`~jaxal.model.Model`, keys),
        replicated on every device.
      chunk_rows: rows each device computes per step (the streaming chunk).
      memory_bytes: bound on the bytes of the outputs kept for the whole pool (they are
        what a strategy caches for a round); ``ValueError`` with the size asked for when
        they would exceed it.
      what: how the error message calls the outputs.

    Returns:
      :class:`Sharded` whose ``data`` leaves are ``[D·S, ...]`` (``D`` devices, ``S`` rows
      each, rows ``>= n`` padding).
    """
    n = int(np.shape(x)[0]) if hasattr(x, "shape") else len(x)
    if n < 1:
        raise ValueError("the pool is empty")
    d = mesh.size
    s, c = padded_rows(n, mesh, chunk_rows)
    first = read_rows(x, 0, 1)
    row = jax.ShapeDtypeStruct(first.shape[1:], first.dtype)
    rep = replicated(mesh)
    args = jax.device_put(args, rep)
    spec = jax.ShapeDtypeStruct((c,) + row.shape, row.dtype)
    extra = (jax.ShapeDtypeStruct((c,), jnp.int32),) if row_index else ()
    out_spec = jax.eval_shape(fn, *args, spec, *extra)
    out_bytes = sum(d * s * math.prod(o.shape[1:]) * o.dtype.itemsize for o in jax.tree.leaves(out_spec))
    check_fits(what, out_bytes, memory_bytes)
    rows = rows_sharding(mesh)
    bufs = jax.tree.map(lambda o: _zeros((d, s) + o.shape[1:], jnp.dtype(o.dtype), rows), out_spec)
    for t in range(s // c):
        def chunk_of(index: tuple[slice, ...], t: int = t) -> np.ndarray:
            # the c rows device k computes at step t: pool rows k·S + t·c ... (+ c), zero past n
            k = (index[0].start or 0) // c
            lo, hi = min(k * s + t * c, n), min(k * s + (t + 1) * c, n)
            got = read_rows(x, lo, hi) if hi > lo else np.zeros((0,) + row.shape, row.dtype)
            if got.shape[0] < c:
                got = np.concatenate([got, np.zeros((c - got.shape[0],) + row.shape, row.dtype)])
            return got.astype(row.dtype, copy=False)

        xc = jax.make_array_from_callback((d * c,) + row.shape, rows, chunk_of)
        bufs = _write_chunk(fn, row_index, bufs, args, xc, jax.device_put(np.int32(t * c), rep))
    return Sharded(jax.tree.map(_flatten, bufs), n, mesh)


@functools.lru_cache(maxsize=64)
def _zeros_fn(shape: tuple[int, ...], dtype: Any, sharding: NamedSharding) -> Callable[[], jax.Array]:
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


def _zeros(shape: tuple[int, ...], dtype: Any, sharding: NamedSharding) -> jax.Array:
    return _zeros_fn(shape, dtype, sharding)()


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=2)
def _write_chunk(fn, row_index, bufs, args, xc, start):
    d = jax.tree.leaves(bufs)[0].shape[0]
    s = jax.tree.leaves(bufs)[0].shape[1]
    c = xc.shape[0] // d
    if row_index:
        p = jnp.arange(d * c, dtype=jnp.int32)
        out = fn(*args, xc, (p // c) * s + start + p % c)
    else:
        out = fn(*args, xc)

    def put(buf, o):
        o = o.reshape((d, c) + o.shape[1:])
        return jax.lax.dynamic_update_slice_in_dim(buf, o.astype(buf.dtype), start, axis=1)

    return jax.tree.map(put, bufs, out)


@functools.partial(jax.jit, donate_argnums=0)  # the buffer's memory is reused: no second copy
def _flatten(buf: jax.Array) -> jax.Array:
    return buf.reshape((buf.shape[0] * buf.shape[1],) + buf.shape[2:])


def valid_rows(pool: Sharded | int, size: int | None = None) -> jax.Array:
    """``[N_pad]`` bool, True on real rows (``pool`` a :class:`Sharded`, or ``n`` and ``size``)."""
    if isinstance(pool, Sharded):
        size = jax.tree.leaves(pool.data)[0].shape[0]
        return jnp.arange(size) < pool.n
    return jnp.arange(size) < pool


@functools.partial(jax.jit, static_argnames=("k",))
def _kth(scores: jax.Array, n: jax.Array, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    valid = (jnp.arange(scores.shape[0]) < n) & ~jnp.isnan(scores)
    s = jnp.where(valid, scores.astype(jnp.float32), -jnp.inf)
    vals, first = jax.lax.top_k(s, k)
    return s, first, vals[k - 1]


@functools.partial(jax.jit, static_argnames=("k",))
def _draw_ties(s: jax.Array, first: jax.Array, t: jax.Array, n: jax.Array, key: jax.Array, k: int) -> jax.Array:
    # A separate program from _kth: XLA:CPU fused the k-th value's use over all N into the
    # top-k and ran ~100x slower as one program.
    valid = jnp.arange(s.shape[0]) < n
    n_above = jnp.sum(valid & (s > t))  # the k-th largest: everything above it is in, ties at it are drawn
    u = jax.random.uniform(key, s.shape)  # counter-based: the same values on any sharding
    tied = jnp.where(valid & (s == t), u, -1.0)
    _, drawn = jax.lax.top_k(tied, k)
    j = jnp.arange(k)
    return jnp.where(j < n_above, first, drawn[jnp.clip(j - n_above, 0, k - 1)]).astype(jnp.int32)


def top_k(scores: jax.Array, k: int, key: jax.Array, n: int | None = None) -> jax.Array:
    """Indices ``[k]`` of the ``k`` largest of ``scores[:n]`` (padding and NaN never
    chosen), computed on the devices holding ``scores`` (sharded or not).

    Ties at the ``k``-th value are broken uniformly at random from ``key``: the scores
    above it come first in decreasing order, then the drawn ties. The random numbers are
    counter-based, so the same ``key`` gives the same indices on any number of devices.
    """
    n = int(scores.shape[0]) if n is None else int(n)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    s, first, t = _kth(scores, np.int32(n), int(k))
    return _draw_ties(s, first, t, np.int32(n), key, int(k))


def to_host(x: jax.Array) -> np.ndarray:
    """A device array as NumPy on every process (replicated arrays are read locally;
    arrays split over several processes are gathered first)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    if x.sharding.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
