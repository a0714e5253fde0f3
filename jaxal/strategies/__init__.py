"""Query strategies, each a pure function registered by name.

Importing this package registers every built-in strategy; see :mod:`jaxal.strategies.base`
for the protocol and the registry. One module per family:

- :mod:`~jaxal.strategies.uncertainty`: ``random``, ``least_confidence``, ``margin``, ``entropy``
- :mod:`~jaxal.strategies.bald`: ``bald`` (MC dropout or an ensemble)
- :mod:`~jaxal.strategies.batchbald`: ``batchbald`` (greedy joint BALD), ``epig`` (expected predictive information gain)
- :mod:`~jaxal.strategies.egl`: ``egl`` (expected gradient length)
- :mod:`~jaxal.strategies.coreset`: ``coreset`` (k-center greedy)
- :mod:`~jaxal.strategies.typiclust`: ``typiclust``
- :mod:`~jaxal.strategies.badge`: ``badge``
- :mod:`~jaxal.strategies.crc`: ``crc`` (convergence-rate control)
- :mod:`~jaxal.strategies.model_change`: ``mlmoc``, ``emoc``, ``eer``, ``flip_rate`` (NTK look-ahead)
- :mod:`~jaxal.strategies.regression`: ``mc_variance``, ``ntk_variance``, ``ntk_emoc``, ``maxdet``, ``maxdist``,
  ``kmeanspp_features``, ``lcmd`` (regression targets; NTK-sketch kernels)
- :mod:`~jaxal.strategies.albl`: ``albl`` (a bandit over the others)
"""

from jaxal.strategies import albl, badge, bald, coreset, crc, egl, model_change, typiclust, uncertainty  # noqa: F401
from jaxal.strategies import batchbald  # noqa: F401
from jaxal.strategies import regression  # noqa: F401
from jaxal.strategies.base import (  # noqa: F401
    Context,
    Entry,
    Query,
    check_options,
    entry,
    get,
    names,
    option_names,
    register,
    select,
    sequential_mode,
    sequential_names,
    top_k_indices,
)
