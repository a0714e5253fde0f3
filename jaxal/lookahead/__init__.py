"""NTK look-ahead: how would every prediction move if we labeled ``x'`` and retrained?

Mohamadi, Bae & Sutherland (NeurIPS 2022) approximate retraining on ``L ∪ {(x', y')}``
by kernel regression with the empirical NTK around the trained weights. jaxal scores
every candidate at once from one Cholesky of ``K_LL`` (block inverse of the bordered
kernel; ``docs/lookahead.md`` has the maths and the correction to the paper's eq. 12).

- :mod:`~jaxal.lookahead.core`: the maths on kernel matrices; a BlackJAX-style state
  machine ``init`` / ``add`` / ``best`` (plus ``scores``, ``greedy_batch``).
- :mod:`~jaxal.lookahead.from_model`: from a trained model to a state (``approximation``:
  empirical NTK or an infinite-width kernel).
- :mod:`~jaxal.lookahead.sequential`: :class:`Sequential`, the annotator in the loop.
- :mod:`~jaxal.lookahead.baselines`: infinite-width ReLU NTK, one-step-SGD look-ahead.
- :mod:`~jaxal.lookahead.pool_scores`: every row of a large pool as a candidate, scored
  against an evaluation subset, the pool sharded over a device mesh (``select(mesh=)``).

The strategies ``mlmoc``, ``emoc``, ``eer`` and ``flip_rate`` live in
:mod:`jaxal.strategies.model_change` (the expected-model-change family).
"""

from jaxal.lookahead.baselines import one_step_sgd_scores, relu_ntk  # noqa: F401
from jaxal.lookahead.core import (  # noqa: F401
    OBJECTIVES,
    LookaheadInfo,
    LookaheadState,
    add,
    best,
    greedy_batch,
    init,
    scores,
)
from jaxal.lookahead.from_model import APPROXIMATIONS, init_from_model, kernel_blocks  # noqa: F401
from jaxal.lookahead.pool_scores import PoolScores, pool_scores  # noqa: F401
from jaxal.lookahead.sequential import Sequential  # noqa: F401
