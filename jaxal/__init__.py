"""jaxal: JAX-native deep active learning.

Plain arrays in, indices out, keys explicit::

    model = jaxal.from_linen(net, variables, head="head")
    idx = jaxal.select("entropy", key, model, x_labeled=xl, y_labeled=yl, x_pool=xu, budget=20)
"""

from jaxal.model import Model, from_functions, from_linen, from_nnx  # noqa: F401
from jaxal.strategies.base import Context, Query, names as strategy_names, register, select  # noqa: F401

__version__ = "0.1.0"
