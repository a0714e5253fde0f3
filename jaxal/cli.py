"""The ``jaxal`` command line.

Each subcommand is one ``add_<name>(subparsers)`` function that registers its parser
and sets ``handler``; adding a subcommand means writing one such function and listing
it in ``SUBCOMMANDS``. Handlers return the process exit code. Bad input (unknown
names, impossible sizes, an existing run without ``--resume``) is reported in one line
with exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import sys
import time
from typing import Any, Callable, Sequence

__all__ = ["main", "build_parser", "SUBCOMMANDS"]

DEFAULT_STRATEGIES = "mlmoc[batch=greedy],mlmoc-seq,entropy,random"
DEFAULT_COMPARE_STRATEGIES = "random,entropy,margin"
#: The default arms on a regression set (entropy and the classification look-ahead do not apply there).
DEFAULT_REGRESSION_STRATEGIES = "lcmd,maxdet,random"


def _strategies_or_default(args: argparse.Namespace, default: str) -> str:
    """``--strategy`` as given, or the default for the data set's task (a built-in regression
    set gets :data:`DEFAULT_REGRESSION_STRATEGIES`)."""
    if args.strategy is not None:
        return args.strategy
    from jaxal import data_regression

    return DEFAULT_REGRESSION_STRATEGIES if args.dataset in data_regression.LOADERS else default
DEFAULT_PROTOCOL = "lookahead"


# --------------------------------------------------------------------------- parsing helpers


def parse_value(text: str) -> Any:
    """A Python literal when ``text`` is one (``3``, ``0.5``, ``(64, 64)``, ``True``), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_options(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{k: parse_value(v)}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


def parse_int_list(text: str, flag: str) -> tuple[int, ...]:
    """``"64,64"`` -> ``(64, 64)``."""
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated integers, got {text!r}") from None
    if not values:
        raise ValueError(f"{flag} is empty")
    return values


def parse_seeds(text: str) -> list[int]:
    """``"3"`` -> seeds ``[0, 1, 2]``; ``"0,4,7"`` -> those seeds."""
    if "," in text:
        seeds = list(parse_int_list(text, "--seeds"))
    else:
        try:
            count = int(text)
        except ValueError:
            raise ValueError(f"--seeds expects a count or a comma-separated list, got {text!r}") from None
        if count < 1:
            raise ValueError(f"--seeds must be at least 1, got {count}")
        seeds = list(range(count))
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must be distinct non-negative integers, got {text!r}")
    return seeds


# --------------------------------------------------------------------------- jaxal run


def _defaults() -> tuple[Any, Any]:
    """``(ExperimentConfig(), TrainConfig())``: the flags' defaults are the library's own."""
    from jaxal.experiment.config import ExperimentConfig

    config = ExperimentConfig()
    return config, config.train


def add_run(subparsers: Any, devices: bool = True) -> None:
    """``jaxal run``: active-learning experiments, one run per strategy and seed (``devices``:
    with the ``--mesh`` / ``--distributed`` flags, which ``jaxal compare`` does not take)."""
    d, dt = _defaults()
    from jaxal import data, models, strategies

    p = subparsers.add_parser(
        "run",
        help="run active-learning experiments (default: digits, MLP, NTK look-ahead MLMOC (greedy batch and "
        "sequential) vs entropy vs random under the look-ahead protocol)",
        description="Run active learning for each strategy and seed; write records, checkpoints and a "
        "learning-curve plot under --out.",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # the devices section's commands stay as written
    )
    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", default=d.dataset,
                   help=f"{' | '.join(data.names())} | PATH.npz (default: {d.dataset})")
    g.add_argument("--data-dir", default=None, help="where TFDS / .npz data live")
    g.add_argument("--dataset-option", action="append", metavar="KEY=VALUE", help="extra data set option (repeatable)")
    g.add_argument("--model", default=d.model, help=f"{' | '.join(models.names())} (default: {d.model})")
    g.add_argument("--widths", default=None, help="MLP hidden widths, e.g. 256,256")
    g.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                   help="model option, e.g. dropout_rate=0.2 or channels=(16,32) (repeatable)")
    g = p.add_argument_group("active learning")
    g.add_argument("--strategy", default=None,
                   help=f"strategy or comma-separated list of: {', '.join(strategies.names())}. NAME-seq is NAME's "
                   f"sequential mode (for {', '.join(strategies.sequential_names())}), NAME[key=value,...] a "
                   f"variant with its own options (default: {DEFAULT_STRATEGIES}; on a regression set "
                   f"{DEFAULT_REGRESSION_STRATEGIES})")
    g.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="strategy option, value parsed as a Python literal: KEY=VALUE goes to every listed strategy "
                   "that takes KEY, NAME.KEY=VALUE (e.g. crc.group_size=5) to strategy NAME only (repeatable)")
    g.add_argument("--crc-group-size", type=int, default=None, help=argparse.SUPPRESS)  # 0.1 flag, deprecated
    g.add_argument("--import", dest="imports", action="append", metavar="MODULE", default=[],
                   help="import MODULE first (from the current directory or the installed packages), e.g. to "
                   "register your own strategy with @jaxal.register (repeatable)")
    g.add_argument("--initial", type=int, default=d.initial_size,
                   help=f"initial labeled set size (default: {d.initial_size})")
    g.add_argument("--balanced-init", action="store_true", help="class-balanced initial set")
    g.add_argument("--budget", type=int, default=d.budget, help=f"points queried per round (default: {d.budget})")
    g.add_argument("--rounds", type=int, default=d.rounds,
                   help=f"query rounds after the initial training (default: {d.rounds})")
    g.add_argument("--candidates", type=int, default=None,
                   help="random candidate subsample per round; at least the pool means the whole pool (default: "
                   "the protocol's; standard: whole pool)")
    g.add_argument("--sequential", action="store_true", help="query one point at a time with the oracle in the loop")
    g.add_argument("--stop", action="append", metavar="RULE", default=None,
                   help="end a run after the first round where this stopping rule fires (repeatable; "
                   "jaxal.stopping): budget:B, kappa[:T[:K]], uncertainty[:T], change[:T], output_change[:F], "
                   "plateau[:T[:K]]; --rounds stays the upper limit")
    g.add_argument("--seeds", default="1", help="number of seeds (0..N-1) or a comma-separated list (default: 1)")
    g = p.add_argument_group("training")
    g.add_argument("--protocol", default=None,
                   help="how rounds retrain: lookahead (warm start, squared loss to a small residual, BatchNorm "
                   "frozen after round 0, 1000 candidates: what the NTK look-ahead models) | standard (cold start, "
                   "cross-entropy, 99%% training accuracy: the usual deep-AL protocol). Explicit flags override "
                   f"it (default: {DEFAULT_PROTOCOL}; standard with a semi-supervised --trainer)")
    g.add_argument("--start", default=None, help="cold | warm | shrink_perturb (default: the protocol's)")
    g.add_argument("--lam", type=float, default=d.lam, help=f"shrink factor for shrink_perturb (default: {d.lam})")
    g.add_argument("--sigma", type=float, default=d.sigma,
                   help=f"perturbation scale for shrink_perturb (default: {d.sigma})")
    g.add_argument("--noise", default=d.noise, help=f"shrink_perturb noise: init | gaussian (default: {d.noise})")
    g.add_argument("--loss", default=None, help="cross_entropy | squared (default: the protocol's)")
    g.add_argument("--epochs", type=int, default=None, help="max training epochs per round (default: the protocol's)")
    g.add_argument("--target-loss", type=float, default=None,
                   help="also train until the mean training loss is at most this (default: the protocol's)")
    g.add_argument("--batch-size", type=int, default=dt.batch_size, help=f"mini-batch size (default: {dt.batch_size})")
    g.add_argument("--lr", type=float, default=dt.learning_rate, help=f"learning rate (default: {dt.learning_rate:g})")
    g.add_argument("--trainer", default=d.trainer,
                   help=f"supervised | pseudo_label | mean_teacher | fixmatch (default: {d.trainer})")
    g.add_argument("--ssl-option", action="append", metavar="KEY=VALUE",
                   help="semi-supervised setting, e.g. steps=300 or threshold=0.9 (repeatable)")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None, help="output directory (default: runs/<timestamp>)")
    g.add_argument("--resume", action="store_true", help="continue the runs in --out from their checkpoints")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--compile-cache", default=None, metavar="DIR|off",
                   help="keep compiled XLA programs in DIR for later runs, or 'off' (default: $JAXAL_COMPILE_CACHE, "
                   "else ~/.cache/jaxal/xla)")
    if devices:
        add_device_flags(p)
    p.set_defaults(handler=run_command)


DEVICES_HELP = """\
Several devices or hosts. --mesh spreads each round's pool (the strategy's scoring: features, logits,
k-center / k-means++ loops) and the training (data parallel: batch rows split, parameters replicated)
over every device of this process: several GPUs, TPU cores, or forced CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=4). --distributed does the same over every device of
every process of a jax.distributed job: start the same command on every host (in any order):

  JAXAL_COORDINATOR=host0:1234 JAXAL_NUM_PROCESSES=2 JAXAL_PROCESS_ID=0 jaxal run --distributed --out /shared/r
  JAXAL_COORDINATOR=host0:1234 JAXAL_NUM_PROCESSES=2 JAXAL_PROCESS_ID=1 jaxal run --distributed --out /shared/r

(or --coordinator/--num-processes/--process-id; JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
work too; on Cloud TPU, SLURM or Open MPI plain --distributed lets JAX find them). The processes check that
they were started with the same settings and data; process 0 alone writes records, checkpoints and plots,
so --out must be on a filesystem every process shares (every process reads the checkpoint on --resume).
Evaluation on the test set, candidate subsampling, semi-supervised trainers and strategies without a mesh
path run replicated (every process computes the same on its own device). When a process dies, the others
stop: with exit code 1 as soon as a collective with it fails (on CPU at once: gloo's connections close), at
the latest when JAX's coordination service misses its heartbeat for $JAXAL_HEARTBEAT_TIMEOUT seconds
(default 60; JAX then aborts them, exit status 134). Rerun every process with --resume to continue from
the last checkpoint. Strategies with a mesh path pick the same indices on any number of devices;
data-parallel training matches one device to float rounding."""


def add_device_flags(p: argparse.ArgumentParser) -> None:
    """``--mesh``, ``--distributed`` (and its coordinator settings), ``--memory-bytes``."""
    g = p.add_argument_group("devices", DEVICES_HELP)
    g.add_argument("--mesh", action="store_true",
                   help="spread the pool and training over every device of this process")
    g.add_argument("--distributed", action="store_true",
                   help="join a jax.distributed job and spread the pool and training over every device of every "
                   "process (implies --mesh)")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="process 0's address and a free port, the same on every process (implies --distributed; "
                   "default: $JAXAL_COORDINATOR or $JAX_COORDINATOR_ADDRESS)")
    g.add_argument("--num-processes", type=int, default=None, metavar="N",
                   help="processes in the job (default: $JAXAL_NUM_PROCESSES or $JAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, default=None, metavar="K",
                   help="this process, 0..N-1; 0 writes the files (default: $JAXAL_PROCESS_ID or $JAX_PROCESS_ID)")
    g.add_argument("--memory-bytes", default=None, metavar="BYTES",
                   help="bound on what a strategy caches for the whole pool on the mesh (features, logits), e.g. "
                   "2G or 500M: a strategy that would need more stops with the size it asked for (needs --mesh or "
                   "--distributed)")


def wants_distributed(args: argparse.Namespace) -> bool:
    """``--distributed``, or one of its coordinator settings given as a flag."""
    return bool(getattr(args, "distributed", False) or any(
        getattr(args, k, None) is not None for k in ("coordinator", "num_processes", "process_id")))


def parse_bytes(text: str | None, flag: str = "--memory-bytes") -> int | None:
    """``"2G"`` -> ``2 * 2**30``; plain integers (``"1e9"`` too) are bytes; K, M, G, T
    (optionally ``KiB``, ``KB`` ...) are powers of 1024."""
    if text is None:
        return None
    t = text.strip().upper().replace("IB", "").rstrip("B")
    scale = 1
    if t and t[-1] in "KMGT":
        scale, t = 1024 ** ("KMGT".index(t[-1]) + 1), t[:-1]
    try:
        value = float(t)
    except ValueError:
        raise ValueError(f"{flag} expects a number of bytes such as 2000000000, 500M or 2G, got {text!r}") from None
    if not value * scale >= 1:
        raise ValueError(f"{flag} must be at least 1 byte, got {text!r}")
    return int(value * scale)


def device_mesh(args: argparse.Namespace) -> Any:
    """The mesh ``--mesh`` / ``--distributed`` ask for (every device of every process), or ``None``."""
    if not (getattr(args, "mesh", False) or wants_distributed(args)):
        if getattr(args, "memory_bytes", None) is not None:
            raise ValueError("--memory-bytes bounds what a strategy caches for the pool on a device mesh: add --mesh "
                             "(or --distributed)")
        return None
    from jaxal.pool import pool_mesh

    return pool_mesh()


def _options_for(strategy: str, options: dict[str, Any], sequential: bool = False) -> dict[str, Any]:
    """Options for one strategy: a plain ``key`` goes to it when it takes ``key``;
    ``strategy.key`` goes to that strategy only (and is refused later if it does not take it)."""
    from jaxal.strategies import option_names

    accepted = option_names(strategy, sequential)
    out = {k: v for k, v in options.items() if "." not in k and (accepted is None or k in accepted)}
    out.update({k.split(".", 1)[1]: v for k, v in options.items() if "." in k and k.split(".", 1)[0] == strategy})
    return out


def _check_routing(options: dict[str, Any], names: Sequence[str], sequential: bool) -> None:
    """Every ``--option`` must reach a listed strategy: a scoped one names a listed
    strategy, a plain one is taken by at least one of them."""
    from jaxal.strategies import option_names

    unused = sorted({k.split(".", 1)[0] for k in options if "." in k} - set(names))
    if unused:
        raise ValueError(f"--option names strategies not in --strategy: {', '.join(unused)}")
    for k in (k for k in options if "." not in k):
        takers = [n for n in names if (o := option_names(n, sequential)) is None or k in o]
        if not takers:
            raise ValueError(f"--option {k}=... is taken by none of the strategies {', '.join(names)}; "
                             f"scope it as NAME.{k}=... to the strategy that should get it")


def _import_modules(modules: Sequence[str]) -> None:
    """``--import``: load user modules (e.g. ones that ``@jaxal.register`` a strategy)."""
    import importlib

    if modules and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ValueError(f"--import {name}: {e}") from None


def _configs(args: argparse.Namespace) -> list:
    """One :class:`ExperimentConfig` per (strategy, seed), all validated."""
    from jaxal.experiment.config import ExperimentConfig, validate
    from jaxal.training.train import TrainConfig

    args.strategy = _strategies_or_default(args, DEFAULT_STRATEGIES)
    names = [s.strip() for s in args.strategy.split(",") if s.strip()]
    if not names:
        raise ValueError("--strategy is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"--strategy lists a name twice: {args.strategy!r}")
    from jaxal import strategies
    from jaxal.experiment import protocols

    model_options = {"widths": parse_int_list(args.widths, "--widths")} if args.widths else {}
    model_options.update(parse_options(args.model_option, "--model-option"))
    explicit_train = {"loss": args.loss, "max_epochs": args.epochs, "target_loss": args.target_loss}
    explicit_train = {k: v for k, v in explicit_train.items() if v is not None}
    train = TrainConfig(learning_rate=args.lr, batch_size=args.batch_size, **explicit_train)
    base = ExperimentConfig(
        dataset=args.dataset,
        dataset_options=parse_options(args.dataset_option, "--dataset-option"),
        data_dir=args.data_dir,
        model=args.model,
        model_options=model_options,
        strategy_options=parse_options(args.option, "--option"),
        initial_size=args.initial,
        budget=args.budget,
        rounds=args.rounds,
        start=args.start or "cold",
        lam=args.lam,
        sigma=args.sigma,
        noise=args.noise,
        train=train,
        candidates=args.candidates,
        balanced_init=args.balanced_init,
        sequential=args.sequential,
        trainer=args.trainer,
        ssl_options=parse_options(args.ssl_option, "--ssl-option"),
        stop=tuple(args.stop or ()),
    )
    explicit = [k for k, v in (("start", args.start), ("candidates", args.candidates)) if v is not None]
    protocol = args.protocol or (DEFAULT_PROTOCOL if args.trainer == "supervised" else "standard")
    base = protocols.apply(base, protocol, keep=explicit, keep_train=explicit_train)
    options = dict(base.strategy_options)
    if args.crc_group_size is not None:  # the 0.1 flag
        import warnings

        warnings.warn("--crc-group-size is now --option crc.group_size=G (the flag goes in 0.3)",
                      DeprecationWarning, stacklevel=2)
        options.setdefault("crc.group_size", args.crc_group_size)
    for name in names:
        strategies.entry(name)  # an unknown name: the registry's error lists the valid ones
    _check_routing(options, names, args.sequential)
    configs = [
        dataclasses.replace(base, strategy=s, seed=k, strategy_options=_options_for(s, options, args.sequential))
        for s in names
        for k in parse_seeds(args.seeds)
    ]
    for c in configs:
        validate(c)
    return configs


def _fmt_mean(values: list[float], digits: int = 3) -> str:
    import numpy as np

    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def results_table(results: dict[str, list[list[dict]]], title: str | None = None):
    """A rich Markdown-style table: round, labeled, accuracy (regression: RMSE) per
    strategy, train and query seconds.

    ``results`` maps strategy -> list of record lists (one per seed); cells with
    several seeds show ``mean ± std``.
    """
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from jaxal.experiment.records import ACCURACY, headline_metric

    metric = headline_metric(results)
    short = "acc" if metric == ACCURACY else metric.name.lower()

    strategies = list(results)
    table = Table(title=title, box=box.MARKDOWN, title_justify="left")
    table.add_column("round", justify="right")
    table.add_column("labeled", justify="right")
    for s in strategies:
        table.add_column(escape(f"{short} {s}"), justify="right")
    table.add_column("train s", justify="right")
    for s in strategies:
        table.add_column(escape(f"query s {s}"), justify="right")
    rounds = sorted({int(r["round"]) for runs in results.values() for recs in runs for r in recs})
    for k in rounds:
        at = {s: [r for recs in results[s] for r in recs if int(r["round"]) == k] for s in strategies}
        every = [r for rs in at.values() for r in rs]
        labeled = sorted({int(r["n_labeled"]) for r in every})
        row = [str(k), "/".join(map(str, labeled))]
        row += [_fmt_mean([r[metric.key] for r in at[s]]) for s in strategies]
        row.append(_fmt_mean([r["train_seconds"] for r in every], 2).split(" ±")[0])
        row += [_fmt_mean([r["query_seconds"] for r in at[s]], 2).split(" ±")[0] if k > 0 else "-" for s in strategies]
        table.add_row(*row)
    return table


def run_command(args: argparse.Namespace) -> int:
    """Run every (strategy, seed), print the per-round table, draw the learning curves."""
    from rich.console import Console
    from rich.markup import escape

    from jaxal import distributed
    from jaxal.experiment.grid import label_of
    from jaxal.experiment.loop import headline, run
    from jaxal.experiment.plots import plot_learning_curves
    from jaxal.experiment.protocols import describe
    from jaxal.experiment.records import headline_metric

    primary = distributed.is_primary()
    console = Console(soft_wrap=True, highlight=False, quiet=not primary)  # process 0 speaks for the job
    # With several processes: an error in any of them stops all of them here, and they
    # must agree on the runs before any loads data or trains.
    with distributed.together("the command line"):
        memory_bytes = parse_bytes(args.memory_bytes)
        mesh = device_mesh(args)
        if args.resume and not args.out:
            raise ValueError("--resume needs --out: the directory of the run to continue")
        configs = compare_configs(args)
    distributed.agree("the command line", {"runs": {f"{label_of(c)}/seed{c.seed}": c.to_dict() for c in configs},
                                           "out": args.out, "resume": bool(args.resume), "memory_bytes": memory_bytes,
                                           "mesh devices": None if mesh is None else int(mesh.size)})
    out = args.out or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    if args.out is None:  # process 0's timestamp: the processes may have started seconds apart
        out = distributed.broadcast("out", out)
    datasets: dict = {}  # each data set loaded once for all runs
    with distributed.together("preflight"):
        notes = preflight_all(configs, out, args.resume, datasets)
    args.out_resolved = out  # for the interrupt message
    seeds = sorted({c.seed for c in configs})
    c0 = configs[0]
    console.print(
        f"jaxal run: {c0.dataset}, {c0.model}, initial {c0.initial_size}, budget {c0.budget} x {c0.rounds} "
        f"rounds, seeds {seeds}\nprotocol: {c0.protocol} ({describe(c0.protocol)})\noutput: {out}",
        highlight=False,
    )
    if mesh is not None:
        console.print(f"devices: a mesh of {mesh.size} {mesh.devices.flat[0].platform} devices over "
                      f"{distributed.process_count()} process(es)"
                      + (f", strategy cache bound {memory_bytes:,} bytes" if memory_bytes else ""), highlight=False)
    for note in notes:
        console.print(f"note: {note}", markup=False)
    show_progress = not args.quiet and console.is_terminal and primary
    results: dict[str, list[list[dict]]] = {}
    dirs: dict[str, list[str]] = {}
    for c in configs:
        label = label_of(c)
        run_dir = os.path.join(out, label, f"seed{c.seed}")
        t0 = time.perf_counter()
        records = run(c, run_dir, resume=args.resume, progress=show_progress, datasets=datasets, mesh=mesh,
                      memory_bytes=memory_bytes)
        results.setdefault(label, []).append(records)
        dirs.setdefault(label, []).append(run_dir)
        last = records[-1] if records else None
        if last is not None:
            console.print(
                f"  {escape(label):>16} seed {c.seed}: {len(records)} rounds, {last['n_labeled']} labels"
                + (f" (stopped by {last['stopped_by']})" if last.get("stopped_by") else "") + ", "
                f"test {headline(last)}  ({time.perf_counter() - t0:.1f} s, "
                f"{sum(r.get('train_compile_seconds', 0.0) + r.get('query_compile_seconds', 0.0) for r in records):.1f} s"
                " of it compiling)",
                highlight=False,
            )
    if not primary:
        return 0  # process 0 prints the table and draws the plot
    metric = headline_metric(results)
    table = results_table(results, title=f"test {metric.name} per round ({c0.dataset}, {c0.model})")
    # Never wrap the table: it is meant to be pasted into a lab notebook as Markdown.
    needed = sum(max(len(str(col.header)), 14) + 3 for col in table.columns) + 1
    Console(width=max(console.width, needed), highlight=False).print("\n", table)
    plot = plot_learning_curves(dirs, os.path.join(out, "learning_curve.png"), metric=metric.key)
    console.print(f"plot:    {plot}", highlight=False)
    console.print(f"records: {os.path.join(out, '<strategy>', 'seed<k>', 'records.jsonl')}", highlight=False)
    return 0


def preflight_all(configs: Sequence[Any], out: str, resume: bool, datasets: dict,
                  must_exist: bool = True) -> list[str]:
    """Check every run before the first one trains (:func:`jaxal.experiment.loop.preflight`)
    and return notes worth printing: what the data set holds, a candidate subsample
    that covers the whole pool, a resume that changes the number of rounds."""
    import json

    from jaxal.experiment.grid import label_of
    from jaxal.experiment.loop import CONFIG_FILE, preflight

    if resume and must_exist and not os.path.isdir(out):
        raise ValueError(f"--resume: {out} does not exist, so there is nothing to resume; drop --resume to start "
                         "a new run there")
    notes: list[str] = []
    for c in configs:
        ds, _ = preflight(c, datasets)
        pool = int(ds.x_train.shape[0]) - c.initial_size
        found = [f"data set {c.dataset}: {ds.x_train.shape[0]} training and {ds.x_test.shape[0]} test examples of "
                 f"shape {tuple(ds.x_train.shape[1:])}, {ds.num_classes} classes"]
        if c.candidates is not None and c.candidates >= pool:
            found.append(f"--candidates {c.candidates} is at least the pool ({pool} unlabeled examples): every round "
                         "scores the whole pool")
        stored = os.path.join(out, label_of(c), f"seed{c.seed}", CONFIG_FILE)
        if resume and os.path.exists(stored):
            with open(stored, encoding="utf-8") as f:
                before = json.load(f).get("rounds")
            if before is not None and before != c.rounds:
                found.append(f"{os.path.dirname(stored)} was started with --rounds {before}; it now runs to {c.rounds} "
                             "(its config.json is updated)")
        notes += [n for n in found if n not in notes]
    return notes


# --------------------------------------------------------------------------- jaxal compare


def _run_parser() -> argparse.ArgumentParser:
    """A stand-alone copy of the ``jaxal run`` parser, used as the parent of ``compare``
    so that every run flag (present and future) is a compare flag too."""
    holder = argparse.ArgumentParser(add_help=False)
    sub = holder.add_subparsers()
    add_run(sub, devices=False)
    return sub.choices["run"]


def add_compare(subparsers: Any) -> None:
    """``jaxal compare``: the strategy x seed grid, resumable, then the papers' evaluation."""
    p = subparsers.add_parser(
        "compare",
        parents=[_run_parser()],
        conflict_handler="resolve",
        help="compare strategies over seeds: learning curves with CIs, AUBC, penalty matrix",
        description="Run every strategy x seed (same initial set and initial model per seed), resuming "
        "finished and interrupted runs, then write curves.png, diff_to_random.png, aubc.csv, penalty.png, "
        "penalty.csv and summary.md into --out. Takes every `jaxal run` flag.",
    )
    p.add_argument("--strategies", "--strategy", dest="strategy", default=None,
                   help="comma-separated arms; NAME-seq runs NAME in its sequential mode and NAME[key=value,...] "
                   "is a variant with its own options, e.g. mlmoc,mlmoc[batch=greedy],mlmoc-seq "
                   f"(default: {DEFAULT_COMPARE_STRATEGIES}; on a regression set {DEFAULT_REGRESSION_STRATEGIES})")
    p.add_argument("--reference", default="random", help="baseline for differences and p-values (default: random)")
    p.add_argument("--title", default=None, help="title of the plots and summary")
    p.add_argument("--resume", action="store_true", help="accepted for symmetry with `jaxal run`: compare always "
                   "resumes (finished runs are skipped, interrupted ones continue)")
    p.set_defaults(handler=compare_command)


def parse_arm(text: str) -> tuple[str, bool, dict[str, Any]]:
    """One grid arm: ``NAME``, ``NAME-seq`` (sequential mode) or a variant
    ``NAME[key=value,...]`` / ``NAME-seq[key=value,...]`` (options for that arm only).

    Returns ``(strategy, sequential, options)``. Values are Python literals as in
    ``--option``; a value holding commas must be bracketed, e.g. ``widths=(64,64)``.
    """
    from jaxal import strategies
    from jaxal.experiment.records import SEQUENTIAL_SUFFIX

    name, options = text.strip(), {}
    if name.endswith("]") and "[" in name:
        name, _, inner = name[:-1].partition("[")
        options = parse_options(split_arms(inner), f"--strategies {text!r}")
    sequential = name not in set(strategies.names()) and name.endswith(SEQUENTIAL_SUFFIX)
    if sequential:
        name = name[: -len(SEQUENTIAL_SUFFIX)]
    return name, sequential, options


def split_arms(text: str) -> list[str]:
    """Split on commas outside brackets: ``"a=1,b=(2,3)"`` -> ``["a=1", "b=(2,3)"]``."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p for p in parts + [cur] if p.strip()]


def compare_configs(args: argparse.Namespace) -> list:
    """The grid's configs: `jaxal run`'s (:func:`_configs`) per base strategy, with the
    ``-seq`` arms switched to their sequential mode and each ``NAME[k=v]`` variant's
    options added; an arm that is not a plain strategy is labelled by its text."""
    from jaxal.experiment.config import validate

    args.strategy = _strategies_or_default(args, DEFAULT_COMPARE_STRATEGIES)
    names = split_arms(args.strategy)
    names = [s.strip() for s in names if s.strip()]
    if not names:
        raise ValueError("--strategies is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"--strategies lists an arm twice: {args.strategy!r}")
    arms = [(text, *parse_arm(text)) for text in names]
    base = argparse.Namespace(**vars(args))
    base.strategy = ",".join(dict.fromkeys(name for _, name, _, _ in arms))
    base.sequential = False
    by_name: dict[str, list] = {}
    for c in _configs(base):
        by_name.setdefault(c.strategy, []).append(c)
    configs = []
    for text, name, seq, options in arms:
        label = text if options else None
        for c in by_name[name]:
            c = dataclasses.replace(c, sequential=seq or args.sequential, label=label,
                                    strategy_options={**dict(c.strategy_options), **options})
            configs.append(validate(c))
    return configs


def compare_command(args: argparse.Namespace) -> int:
    """Run the grid with one progress bar, write and print the evaluation."""
    from rich.console import Console

    from jaxal.experiment.grid import compare, plan, run_status

    console = Console(soft_wrap=True, highlight=False)
    configs = compare_configs(args)
    out = args.out or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    datasets: dict = {}  # loaded once: for these checks and for the runs
    notes = preflight_all(configs, out, True, datasets, must_exist=False)  # compare always resumes
    args.out_resolved = out
    cells = plan(configs, out)
    states = [run_status(c) for c in cells]
    c0 = configs[0]
    console.print(
        f"jaxal compare: {c0.dataset}, {c0.model}, {len({c.label for c in cells})} strategies x "
        f"{len({c.seed for c in cells})} seeds = {len(cells)} runs ({states.count('done')} done, "
        f"{states.count('partial')} to resume); initial {c0.initial_size}, budget {c0.budget} x {c0.rounds} rounds, "
        f"protocol {c0.protocol}\noutput: {out}", markup=False
    )
    for note in notes:
        console.print(f"note: {note}", markup=False)
    t0 = time.perf_counter()
    _, report = compare(configs, out, reference=args.reference, progress=not args.quiet and console.is_terminal,
                        title=args.title, datasets=datasets)
    console.print(f"grid finished in {time.perf_counter() - t0:.1f} s")
    _print_report(console, report)
    return 0


def _print_report(console: Any, report: Any) -> None:
    from jaxal.experiment.report import aubc_markdown

    table = aubc_markdown(report.rows, report.penalty, metric=report.meta["metric"])
    Console = type(console)
    Console(width=max(console.width, max(len(line) for line in table.splitlines()) + 1), highlight=False).print(
        "\n" + table + "\n", markup=False
    )
    if report.stops:
        from jaxal import stopping

        console.print("where each stopping rule would have stopped (means over seeds):")
        console.print(stopping.markdown(report.stops) + "\n", markup=False)
    for note in report.notes:
        console.print(f"note: {note}")
    for name, path in report.files.items():
        console.print(f"{name + ':':<20} {path}")


# --------------------------------------------------------------------------- jaxal plot


def add_plot(subparsers: Any) -> None:
    """``jaxal plot``: the compare evaluation from existing run directories."""
    p = subparsers.add_parser(
        "plot",
        help="evaluate existing runs: curves, differences to random, AUBC, penalty matrix, summary",
        description="Read run directories (a `jaxal compare` / `jaxal run` output, or single runs) and write "
        "the comparison's evaluation files.",
    )
    p.add_argument("dirs", nargs="+", metavar="RUN_DIR", help="run or comparison directories")
    p.add_argument("--out", default=None, help="where to write the files (default: the first RUN_DIR)")
    p.add_argument("--reference", default="random", help="baseline for differences and p-values (default: random)")
    p.add_argument("--title", default=None, help="title of the plots and summary")
    p.set_defaults(handler=plot_command)


def plot_command(args: argparse.Namespace) -> int:
    """Write and print the evaluation of existing runs."""
    from rich.console import Console

    from jaxal.experiment.report import write_report

    console = Console(soft_wrap=True, highlight=False)
    report = write_report(args.dirs, args.out or args.dirs[0], reference=args.reference, title=args.title)
    _print_report(console, report)
    return 0


# --------------------------------------------------------------------------- jaxal session


def add_session(subparsers: Any) -> None:
    """``jaxal session init|query|teach|fit|status DIR``: label your own data
    (:mod:`jaxal.labeling.session`); the handlers are in :mod:`jaxal.labeling.commands`."""
    d, dt = _defaults()
    p = subparsers.add_parser(
        "session", help="label your own data: a resumable labeling session in a directory",
        description="Active learning with a real annotator. `init` creates a session from an unlabeled pool "
        "(.npz, image folder, tfds:NAME[:SPLIT]); `query` says which rows to label (CSV or Label Studio tasks); "
        "`teach` reads the answers (CSV or a Label Studio JSON export); `status` shows labels, accuracy and the "
        "stopping signals. Everything is stored in DIR, so a session can stop and resume any time.")
    sub = p.add_subparsers(dest="session_command", metavar="ACTION")
    init = sub.add_parser("init", help="create a session from an unlabeled pool")
    init.add_argument("dir", metavar="DIR")
    init.add_argument("--pool", required=True, help="a .npz (array x, optional y with -1 = unknown, classes), an image "
                      "folder (PNG/JPEG), or tfds:NAME[:SPLIT] (labels hidden)")
    init.add_argument("--classes", default=None, help="class names, comma-separated (e.g. cat,dog)")
    init.add_argument("--num-classes", type=int, default=None, help="number of classes (when no names are given)")
    init.add_argument("--heldout", default=None, metavar="NPZ", help="labeled .npz (x, y) to measure accuracy on")
    init.add_argument("--model", default=d.model, help=f"model (default: {d.model})")
    init.add_argument("--widths", default=None, help="MLP hidden widths, e.g. 256,256")
    init.add_argument("--model-option", action="append", metavar="KEY=VALUE", help="extra model option (repeatable)")
    init.add_argument("--strategy", default=d.strategy, help=f"acquisition strategy (default: {d.strategy})")
    init.add_argument("--option", action="append", metavar="KEY=VALUE", help="strategy option (repeatable)")
    init.add_argument("--initial", type=int, default=d.initial_size,
                      help=f"size of the first (random) query (default: {d.initial_size})")
    init.add_argument("--budget", type=int, default=d.budget, help=f"rows per later query (default: {d.budget})")
    init.add_argument("--seed", type=int, default=0, help="seed of every draw (default: 0)")
    init.add_argument("--protocol", default=None, help="training protocol (default: lookahead for a look-ahead "
                      "strategy, else standard)")
    init.add_argument("--start", default=None, help="cold | warm | shrink_perturb (default: the protocol's)")
    init.add_argument("--loss", default=None, help="cross_entropy | squared (default: the protocol's)")
    init.add_argument("--epochs", type=int, default=None, help="max training epochs per fit")
    init.add_argument("--lr", type=float, default=dt.learning_rate, help=f"learning rate (default: {dt.learning_rate:g})")
    init.add_argument("--batch-size", type=int, default=dt.batch_size, help=f"mini-batch size (default: {dt.batch_size})")
    init.add_argument("--candidates", type=int, default=None, help="random candidate subsample per query")
    init.add_argument("--trainer", default=d.trainer, help=f"supervised or a semi-supervised trainer (default: {d.trainer})")
    init.add_argument("--instant", action="store_true", help="instant mode: with a look-ahead strategy, each answer "
                      "updates the NTK state and the next query needs no retraining")
    init.add_argument("--retrain-every", type=int, default=None, metavar="K", help="instant mode: retrain every K answers")
    init.add_argument("--stop", action="append", metavar="RULE", default=None,
                      help="stopping rule `status` reports on (repeatable; e.g. kappa:0.99:3)")
    init.add_argument("--image-size", default=None, metavar="H,W", help="resize every image (needed for mixed sizes)")
    init.add_argument("--grayscale", action="store_true", help="read images as grayscale")
    init.add_argument("--labels-from-subfolders", action="store_true",
                      help="an image folder's first-level subfolders name the classes of the images in them")
    init.add_argument("--split", default=None, help="TFDS split (default: train)")
    init.add_argument("--data-dir", default=None, help="TFDS data directory")
    query = sub.add_parser("query", help="the rows to label next (trains on new answers first)")
    query.add_argument("dir", metavar="DIR")
    query.add_argument("--budget", type=int, default=None, help="rows to ask for (default: the session's)")
    query.add_argument("--to", default=None, metavar="FILE", help="write FILE.csv (fill its label column) or "
                       "FILE.json (Label Studio tasks); default: print the rows")
    query.add_argument("--url-prefix", default=None, help="Label Studio tasks: prefix of the image URLs")
    teach = sub.add_parser("teach", help="store answers from a CSV or a Label Studio JSON export")
    teach.add_argument("dir", metavar="DIR")
    teach.add_argument("--from", dest="source", required=True, metavar="FILE", help="index,label / file,label CSV, "
                       "or Label Studio's JSON / JSON-MIN export")
    teach.add_argument("--annotator", default=None, help="who answered (when the file does not say)")
    teach.add_argument("--fit", action="store_true", help="retrain on the answers now")
    fit = sub.add_parser("fit", help="retrain on every answer now")
    fit.add_argument("dir", metavar="DIR")
    status = sub.add_parser("status", help="labels, class counts, accuracy, stopping signals and a plot")
    status.add_argument("dir", metavar="DIR")
    status.add_argument("--stop", action="append", metavar="RULE", default=None, help="rules to check (default: the "
                        "session's and kappa, uncertainty, change, output_change, plateau)")
    status.add_argument("--plot", default=None, metavar="PNG", help="where to draw (default: DIR/status.png)")
    status.add_argument("--json", action="store_true", help="also print the status as JSON")
    p.set_defaults(handler=session_command)


def session_command(args: argparse.Namespace) -> int:
    """Run one ``jaxal session`` action."""
    from jaxal.labeling import commands

    if args.session_command is None:
        raise ValueError("say what to do: jaxal session init|query|teach|fit|status DIR (see jaxal session --help)")
    if args.session_command == "init":
        args.model_options = {"widths": parse_int_list(args.widths, "--widths")} if args.widths else {}
        args.model_options.update(parse_options(args.model_option, "--model-option"))
        args.strategy_options = parse_options(args.option, "--option")
        args.image_size = parse_int_list(args.image_size, "--image-size") if args.image_size else None
    handler = {"init": commands.init_command, "query": commands.query_command, "teach": commands.teach_command,
               "fit": commands.fit_command, "status": commands.status_command}[args.session_command]
    return handler(args)


# --------------------------------------------------------------------------- entry point

SUBCOMMANDS: list[Callable[[Any], None]] = [add_run]
SUBCOMMANDS += [add_compare, add_plot, add_session]


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxal`` parser with every subcommand in ``SUBCOMMANDS``."""
    parser = argparse.ArgumentParser(prog="jaxal", description="JAX-native deep active learning.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``jaxal`` command line; returns the exit code (2 for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        if wants_distributed(args):  # before anything creates JAX's devices
            from jaxal import distributed

            distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        _import_modules(getattr(args, "imports", None) or [])
        if hasattr(args, "compile_cache"):
            from jaxal.experiment import compile_cache

            directory = compile_cache.resolve(args.compile_cache)
            if directory is not None:
                compile_cache.enable(directory)
        from jaxal import interrupt

        with interrupt.deferred():  # Ctrl-C acts at the next safe point, never inside JAX
            interrupt.check()  # one that arrived while JAX loaded (the program defers it from its first line)
            code = int(args.handler(args) or 0)
            interrupt.check()  # one that arrived after the last safe point still counts
            return code
    except (ValueError, ImportError) as e:  # bad input or a missing optional extra: one clear line
        # (with several processes, raised on every one: a config or data mismatch, a run
        # directory process 0 cannot use, see jaxal.distributed.together)
        print(f"jaxal {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out_resolved", None)
        if out is None or not os.path.isdir(out):
            print(f"\njaxal {args.command}: interrupted before any run started", file=sys.stderr)
        else:
            print(f"\njaxal {args.command}: interrupted; rerun the same command with --resume --out {out}",
                  file=sys.stderr)
        _leave_job(130)
        return 130
    except Exception as e:  # with several processes, nothing may wait for the others
        from jaxal import distributed

        joined = distributed.joined()
        if isinstance(e, distributed.DistributedError):
            print(f"jaxal {args.command}: error: {e}", file=sys.stderr)  # processes that cannot work together
        elif joined and type(e).__name__ in ("JaxRuntimeError", "XlaRuntimeError"):
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            out = getattr(args, "out_resolved", None) or "DIR"
            print(f"jaxal {args.command}: error: process {distributed.process_index()} of "
                  f"{distributed.process_count()} stopped: an operation with the other processes failed ({first}); "
                  "another process has probably died (see its output). Rerun every process with --resume --out "
                  f"{out} to continue from the last checkpoint", file=sys.stderr)
        elif joined:
            import traceback

            traceback.print_exc()
        else:
            raise
        _leave_job(1)
        return 1


def _leave_job(code: int) -> None:
    """With several processes, a process that fails alone exits at once: a normal exit
    would wait in JAX's shutdown barrier for processes that may themselves be waiting
    for it inside a collective (until a timeout kills them all); exiting closes its
    connections, so theirs fail now too."""
    from jaxal import distributed

    if distributed.joined():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":  # pragma: no cover - the program is jaxal.__main__ (python -m jaxal)
    sys.exit(main())
