"""Chunked (and optionally sharded) evaluation of a kernel :class:`~jaxal.ntk.engine.Engine`.

Both example axes are cut into chunks sized from the engine's byte estimates so the
largest intermediate stays under ``memory_bytes`` (per device). The last chunk is
padded by repeating its final row, so every chunk has one shape and each jitted
function compiles once; padded rows are sliced off. With a ``Mesh``, the ``x1``
(pool) axis of every chunk is sharded over the mesh's first axis with ``shard_map``;
``x2`` chunks are replicated. Every example's features are computed independently,
so the result does not depend on chunking or sharding (up to float rounding of
differently shaped matmuls).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxal.ntk.engine import Engine


class Plan(NamedTuple):
    """Chunk sizes: ``b1`` rows of ``x1`` (a multiple of the device count), ``b2`` of ``x2``."""

    b1: int
    b2: int


def plan_chunks(engine: Engine, n1: int, n2: int | None, memory_bytes: int, n_dev: int = 1) -> Plan:
    """Largest chunks with ``fixed + (c1 + b2)·feature + c1·b2·pair <= memory_bytes``.

    ``c1 = b1 / n_dev`` is the per-device ``x1`` chunk; ``n2=None`` plans a diagonal.
    Raises ``ValueError`` when not even one example (pair) fits.
    """
    fb, pb, fixed = engine.feature_bytes, engine.pair_bytes, engine.fixed_bytes
    need = fixed + (fb + pb if n2 is None else 2 * fb + pb)
    if need > memory_bytes:
        raise ValueError(
            f"memory_bytes={memory_bytes} is too small for one example: this kernel needs at least "
            f"{need} bytes (features {fb} B/example, block {pb} B/pair, fixed {fixed} B)"
        )
    budget = memory_bytes - fixed
    per_dev = math.ceil(n1 / n_dev)
    if n2 is None:
        c1 = min(per_dev, budget // (fb + pb))
        return Plan(int(c1) * n_dev, 0)
    # square-ish start: 2 s fb + s^2 pb <= budget
    s = int((-2 * fb + math.sqrt(4 * fb * fb + 4 * pb * budget)) / (2 * pb)) if pb else budget // (2 * fb)
    b2 = max(1, min(n2, s))
    c1 = max(1, min(per_dev, (budget - b2 * fb) // (fb + b2 * pb)))
    if c1 == per_dev:  # all of x1 fits: give the rest to x2
        b2 = max(b2, min(n2, (budget - c1 * fb) // (fb + c1 * pb)))
    return Plan(int(c1) * n_dev, int(b2))


def _pad_rows(x: np.ndarray, size: int) -> np.ndarray:
    if x.shape[0] == size:
        return x
    return np.concatenate([x, np.repeat(x[-1:], size - x.shape[0], axis=0)], axis=0)


def _chunks(n: int, b: int):
    return [(s, min(s + b, n)) for s in range(0, n, b)]


class Compiled(NamedTuple):
    """Jitted (and, with a mesh, ``shard_map``-ped) engine functions."""

    prepare1: Any  # x1 side: sharded along examples
    prepare2: Any  # x2 side: replicated
    pair: Any
    diag: Any
    block: Any  # fused prepare + pair for a single chunk per side (one compilation)
    block_same: Any  # fused, x2 = x1
    diag_block: Any  # fused prepare + diag
    mesh: Mesh | None


def compile_engine(engine: Engine, mesh: Mesh | None) -> Compiled:
    """Jit the engine once; with ``mesh``, shard the x1 axis over ``mesh.axis_names[0]``."""
    prep, pair, diag = engine.prepare, engine.pair, engine.diag

    def block(sel, fixed, x1, x2):
        return pair(sel, fixed, prep(sel, fixed, x1), prep(sel, fixed, x2))

    def block_same(sel, fixed, x):
        f = prep(sel, fixed, x)
        return pair(sel, fixed, f, f)

    def diag_block(sel, fixed, x):
        return diag(sel, fixed, prep(sel, fixed, x))

    if mesh is None:
        jp = jax.jit(prep)
        return Compiled(jp, jp, jax.jit(pair), jax.jit(diag), jax.jit(block), jax.jit(block_same),
                        jax.jit(diag_block), None)
    ax = mesh.axis_names[0]

    def smap(f, in_specs):
        return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=P(ax), check_vma=False))

    return Compiled(
        prepare1=smap(prep, (P(), P(), P(ax))),
        prepare2=jax.jit(prep),
        pair=smap(pair, (P(), P(), P(ax), P())),
        diag=smap(diag, (P(), P(), P(ax))),
        block=smap(block, (P(), P(), P(ax), P())),
        block_same=None,
        diag_block=smap(diag_block, (P(), P(), P(ax))),
        mesh=mesh,
    )


def run(compiled: Compiled, plan: Plan, sel: list, fixed: list, x1: Any, x2: Any | None, diagonal: bool) -> jax.Array:
    """The kernel ``[n1, n2, ...]`` (or the diagonal ``[n1, ...]``) chunk by chunk."""
    mesh = compiled.mesh
    if mesh is not None:
        rep = NamedSharding(mesh, P())
        row = NamedSharding(mesh, P(mesh.axis_names[0]))
        sel, fixed = jax.device_put((sel, fixed), rep)
        put1 = lambda a: jax.device_put(a, row)  # noqa: E731
        put2 = lambda a: jax.device_put(a, rep)  # noqa: E731
    else:
        put1 = put2 = jax.device_put  # no compiled program per shape, unlike jnp.asarray
    x1 = np.asarray(x1)
    n1 = x1.shape[0]
    rows1 = _chunks(n1, plan.b1)
    if diagonal:
        if len(rows1) == 1:
            return compiled.diag_block(sel, fixed, put1(_pad_rows(x1, plan.b1)))[:n1]
        out = [compiled.diag(sel, fixed, compiled.prepare1(sel, fixed, put1(_pad_rows(x1[a:b], plan.b1))))[: b - a] for a, b in rows1]
        return out[0] if len(out) == 1 else jnp.concatenate([jnp.asarray(o) for o in out], axis=0)
    same = x2 is None
    x2 = x1 if same else np.asarray(x2)
    n2 = x2.shape[0]
    rows2 = _chunks(n2, plan.b2)
    if len(rows1) == 1 and len(rows2) == 1:  # one chunk per side: one fused computation
        if same and mesh is None:
            return compiled.block_same(sel, fixed, jax.device_put(_pad_rows(x1, plan.b1)))[:n1, :n1]
        return compiled.block(sel, fixed, put1(_pad_rows(x1, plan.b1)), put2(_pad_rows(x2, plan.b2)))[:n1, :n2]
    feats2 = None
    if len(rows2) == 1:
        feats2 = compiled.prepare2(sel, fixed, put2(_pad_rows(x2, plan.b2)))
    result = None
    for a1, e1 in rows1:
        f1 = compiled.prepare1(sel, fixed, put1(_pad_rows(x1[a1:e1], plan.b1)))
        for a2, e2 in rows2:
            f2 = feats2 if feats2 is not None else compiled.prepare2(sel, fixed, put2(_pad_rows(x2[a2:e2], plan.b2)))
            block = np.asarray(compiled.pair(sel, fixed, f1, f2))[: e1 - a1, : e2 - a2]
            if result is None:
                result = np.empty((n1, n2) + block.shape[2:], block.dtype)
            result[a1:e1, a2:e2] = block
    return jnp.asarray(result)
