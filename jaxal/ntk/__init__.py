"""Empirical neural tangent kernels: exact, structured, chunked, sharded.

``Θ(x, x') = J(x) J(x')^T`` with ``J = ∂f/∂θ`` over a parameter subset. See
:func:`kernel` for shapes, contractions and implementations.
"""

from jaxal.ntk.contract import CONTRACTIONS  # noqa: F401
from jaxal.ntk.kernel import IMPLEMENTATIONS, chosen_implementation, head_features, kernel  # noqa: F401

__all__ = ["kernel", "head_features", "chosen_implementation", "CONTRACTIONS", "IMPLEMENTATIONS"]
