"""The interface every kernel implementation provides to the chunked driver.

An :class:`Engine` turns a chunk of examples into per-example *features* ``F`` (a
pytree whose leaves all have a leading example axis ``b``) and contracts two feature
chunks into a kernel block. The driver (:mod:`jaxal.ntk.chunking`) jit-compiles
``prepare``/``pair``/``diag`` once per chunk shape and picks chunk sizes from the
byte estimates.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax


class Engine(NamedTuple):
    """One kernel implementation, as pure functions.

    Attributes:
      prepare: ``(sel, fixed, x [b, ...]) -> F`` per-example features.
      pair: ``(sel, fixed, F1, F2) -> [b1, b2, Cd, Cd]`` (full) or ``[b1, b2]``.
      diag: ``(sel, fixed, F) -> [b, Cd, Cd]`` (full) or ``[b]``.
      feature_bytes: bytes per example of ``F`` plus the transients that build it.
      pair_bytes: bytes per example pair of the block and its intermediates.
      fixed_bytes: bytes independent of the chunk sizes (e.g. one parameter vector).
    """

    prepare: Callable[..., Any]
    pair: Callable[..., jax.Array]
    diag: Callable[..., jax.Array]
    feature_bytes: int
    pair_bytes: int
    fixed_bytes: int = 0


def merge_leaves(treedef: Any, mask: tuple, selected: list, fixed: list) -> Any:
    """The params pytree from its selected and fixed leaves (in flattening order)."""
    it_s, it_f = iter(selected), iter(fixed)
    return jax.tree_util.tree_unflatten(treedef, [next(it_s) if m else next(it_f) for m in mask])


def example_fn(model, treedef, mask, out_fn) -> Callable[..., jax.Array]:
    """``f(sel, fixed, x [...]) -> [Cd]``: the differentiated outputs of one example."""

    def f(sel, fixed, x):
        params = merge_leaves(treedef, mask, sel, fixed)
        return out_fn(model.apply(params, x[None])[0])

    return f
