"""Training throughput of ``jaxal.training.train.train`` and two ways to run an epoch.

``jaxal.training.train.train`` dispatches one jitted optax step per fixed-shape mini-batch
(gathered on the device from the permutation, batch index traced: one compile per
labeled-set size) plus one jitted inference pass per epoch for the stop rule.
Compared with the same steps run as

- ``scan``: the whole epoch as one jitted ``lax.scan`` over the batches, and
- ``host``: the usual loop that slices batches on the host (numpy) and calls a jitted
  step on them.

All run the same number of epochs: jaxal's count with ``target_accuracy=1.0`` (it may
stop early on reaching 100%, so the epochs run are reported).

Reports the median seconds per epoch of ``--repeats`` timed runs after one compile run.

Then (first, in a fresh process, so nothing is compiled yet) a whole active-learning
run: MNIST-1D, the CNN, entropy, 20 rounds of 20 from 20 labels (``--quick``: 4 rounds),
through :func:`jaxal.experiment.loop.run` with no persistent compilation cache: wall
time, XLA compilations and the seconds they took (JAX's monitoring events), so the
share of a run spent compiling is measured where it matters.

    python benchmarks/train_speed.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxal import data, models
from jaxal.training.train import TrainConfig, epoch_batches, init_variables, train


@functools.lru_cache(maxsize=None)
def make_step(module, learning_rate: float):
    """The baseline's jitted optax step, built once per model (so timings exclude compiles)."""
    tx = optax.adam(learning_rate)

    @jax.jit
    def step(params, opt_state, xb, yb):
        def loss_of(p):
            logits = module.apply({"params": p}, xb, train=True)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))

        grads = jax.grad(loss_of)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return tx, step


def loop_baseline(key, module, variables, x, y, config: TrainConfig, epochs: int):
    """One jitted optax step per mini-batch, dispatched from Python."""
    tx, step = make_step(module, config.learning_rate)
    params = variables["params"]
    opt_state = tx.init(params)
    n = x.shape[0]
    k, b = epoch_batches(n, config.batch_size)
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    for _ in range(epochs):
        perm = rng.permutation(n)
        for i in range(k):  # host-side batches, as a typical data loader makes them
            idx = perm[i * b : (i + 1) * b]
            params, opt_state = step(params, opt_state, x[idx], y[idx])
    return jax.block_until_ready(params)


@functools.lru_cache(maxsize=None)
def make_scan_epoch(module, learning_rate: float):
    """The whole epoch as one jitted ``lax.scan`` over the batches."""
    tx, _ = make_step(module, learning_rate)

    def step(carry, inputs):
        params, opt_state, x, y = carry
        idx = inputs

        def loss_of(p):
            logits = module.apply({"params": p}, x[idx], train=True)
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]))

        grads = jax.grad(loss_of)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, x, y), None

    @jax.jit
    def epoch(params, opt_state, x, y, batches):
        return jax.lax.scan(step, (params, opt_state, x, y), batches)[0][:2]

    return tx, epoch


def scan_baseline(key, module, variables, x, y, config: TrainConfig, epochs: int):
    tx, epoch = make_scan_epoch(module, config.learning_rate)
    params = variables["params"]
    opt_state = tx.init(params)
    n = x.shape[0]
    k, b = epoch_batches(n, config.batch_size)
    xd, yd = jnp.asarray(x), jnp.asarray(y)
    for _ in range(epochs):
        key, sub = jax.random.split(key)
        params, opt_state = epoch(params, opt_state, xd, yd, jax.random.permutation(sub, n)[: k * b].reshape(k, b))
    return jax.block_until_ready(params)


def median_time(fn, repeats: int) -> float:
    fn()  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def al_run_compile_share(rounds: int, num_samples: int) -> dict:
    """Wall time and compile time of one ``rounds``-round run (see the module docstring)."""
    import tempfile

    from jaxal.experiment import compile_clock
    from jaxal.experiment.config import ExperimentConfig
    from jaxal.experiment.loop import run

    config = ExperimentConfig(dataset="mnist1d", dataset_options={"num_samples": num_samples}, model="cnn",
                              strategy="entropy", initial_size=20, budget=20, rounds=rounds, seed=0)
    c0, s0 = compile_clock.compilations(), compile_clock.compile_seconds()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        records = run(config, os.path.join(out, "run"))
    wall = time.perf_counter() - t0
    compile_s = compile_clock.compile_seconds() - s0
    return {"dataset": "mnist1d", "num_samples": num_samples, "model": "cnn", "strategy": "entropy",
            "rounds": rounds, "final_labels": int(records[-1]["n_labeled"]), "wall_seconds": wall,
            "compilations": compile_clock.compilations() - c0, "compile_seconds": compile_s,
            "compile_fraction": compile_s / wall,
            "train_seconds": sum(r["train_seconds"] for r in records),
            "query_seconds": sum(r["query_seconds"] for r in records)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized run (seconds)")
    ap.add_argument("--json", type=str, default=None, help="write results to this JSON file")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    al = al_run_compile_share(4 if args.quick else 20, 1250 if args.quick else 5000)
    print(f"active-learning run: {al['rounds']} rounds (to {al['final_labels']} labels), mnist1d/cnn/entropy: "
          f"{al['wall_seconds']:.1f} s wall, {al['compilations']} compilations taking {al['compile_seconds']:.1f} s "
          f"({100 * al['compile_fraction']:.0f}%)")

    epochs = 3 if args.quick else 10
    sizes = (200,) if args.quick else (200, 1000)
    digits = data.load("digits")
    mnist1d = data.load("mnist1d", num_samples=1250 if args.quick else 5000)
    cases = [("mlp", digits, {"widths": (256, 256)}), ("cnn", mnist1d, {})]
    rows = []
    for name, ds, options in cases:
        module = models.create(name, ds.num_classes, input_shape=ds.x_train.shape[1:], **options)
        for n in sizes:
            x, y = ds.x_train[:n], ds.y_train[:n]
            v0 = init_variables(jax.random.key(0), module, x)
            cfg = TrainConfig(batch_size=32, max_epochs=epochs, target_accuracy=1.0)
            ran = train(jax.random.key(1), module, v0, x, y, ds.num_classes, cfg).epochs

            def run_jaxal():
                r = train(jax.random.key(1), module, v0, x, y, ds.num_classes, cfg)
                jax.block_until_ready(r.variables)

            t_jaxal = median_time(run_jaxal, args.repeats) / ran
            t_host = median_time(lambda: loop_baseline(jax.random.key(1), module, v0, x, y, cfg, ran), args.repeats) / ran
            t_scan = median_time(lambda: scan_baseline(jax.random.key(1), module, v0, x, y, cfg, ran), args.repeats) / ran
            rows.append(dict(model=name, dataset=ds.name, n=n, batches_per_epoch=epoch_batches(n, 32)[0],
                             epochs=ran, jaxal_s_per_epoch=t_jaxal, scan_s_per_epoch=t_scan,
                             host_s_per_epoch=t_host))

    print(f"train_speed  (JAX {jax.__version__}, {jax.devices()[0].platform}, load avg "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; median of {args.repeats} after a compile run)")
    print(f"{'model':<6}{'data':<9}{'n':>6}{'batches':>9}{'epochs':>8}{'jaxal s/ep':>12}{'scan s/ep':>11}"
          f"{'host s/ep':>11}")
    for r in rows:
        print(f"{r['model']:<6}{r['dataset']:<9}{r['n']:>6}{r['batches_per_epoch']:>9}{r['epochs']:>8}"
              f"{r['jaxal_s_per_epoch']:>12.4f}{r['scan_s_per_epoch']:>11.4f}{r['host_s_per_epoch']:>11.4f}")
    print("jaxal s/ep includes input checks and the per-epoch inference pass (stop rule); scan and host have neither.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "train_speed", "quick": args.quick, "jax": jax.__version__,
                       "load_avg": os.getloadavg()[0], "al_run": al, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
