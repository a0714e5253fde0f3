# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Quickstart: your own Flax model, a batch from any strategy
#
# jaxal does not own your network. Any Flax linen module with
#
# - a `features` method (the penultimate representation, the "body"), and
# - a `head` submodule defined in `setup` (here a `Dense` layer),
#
# becomes a `jaxal.Model` with one call, and every registered strategy can then pick a
# batch from plain arrays: `jaxal.select(name, key, model, x_labeled=..., y_labeled=...,
# x_pool=..., budget=...)`. This notebook trains a small network on 30 labeled digits
# with plain optax, asks six strategies for 10 more labels, and shows what each picked.
#
# Set `JAXAL_NOTEBOOK_QUICK=1` for a smaller, faster run (what the tests execute).

# %%
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxal

QUICK = os.environ.get("JAXAL_NOTEBOOK_QUICK") == "1"
OUT = os.environ.get("JAXAL_NOTEBOOK_OUT", os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures"))
os.makedirs(OUT, exist_ok=True)
EPOCHS = 100 if QUICK else 300
POOL = 300 if QUICK else None  # a pool subsample keeps the quick run fast

# %% [markdown]
# ## Data: your own arrays
#
# Plain numpy in: scikit-learn's 8×8 digits as 64 pixel intensities in [0, 1], a random
# train/test split, 30 labeled training points (3 per class) and an unlabeled pool.
# (`jaxal.data.load("digits")` gives the standardised version the benchmarks use.)

# %%
from sklearn.datasets import load_digits  # noqa: E402

digits = load_digits()
x_all, y_all = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int32)
rng = np.random.default_rng(0)
order = rng.permutation(len(y_all))
train, test = order[:1300], order[1300:]
x_train, y_train, x_test, y_test = x_all[train], y_all[train], x_all[test], y_all[test]
labeled = np.concatenate([rng.choice(np.flatnonzero(y_train == c), 3, replace=False) for c in range(10)])
pool = np.setdiff1d(np.arange(len(y_train)), labeled)
if POOL is not None:
    pool = np.sort(rng.choice(pool, POOL, replace=False))
x_l, y_l, x_u = x_train[labeled], y_train[labeled], x_train[pool]
print(f"labeled {x_l.shape}, pool {x_u.shape}, test {x_test.shape}")


# %% [markdown]
# ## Your model: a linen module with `features` and `head`
#
# Dropout makes the model stochastic, which BALD uses (MC dropout through an explicit
# key); the other strategies see the deterministic network.


# %%
class Net(nn.Module):
    hidden: int = 64
    num_classes: int = 10
    dropout_rate: float = 0.2

    def setup(self):
        self.body = nn.Dense(self.hidden)
        self.drop = nn.Dropout(self.dropout_rate)
        self.head = nn.Dense(self.num_classes)

    def features(self, x, dropout: bool = False):
        return self.drop(nn.relu(self.body(x)), deterministic=not dropout)

    def __call__(self, x, dropout: bool = False):
        return self.head(self.features(x, dropout))


net = Net()
variables = net.init(jax.random.key(1), x_l[:1])

# %% [markdown]
# ## Train it with plain optax
#
# Full-batch Adam on the 30 labeled points, cross-entropy, dropout on. (Or let jaxal
# train it: `jaxal.training.train.train(key, module, variables, x, y, num_classes, TrainConfig())`
# expects a `train` keyword in `__call__`, like the networks in `jaxal.models`.)

# %%
tx = optax.adam(1e-2)


@jax.jit
def step(params, opt_state, k):
    def loss_fn(p):
        logits = net.apply({"params": p}, x_l, dropout=True, rngs={"dropout": k})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y_l).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


params, opt_state = variables["params"], tx.init(variables["params"])
for k in jax.random.split(jax.random.key(2), EPOCHS):
    params, opt_state, loss = step(params, opt_state, k)
test_acc = float(jnp.mean(jnp.argmax(net.apply({"params": params}, x_test), -1) == y_test))
print(f"final training loss {float(loss):.3f}; test accuracy with 30 labels: {test_acc:.3f}")

# %% [markdown]
# ## Plug it into jaxal
#
# `from_linen` splits the parameters into `{"body", "head"}` and builds pure functions.
# `stochastic_kwargs` says how to call `features` for an MC-dropout pass.

# %%
model = jaxal.from_linen(net, {"params": params}, head="head", stochastic_kwargs={"dropout": True})
print("dense head:", model.dense_head, "| stochastic:", model.stochastic)
print("registered strategies:", ", ".join(jaxal.strategy_names()))

# %% [markdown]
# ## Query a batch of 10 with several strategies
#
# Same call for every strategy; the key makes each pick reproducible.

# %%
STRATEGIES = ["random", "entropy", "margin", "badge", "coreset", "bald", "mlmoc"]
STRATEGIES = [s for s in STRATEGIES if s in jaxal.strategy_names()]
BUDGET = 10
picks, seconds = {}, {}
for name in STRATEGIES:
    t0 = time.perf_counter()
    idx = jaxal.select(name, jax.random.key(3), model, x_labeled=x_l, y_labeled=y_l, x_pool=x_u, budget=BUDGET)
    seconds[name] = time.perf_counter() - t0
    picks[name] = np.asarray(idx)
    print(f"{name:>10}: {picks[name].tolist()}  ({seconds[name]:.2f} s, compilation included)")

# %% [markdown]
# What did they pick? Each row shows the 10 pool images a strategy asks to label, with
# the true label (hidden from the strategy) and the model's predicted probability of it.
# Entropy and margin go for digits the model is unsure of; BADGE and coreset add
# diversity (gradient embeddings, coverage of the feature space); MLMOC picks the points
# whose pseudo-labels would move the predictions on the pool most, which on a
# cross-entropy network need not be the uncertain ones.

# %%
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

probs = np.asarray(jax.nn.softmax(model.logits(jnp.asarray(x_u)), -1))
y_u = y_train[pool]
fig = Figure(figsize=(BUDGET * 0.9, len(STRATEGIES) * 1.05), dpi=110)
FigureCanvasAgg(fig)
for i, name in enumerate(STRATEGIES):
    for j, p in enumerate(picks[name]):
        ax = fig.add_subplot(len(STRATEGIES), BUDGET, i * BUDGET + j + 1)
        ax.imshow(x_u[p].reshape(8, 8), cmap="gray_r")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{y_u[p]} ({probs[p, y_u[p]]:.2f})", fontsize=7)
        if j == 0:
            ax.set_ylabel(name, fontsize=8)
fig.suptitle("10 picks per strategy: true label (model's probability of it)", fontsize=9)
fig.tight_layout()
path = os.path.join(OUT, "01_quickstart.png")
fig.savefig(path)
print("figure:", path)

# %% [markdown]
# Next: `jaxal run` / `jaxal compare` run whole experiments from the shell (training,
# rounds, records, resume), and `02_lookahead_vs_retraining.py` looks inside MLMOC.
