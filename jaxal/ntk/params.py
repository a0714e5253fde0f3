"""Parameter subsets: which leaves of ``{"body", "head"}`` the kernel differentiates.

A subset is ``"all"``, ``"head"``, ``"body"`` or a callable
``(path: tuple[str, ...], leaf) -> bool`` where ``path`` names the leaf, e.g.
``("body", "Dense_0", "kernel")``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Union

import jax

from jaxal.ntk.engine import merge_leaves

Subset = Union[str, Callable[[tuple, Any], bool]]

SUBSETS = ("all", "head", "body")


class Split(NamedTuple):
    """The params flattened and split by a subset.

    Attributes:
      treedef: the params' tree structure (for ``merge``).
      mask: ``tuple[bool]``, one per leaf, True for differentiated leaves.
      paths: ``tuple[tuple[str, ...]]``, the name of every leaf.
      selected: the differentiated leaves, in flattening order.
      fixed: the other leaves, in flattening order.
    """

    treedef: Any
    mask: tuple
    paths: tuple
    selected: list
    fixed: list

    def merge(self, selected: list, fixed: list | None = None) -> Any:
        """The full params pytree from (possibly traced) selected leaves."""
        return merge_leaves(self.treedef, self.mask, selected, self.fixed if fixed is None else fixed)


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def split_params(params: Any, subset: Subset) -> Split:
    """Flatten ``params`` and split its leaves into selected / fixed by ``subset``.

    Raises ``ValueError`` for an unknown subset name or one that selects no leaf.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = tuple(tuple(_key_name(k) for k in path) for path, _ in flat)
    leaves = [leaf for _, leaf in flat]
    if isinstance(subset, str):
        if subset not in SUBSETS:
            raise ValueError(f"unknown subset {subset!r}; valid: {', '.join(SUBSETS)} or a callable(path, leaf)")
        pick = (lambda p, _: True) if subset == "all" else (lambda p, _: len(p) > 0 and p[0] == subset)
    elif callable(subset):
        pick = subset
    else:
        raise ValueError(f"subset must be 'all', 'head', 'body' or a callable(path, leaf), got {subset!r}")
    mask = tuple(bool(pick(p, leaf)) for p, leaf in zip(paths, leaves))
    if not any(mask):
        raise ValueError(f"subset {subset!r} selects no parameter leaf (leaves: {['/'.join(p) for p in paths]})")
    selected = [leaf for leaf, m in zip(leaves, mask) if m]
    fixed = [leaf for leaf, m in zip(leaves, mask) if not m]
    return Split(treedef, mask, paths, selected, fixed)
