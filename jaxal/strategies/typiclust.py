"""TypiClust (Hacohen, Dekel & Weinshall, 2022): typical points of uncovered clusters.

1. Cluster the features of L ∪ U into K = min(|L| + B, |L| + |U|) clusters with k-means
   (scikit-learn ``KMeans``; ``MiniBatchKMeans`` above 50 clusters, as the paper's code).
2. Typicality of x in its cluster Q: ``1 / mean_{z ∈ kNN(x, Q)} ‖h_x − h_z‖`` with
   k = min(20, |Q| − 1) neighbours (itself excluded).
3. Repeat B times: among clusters that still hold an unpicked pool point, take the one
   with the fewest labeled/picked points, then the largest; pick its most typical pool
   point and count it as covered.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxal import pool
from jaxal.model import embed, features_rows
from jaxal.strategies.base import Context, on_mesh, positive_options, register
from jaxal.validation import check_budget, check_finite

__all__ = ["typicality", "typiclust_select", "typiclust"]


def typicality(features: np.ndarray, k: int = 20) -> np.ndarray:
    """``[n]`` inverse mean Euclidean distance to the ``min(k, n−1)`` nearest neighbours
    (itself excluded); a singleton gets typicality 1."""
    from sklearn.neighbors import NearestNeighbors

    n = features.shape[0]
    kk = min(k, n - 1)
    if kk < 1:
        return np.ones(n)
    dist, _ = NearestNeighbors(n_neighbors=kk + 1).fit(features).kneighbors(features)
    return 1.0 / (dist[:, 1:].mean(axis=1) + 1e-12)


def typiclust_select(
    seed: int, feats_labeled: np.ndarray, feats_pool: np.ndarray, budget: int, *, k_nn: int = 20
) -> np.ndarray:
    """TypiClust picks ``[B]`` (pool indices) from labeled ``[L, d]`` and pool ``[N, d]``
    features; ``seed`` fixes k-means."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    n_l, n_u = feats_labeled.shape[0], feats_pool.shape[0]
    budget = check_budget(budget, n_u)
    feats = np.concatenate([feats_labeled, feats_pool]).astype(np.float32, copy=False)  # float64: 2x memory
    n_clusters = min(n_l + budget, n_l + n_u)
    km_cls = MiniBatchKMeans if n_clusters > 50 else KMeans
    labels = km_cls(n_clusters=n_clusters, random_state=seed, n_init=1 if n_clusters > 50 else 10).fit_predict(feats)
    sizes = np.bincount(labels, minlength=n_clusters)
    covered = np.bincount(labels[:n_l], minlength=n_clusters)
    typ = np.zeros(n_l + n_u)
    by_cluster = np.argsort(labels, kind="stable")
    for members in np.split(by_cluster, np.cumsum(sizes)[:-1]):
        if members.size:
            typ[members] = typicality(feats[members], k_nn)
    pool_labels = labels[n_l:]
    remaining = np.bincount(pool_labels, minlength=n_clusters)
    taken = np.zeros(n_u, bool)
    picks = []
    for _ in range(budget):
        # fewest covered first, then largest; clusters without an unpicked pool point excluded
        order = np.lexsort((-sizes, covered, remaining == 0))
        c = order[0]
        cand = np.flatnonzero((pool_labels == c) & ~taken)
        j = cand[np.argmax(typ[n_l + cand])]
        picks.append(j)
        taken[j] = True
        covered[c] += 1
        remaining[c] -= 1
    return np.asarray(picks, np.int64)


@register("typiclust", check=positive_options("k_nn", "batch_size"))
def typiclust(key: jax.Array, ctx: Context, budget: int, *, k_nn: int = 20, batch_size: int = 4096) -> np.ndarray:
    """TypiClust on ``embed(model, x)`` of the labeled set and the pool.

    On ``ctx.mesh`` the features are computed there and gathered to the host (scikit-learn
    clusters them): ``N·d`` floats on every process.
    """
    if ctx.mesh is not None:
        feats = on_mesh(ctx, features_rows, ctx.model, chunk_rows=batch_size, what="the pool's features")
        hp = pool.to_host(feats.data)[: feats.n]
    else:
        hp = np.asarray(embed(ctx.model, ctx.x_pool, batch_size))
    if int(np.shape(ctx.x_labeled)[0]) > 0:
        hl = np.asarray(embed(ctx.model, ctx.x_labeled, batch_size))
    else:
        hl = np.zeros((0, hp.shape[1]), hp.dtype)
    check_finite("pool features", hp)
    seed = int(jax.random.randint(key, (), 0, np.iinfo(np.int32).max))
    return typiclust_select(seed, hl, hp, budget, k_nn=k_nn)
