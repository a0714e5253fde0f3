"""jaxal: JAX-native deep active learning.

Plain arrays in, indices out, keys explicit::

    model = jaxal.from_linen(net, variables, head="head")
    idx = jaxal.select("mlmoc", key, model, x_labeled=xl, y_labeled=yl, x_pool=xu, budget=20)

    seq = jaxal.lookahead.Sequential(model, xl, yl, x_pool=xu)   # annotator in the loop
    s = jaxal.Session.create("my-labels", "photos/", classes=["cat", "dog"])   # label your own data
    k = jaxal.ntk.kernel(model, x1, x2, contraction="trace", subset="head")
"""

import importlib

__all__ = [
    "Model", "from_linen", "from_nnx", "from_functions", "select", "register", "names", "strategy_names",
    "Context", "Query", "data", "models", "ntk", "ops", "lookahead", "strategies", "training", "experiment", "pool",
    "Session", "labeling", "stopping",
]

__version__ = "0.2.0.dev0"

# Everything loads on first use (PEP 562), so ``import jaxal`` and the ``jaxal`` program
# start in milliseconds: the command line installs its Ctrl-C handling before JAX loads.
_SUBMODULES = ("data", "lookahead", "models", "ntk", "ops", "strategies", "training", "experiment", "pool", "labeling",
               "stopping")
_ATTRIBUTES = {
    "Model": "jaxal.model", "from_functions": "jaxal.model", "from_linen": "jaxal.model", "from_nnx": "jaxal.model",
    "Context": "jaxal.strategies", "Query": "jaxal.strategies", "names": "jaxal.strategies",
    "register": "jaxal.strategies", "select": "jaxal.strategies", "strategy_names": "jaxal.strategies",
    "Session": "jaxal.labeling.session",
}
_DEPRECATED_ATTRIBUTES = ("train", "frozen", "metrics")  # 0.1 attributes of the package


def __getattr__(name: str):
    # The 0.1 attributes ``jaxal.train`` / ``frozen`` / ``metrics`` warn and forward.
    if name in _SUBMODULES or name in _DEPRECATED_ATTRIBUTES:
        return importlib.import_module(f"jaxal.{name}")
    if name in _ATTRIBUTES:
        module = importlib.import_module(_ATTRIBUTES[name])  # jaxal.strategies registers every strategy
        value = getattr(module, "names" if name == "strategy_names" else name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jaxal' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
