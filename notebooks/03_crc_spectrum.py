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
# # CRC and the NTK spectrum: what λ⁺_min does under CRC and under random
#
# Gradient descent on a linearised network converges on the labeled set at a rate set by
# λ⁺_min, the smallest positive eigenvalue of the empirical-NTK Gram matrix over the
# labeled set. CRC (Kong et al., "Relieving the Plateau") labels the groups of candidates
# that keep this eigenvalue largest. For the last layer of a network with a Dense head the
# trace kernel is `K = C·ΦΦᵀ` with `φ(x) = [h(x), 1]`, so once the labeled set holds more
# points than `d + 1` features its positive spectrum is that of `C·ΦᵀΦ`, which every new
# point can only lift; CRC chooses the points that lift its bottom the most.
#
# This notebook runs a few rounds of active learning from one initial set with two
# strategies, CRC and random, retraining the network each round, and tracks λ⁺_min of
# the head kernel over each labeled set (`jaxal.strategies.crc.group_scores`, the same
# computation CRC scores groups with) together with the test accuracy.
# `JAXAL_NOTEBOOK_QUICK=1` runs fewer, shorter rounds.

# %%
import os

import jax
import numpy as np

import jaxal
from jaxal import data, models
from jaxal.strategies.crc import group_scores, random_groups
from jaxal.training import train

QUICK = os.environ.get("JAXAL_NOTEBOOK_QUICK") == "1"
OUT = os.environ.get("JAXAL_NOTEBOOK_OUT", os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures"))
os.makedirs(OUT, exist_ok=True)
ROUNDS = 3 if QUICK else 8
INITIAL, BUDGET, GROUP = 40, 10, 5  # 40 labels > d + 1 = 33 features: the regime where λ⁺_min can grow
CANDIDATES = 200 if QUICK else 600
EPOCHS = 40 if QUICK else 100

# %% [markdown]
# ## One initial set, one initial network, two strategies

# %%
ds = data.load("digits", seed=0)
C = ds.num_classes
module = models.create("mlp", C, input_shape=ds.x_train.shape[1:], widths=(32,))
init_vars = train.init_variables(jax.random.key(0), module, ds.x_train[:1])
initial = np.asarray(data.initial_indices(jax.random.key(1), ds.y_train, INITIAL))
config = train.TrainConfig(max_epochs=EPOCHS, batch_size=32)


def fit(labeled, key):
    """Cold start every round, like `jaxal run`'s default."""
    res = train.train(key, module, init_vars, ds.x_train[labeled], ds.y_train[labeled], C, config)
    acc, _ = train.evaluate(module, res.variables, ds.x_test, ds.y_test, C)
    return models.as_model(module, res.variables), acc


def head_lambda_min(model, labeled, batch=None):
    """λ⁺_min of the head (trace) NTK Gram over L, or over L ∪ batch, by CRC's own rule
    (``group_scores``: the batch is scored as one group; L alone is its ``labeled_score``)."""
    if batch is None:
        _, info = group_scores(model, ds.x_train[labeled], ds.x_train[:1], np.zeros((1, 1), np.int64), num_classes=C)
        return info["labeled_score"]
    scores, _ = group_scores(model, ds.x_train[labeled], ds.x_train[batch], np.arange(len(batch))[None],
                             num_classes=C)
    return float(scores[0])


history = {}
snapshot = None  # the group scores of CRC's first query, for the histogram below
for name in ("crc", "random"):
    labeled = initial.copy()
    rows = []  # (labels, λ⁺_min over L, λ⁺_min over L ∪ next batch under the same network, test accuracy)
    for r in range(ROUNDS + 1):
        model, acc = fit(labeled, jax.random.key(10 + r))
        lam = head_lambda_min(model, labeled)
        if r == ROUNDS:
            rows.append((len(labeled), lam, np.nan, acc))
            print(f"{name:>6} round {r}: {len(labeled)} labels, λ⁺_min {lam:.4g}, test accuracy {acc:.3f}")
            break
        unlabeled = np.setdiff1d(np.arange(ds.x_train.shape[0]), labeled)
        key = jax.random.key(100 + r)
        cand = np.sort(np.asarray(jax.random.choice(jax.random.fold_in(key, 1), unlabeled, (CANDIDATES,),
                                                    replace=False)))
        options = {"group_size": GROUP} if name == "crc" else {}
        q = jaxal.select(name, key, model, x_labeled=ds.x_train[labeled], y_labeled=ds.y_train[labeled],
                         x_pool=ds.x_train[cand], budget=BUDGET, return_query=True, **options)
        batch = cand[np.asarray(q.indices)]
        lam_next = head_lambda_min(model, labeled, batch)
        rows.append((len(labeled), lam, lam_next, acc))
        print(f"{name:>6} round {r}: {len(labeled)} labels, λ⁺_min {lam:.4g} -> {lam_next:.4g} with the batch, "
              f"test accuracy {acc:.3f}")
        if name == "crc" and snapshot is None:
            # the partition CRC drew: `crc` splits its key into (partition, tie-break)
            groups = random_groups(jax.random.split(key)[0], CANDIDATES, GROUP)
            scores, _ = group_scores(model, ds.x_train[labeled], ds.x_train[cand], groups, num_classes=C,
                                     num_selected=BUDGET // GROUP)  # CRC's shared rank: the one its kept groups reach
            chosen = np.asarray(q.info.get("group_scores", []))
            same = np.allclose(np.sort(np.asarray(scores))[-len(chosen):], np.sort(chosen), rtol=1e-4)
            print(f"  CRC's chosen groups are the top {len(chosen)} of {len(scores)} groups: {same}")
            snapshot = (np.asarray(scores), chosen, lam)
        labeled = np.concatenate([labeled, batch])
    history[name] = np.asarray(rows, dtype=float)

# %% [markdown]
# ## The picture
#
# Top left, the direct effect of one query: λ⁺_min over `L ∪ batch` divided by λ⁺_min
# over `L`, both under the network that made the query (what CRC maximises). Top right:
# λ⁺_min of each labeled set under the network retrained on it (log scale) — retraining
# moves the features, so this is what the next query starts from. Bottom left: test
# accuracy. Bottom right: in CRC's first query, λ⁺_min of `L ∪ g` for every group `g` of
# 5 candidates in CRC's random partition; CRC labels the groups at the top (blue), the
# dashed line is `L` alone.

# %%
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

fig = Figure(figsize=(11, 8), dpi=110)
FigureCanvasAgg(fig)
colours = {"crc": "tab:blue", "random": "black"}
ax0, ax1, ax2, ax3 = (fig.add_subplot(2, 2, i) for i in (1, 2, 3, 4))
for name, h in history.items():
    ax0.plot(h[:-1, 0], h[:-1, 2] / h[:-1, 1], marker="o", color=colours[name], label=name)
    ax1.plot(h[:, 0], h[:, 1], marker="o", color=colours[name], label=name)
    ax2.plot(h[:, 0], h[:, 3], marker="o", color=colours[name], label=name)
ax0.axhline(1.0, color="gray", linewidth=0.8)
ax0.set_ylabel("λ⁺_min(L ∪ batch) / λ⁺_min(L), same network")
ax1.set_yscale("log")
ax1.set_ylabel("λ⁺_min over L, retrained network")
ax2.set_ylabel("test accuracy")
for ax in (ax0, ax1, ax2):
    ax.set_xlabel("labeled examples")
    ax.grid(alpha=0.3)
    ax.legend()
all_scores, chosen, lam0 = snapshot
ax3.hist(all_scores, bins=30, color="tab:gray", alpha=0.7, label="groups of the partition")
for s in chosen:
    ax3.axvline(s, color="tab:blue", linewidth=1)
ax3.axvline(lam0, color="black", linestyle="--", linewidth=1, label="L alone")
ax3.set_xlabel("λ⁺_min over L ∪ g")
ax3.set_title("CRC's first query: chosen groups (blue)", fontsize="medium")
ax3.legend(fontsize="small")
fig.tight_layout()
path = os.path.join(OUT, "03_crc_spectrum.png")
fig.savefig(path)
print("figure:", path)

# %% [markdown]
# The spectrum is that of each arm's own trained network, so both the labeled points
# and the features change from round to round; `benchmarks/al_quality.py` measures
# whether CRC's better-conditioned labeled sets translate into accuracy over seeds.
