"""jaxal: JAX-native deep active learning.

Plain arrays in, indices out, keys explicit::

    model = jaxal.from_linen(net, variables, head="head")
    idx = jaxal.select("mlmoc", key, model, x_labeled=xl, y_labeled=yl, x_pool=xu, budget=20)

    seq = jaxal.lookahead.Sequential(model, xl, yl, x_pool=xu)   # annotator in the loop
    k = jaxal.ntk.kernel(model, x1, x2, contraction="trace", subset="head")
"""

from jaxal import data, lookahead, models, ntk, ops, strategies, training  # noqa: E402
from jaxal.model import Model, from_functions, from_linen, from_nnx
from jaxal.strategies.base import Context, Query, names, register, select

strategy_names = names  # the 0.1 name, kept

__all__ = [
    "Model", "from_linen", "from_nnx", "from_functions", "select", "register", "names", "strategy_names",
    "Context", "Query", "data", "models", "ntk", "ops", "lookahead", "strategies", "training", "experiment",
]

__version__ = "0.2.0.dev0"

_DEPRECATED_ATTRIBUTES = ("train", "frozen", "metrics")  # 0.1 attributes of the package


def __getattr__(name: str):
    # ``jaxal.experiment`` loads on first use (it pulls in matplotlib and the data sets);
    # the 0.1 attributes ``jaxal.train`` / ``frozen`` / ``metrics`` warn and forward.
    import importlib

    if name == "experiment" or name in _DEPRECATED_ATTRIBUTES:
        return importlib.import_module(f"jaxal.{name}")
    raise AttributeError(f"module 'jaxal' has no attribute {name!r}")
