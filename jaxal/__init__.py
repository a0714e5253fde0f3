"""jaxal: JAX-native deep active learning.

Plain arrays in, indices out, keys explicit::

    model = jaxal.from_linen(net, variables, head="head")
    idx = jaxal.select("mlmoc", key, model, x_labeled=xl, y_labeled=yl, x_pool=xu, budget=20)

    seq = jaxal.lookahead.Sequential(model, xl, yl, x_pool=xu)   # annotator in the loop
    k = jaxal.ntk.kernel(model, x1, x2, contraction="trace", subset="head")
"""

from jaxal.model import Model, from_functions, from_linen, from_nnx  # noqa: F401
from jaxal.strategies.base import Context, Query, names as strategy_names, register, select  # noqa: F401
from jaxal import data, frozen, lookahead, metrics, models, ntk, strategies, train  # noqa: F401,E402

__version__ = "0.1.0"
