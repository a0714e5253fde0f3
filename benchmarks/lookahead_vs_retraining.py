"""NTK look-ahead (MLMOC) against naive retraining: speed and fidelity.

Setting (Mohamadi et al. 2022): MNIST-1D, ReLU MLP with two hidden layers, squared
loss, ``|L| = 100`` labeled points, evaluation/candidate set ``S`` of ``|S|`` pool points.
``f_L`` is trained on ``L`` (Adam, squared loss, until 100% training accuracy or a cap).

- **naive**: for ``m`` sampled candidates, warm-start from ``f_L`` and train on
  ``L ∪ {(x', ŷ')}`` for 15 epochs (plain SGD lr 0.01 by default — the dynamics the NTK
  linearises — or ``--retrain-optimizer adam``; batch 32; one jit-compiled run per
  candidate), then MLMOC = ``Σ_{x∈S} ‖f_L(x) − f_retrained(x)‖₂``. Seconds per
  acquisition = (seconds per candidate) × ``|S|``.
- **NTK without block**: the kernel on ``L ∪ S``, then for every candidate a fresh
  ``(L+1)×(L+1)`` Cholesky of the bordered kernel and ``f⁺_lin`` on ``S`` (compiled,
  one candidate per ``lax.map`` step).
- **NTK with block**: :func:`jaxal.lookahead.init_from_model` + :func:`jaxal.lookahead.scores`
  (kernel, one Cholesky of ``K_LL``, ``Σ`` over ``S``, chunked scores), everything included.

Fidelity: Spearman and Kendall rank correlation between NTK and naive scores on the
``m`` candidates (and for the paper's look-ahead baselines: the infinite-width ReLU NTK
and one-step SGD), and the overlap of their top-k (k = 10, or m/2 when m < 20).
Timings: median of ``--repeats`` runs after a compile run, float32, CPU unless a GPU is
present; the machine may be shared (the load average is recorded).

    python benchmarks/lookahead_vs_retraining.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats

from jaxal import data, models, train
from jaxal.lookahead import baselines, core, init_from_model, kernel_blocks

RETRAIN_EPOCHS = 15
RETRAIN_BATCH = 32


def median_time(fn, repeats: int):
    out = jax.block_until_ready(fn())  # compile run
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def make_retrain(module, num_classes: int, n: int, optimizer: str, lr: float):
    """Jitted warm-start training: ``RETRAIN_EPOCHS`` epochs (fresh optimiser) on ``n`` points, squared loss."""
    tx = optax.adam(lr) if optimizer == "adam" else optax.sgd(lr)
    k = max(1, round(n / RETRAIN_BATCH))
    b = n // k

    def loss(params, xb, yb):
        out = module.apply({"params": params}, xb)
        return jnp.mean(jnp.sum((out - jax.nn.one_hot(yb, num_classes)) ** 2, axis=-1))

    @jax.jit
    def retrain(params, x, y, key):
        def epoch(carry, ek):
            params, opt = carry
            perm = jax.random.permutation(ek, n)[: k * b].reshape(k, b)

            def step(carry, idx):
                params, opt = carry
                g = jax.grad(loss)(params, x[idx], y[idx])
                upd, opt = tx.update(g, opt, params)
                return (optax.apply_updates(params, upd), opt), None

            return jax.lax.scan(step, (params, opt), perm)[0], None

        (params, _), _ = jax.lax.scan(epoch, (params, tx.init(params)), jax.random.split(key, RETRAIN_EPOCHS))
        return params

    return retrain


def mlmoc_from_outputs(f_new, f_ref):
    return jnp.sum(jnp.linalg.norm(f_new - f_ref, axis=-1))


def run_width(width: int, args, ds, key) -> dict:
    c = ds.num_classes
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(ds.x_train.shape[0])
    lab, ev = perm[: args.labeled], perm[args.labeled : args.labeled + args.eval_size]
    x_l, y_l, x_s = ds.x_train[lab], ds.y_train[lab], ds.x_train[ev]
    module = models.create("mlp", c, input_shape=ds.x_train.shape[1:], widths=(width, width))
    k_init, k_train, k_re, k_cand = jax.random.split(key, 4)
    variables = train.init_variables(k_init, module, x_l[:1])
    cfg = train.TrainConfig(loss="squared", learning_rate=1e-3, batch_size=RETRAIN_BATCH, max_epochs=args.max_epochs,
                            target_accuracy=1.0)
    res = train.train(k_train, module, variables, x_l, y_l, c, cfg)
    model = models.as_model(module, res.variables)
    f_s = model.logits(jnp.asarray(x_s))
    m = min(args.candidates, args.eval_size)
    cand = np.sort(rng.choice(args.eval_size, m, replace=False))

    # naive retraining on the m candidates
    retrain = make_retrain(module, c, args.labeled + 1, args.retrain_optimizer, args.retrain_lr)
    params0 = res.variables["params"]
    pseudo = np.asarray(jnp.argmax(f_s, axis=-1))
    naive, t_naive = [], []
    for t, j in enumerate(cand):
        xa = jnp.asarray(np.concatenate([x_l, x_s[j : j + 1]]))
        ya = jnp.asarray(np.append(y_l, pseudo[j]).astype(np.int32))
        if t == 0:
            jax.block_until_ready(retrain(params0, xa, ya, k_re))  # compile run
        t0 = time.perf_counter()
        p = jax.block_until_ready(retrain(params0, xa, ya, k_re))
        f_new = module.apply({"params": p}, jnp.asarray(x_s))
        naive.append(float(mlmoc_from_outputs(f_new, f_s)))
        t_naive.append(time.perf_counter() - t0)
    naive = np.asarray(naive)
    sec_naive = statistics.median(t_naive) * args.eval_size

    # NTK with block (everything from the trained model included)
    def block():
        state, info = init_from_model(model, x_l, y_l, x_s)
        return core.scores(state, "mlmoc")[0], info

    (s_block, info), sec_block = median_time(block, args.repeats)
    s_block = np.asarray(s_block)

    # NTK without block: same kernel, one bordered (L+1)x(L+1) solve per candidate
    @jax.jit
    def per_candidate(k_ll, k_sl, k_ss, f_l, f_s, y):
        n_l = k_ll.shape[0]
        resid_l = jax.nn.one_hot(y, c, dtype=f_l.dtype) - f_l
        scale = jnp.mean(jnp.diag(k_ll))

        def one(j):
            kb = jnp.block([[k_ll, k_sl[j][:, None]], [k_sl[j][None, :], k_ss[j, j][None, None]]])
            chol = jnp.linalg.cholesky(kb + 1e-5 * scale * jnp.eye(n_l + 1, dtype=kb.dtype))
            resid = jnp.concatenate([resid_l, (jax.nn.one_hot(jnp.argmax(f_s[j]), c, dtype=f_s.dtype) - f_s[j])[None]])
            alpha = jax.scipy.linalg.cho_solve((chol, True), resid)
            f_new = f_s + jnp.concatenate([k_sl, k_ss[:, j][:, None]], axis=1) @ alpha
            return mlmoc_from_outputs(f_new, f_s)

        return jax.lax.map(one, jnp.arange(f_s.shape[0]))

    def noblock():
        k_ll, k_sl, k_ss = kernel_blocks(model, x_l, x_s)
        return per_candidate(k_ll, k_sl, k_ss, model.logits(jnp.asarray(x_l)), model.logits(jnp.asarray(x_s)),
                             jnp.asarray(y_l))

    s_noblock, sec_noblock = median_time(noblock, args.repeats)
    _, sec_kernel = median_time(lambda: kernel_blocks(model, x_l, x_s), args.repeats)
    s_noblock = np.asarray(s_noblock)

    # the paper's look-ahead baselines on the same candidates
    state_emp, _ = init_from_model(model, x_l, y_l, x_s)
    s_delta = np.asarray(core.scores(state_emp._replace(offset=jnp.zeros_like(state_emp.offset)), "mlmoc")[0])
    state_inf, _ = init_from_model(model, x_l, y_l, x_s, kernel="infinite")
    s_inf = np.asarray(core.scores(state_inf, "mlmoc")[0])
    s_sgd = np.asarray(baselines.one_step_sgd_scores(model, jnp.asarray(x_s), candidates=jnp.asarray(cand),
                                                     learning_rate=args.retrain_lr))

    top = 10 if m >= 20 else max(1, m // 2)

    def fidelity(s):
        a = s[cand] if s.shape[0] != m else s
        return {
            "spearman": float(stats.spearmanr(a, naive).statistic),
            "kendall": float(stats.kendalltau(a, naive).statistic),
            "top_overlap": len(set(np.argsort(-a)[:top]) & set(np.argsort(-naive)[:top])) / top,
        }

    fid = fidelity(s_block)
    return {
        "width": width,
        "eval_size": args.eval_size,
        "labeled": args.labeled,
        "candidates": int(m),
        "train_epochs": int(res.epochs),
        "train_accuracy": float(res.train_accuracy),
        "seconds_naive_per_candidate": statistics.median(t_naive),
        "seconds_per_acquisition": {"naive": sec_naive, "ntk_noblock": sec_noblock, "ntk_block": sec_block},
        "speedup_vs_naive": sec_naive / sec_block,
        "speedup_vs_noblock": sec_noblock / sec_block,
        "seconds_kernel": sec_kernel,
        "speedup_vs_noblock_excluding_kernel": (sec_noblock - sec_kernel) / max(sec_block - sec_kernel, 1e-9),
        "spearman_vs_naive": fid["spearman"],
        "kendall_vs_naive": fid["kendall"],
        "top_k": top,
        "top_overlap_vs_naive": fid["top_overlap"],
        "noblock_vs_block_max_rel_diff": float(np.max(np.abs(s_noblock - s_block) / np.abs(s_block))),
        "jitter": float(info.jitter),
        "num_clamped": int(info.num_clamped),
        "baselines": {"infinite_width_ntk": fidelity(s_inf), "one_step_sgd": fidelity(s_sgd),
                      "ntk_candidate_term_only": fidelity(s_delta)},
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized run: |S|=500, m=10, width 512")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--eval-size", type=int, default=None)
    ap.add_argument("--candidates", type=int, default=None)
    ap.add_argument("--widths", type=int, nargs="+", default=None)
    ap.add_argument("--labeled", type=int, default=100)
    ap.add_argument("--max-epochs", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retrain-optimizer", choices=("sgd", "adam"), default="sgd",
                    help="optimiser of the naive warm-start retraining (plain SGD is what the NTK linearises)")
    ap.add_argument("--retrain-lr", type=float, default=None, help="default 0.01 (sgd) / 1e-3 (adam)")
    args = ap.parse_args(argv)
    args.eval_size = args.eval_size or (500 if args.quick else 2000)
    args.candidates = args.candidates or (10 if args.quick else 100)
    args.widths = args.widths or ([512] if args.quick else [128, 512, 2048])
    args.max_epochs = args.max_epochs or (100 if args.quick else 300)
    args.retrain_lr = args.retrain_lr or (0.01 if args.retrain_optimizer == "sgd" else 1e-3)

    ds = data.load("mnist1d")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = [run_width(w, args, ds, jax.random.PRNGKey(args.seed)) for w in args.widths]

    head = f"{'width':>6} {'naive s/acq':>12} {'no-block s':>11} {'block s':>9} {'x naive':>9} {'x no-block':>10} " \
           f"{'spearman':>9} {'kendall':>8} {'top-k':>6} {'inf-NTK ρ':>10} {'1-SGD ρ':>8}"
    print(f"NTK look-ahead vs naive retraining: mnist1d, |L|={args.labeled}, |S|={args.eval_size}, "
          f"m={args.candidates}, {RETRAIN_EPOCHS} retraining epochs ({args.retrain_optimizer}, lr {args.retrain_lr}); {jax.devices()[0].platform}, load {load:.1f}")
    print(head)
    for r in rows:
        t = r["seconds_per_acquisition"]
        print(f"{r['width']:>6} {t['naive']:>12.1f} {t['ntk_noblock']:>11.3f} {t['ntk_block']:>9.3f} "
              f"{r['speedup_vs_naive']:>9.0f} {r['speedup_vs_noblock']:>10.1f} {r['spearman_vs_naive']:>9.3f} "
              f"{r['kendall_vs_naive']:>8.3f} {r['top_overlap_vs_naive']:>6.2f} "
              f"{r['baselines']['infinite_width_ntk']['spearman']:>10.3f} {r['baselines']['one_step_sgd']['spearman']:>8.3f}")
    main_row = next((r for r in rows if r["width"] == 512), rows[0])
    out = {
        "setting": {"dataset": "mnist1d", "labeled": args.labeled, "eval_size": args.eval_size,
                    "candidates": args.candidates, "retrain_epochs": RETRAIN_EPOCHS,
                    "retrain_optimizer": args.retrain_optimizer, "retrain_lr": args.retrain_lr, "quick": args.quick,
                    "device": jax.devices()[0].platform, "load_average": load, "repeats": args.repeats},
        "speedup_vs_naive": main_row["speedup_vs_naive"],
        "speedup_vs_noblock": main_row["speedup_vs_noblock"],
        "spearman_vs_naive": main_row["spearman_vs_naive"],
        "kendall_vs_naive": main_row["kendall_vs_naive"],
        "top_overlap_vs_naive": main_row["top_overlap_vs_naive"],
        "per_width": rows,
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
