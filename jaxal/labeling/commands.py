"""``jaxal session ...``: the labeling session on the command line (handlers).

The parsers live in :mod:`jaxal.cli` (``add_session``), which imports this module only
when a ``session`` command runs. Every handler opens the session, does one thing,
prints what happened and closes it; errors are ``ValueError`` subclasses that the
command line prints in one line (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from rich.console import Console

from jaxal.experiment import protocols
from jaxal.experiment.config import ExperimentConfig
from jaxal.experiment.plots import plot_signals
from jaxal.labeling import exchange
from jaxal.labeling.session import INSTANT_STRATEGIES, Session
from jaxal.training.train import TrainConfig

__all__ = ["init_command", "query_command", "teach_command", "fit_command", "status_command", "config_from_args"]

LABEL_CONFIG_FILE = "label_studio_config.xml"


def _console() -> Console:
    return Console(soft_wrap=True, highlight=False)


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The session's settings from ``jaxal session init``'s flags (a protocol's defaults
    for what is not given: ``lookahead`` for a look-ahead strategy, else ``standard``).
    The command line has parsed ``--widths``, ``--model-option`` and ``--option`` into
    ``args.model_options`` and ``args.strategy_options``."""
    model_options = dict(args.model_options)
    explicit_train = {k: v for k, v in {"loss": args.loss, "max_epochs": args.epochs}.items() if v is not None}
    base = ExperimentConfig(
        model=args.model, model_options=model_options, strategy=args.strategy,
        strategy_options=dict(args.strategy_options), initial_size=args.initial, budget=args.budget,
        seed=args.seed, start=args.start or "cold", candidates=args.candidates, trainer=args.trainer,
        train=TrainConfig(learning_rate=args.lr, batch_size=args.batch_size, **explicit_train),
        stop=tuple(args.stop or ()),
    )
    protocol = args.protocol or ("lookahead" if args.strategy in INSTANT_STRATEGIES else "standard")
    keep = [k for k, v in (("start", args.start), ("candidates", args.candidates)) if v is not None]
    return protocols.apply(base, protocol, keep=keep, keep_train=explicit_train)


def init_command(args: argparse.Namespace) -> int:
    """``jaxal session init DIR --pool SRC``: create the session."""
    pool_options: dict[str, Any] = {}
    if args.image_size:
        pool_options["size"] = tuple(args.image_size)
    if args.grayscale:
        pool_options["grayscale"] = True
    if args.labels_from_subfolders:
        pool_options["labels_from_subfolders"] = True
    if args.split or args.data_dir:
        pool_options.update({k: v for k, v in (("split", args.split), ("data_dir", args.data_dir)) if v})
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    with Session.create(args.dir, args.pool, num_classes=args.num_classes, classes=classes,
                        config=config_from_args(args), heldout=args.heldout, instant=args.instant,
                        retrain_every=args.retrain_every, **pool_options) as s:
        if s.classes and s.files is not None:
            with open(os.path.join(s.directory, LABEL_CONFIG_FILE), "w", encoding="utf-8") as f:
                f.write(exchange.label_studio_config(s.classes) + "\n")
        c = s.config
        console = _console()
        console.print(f"session {s.directory}: {s.n} rows of shape {tuple(s.x.shape[1:])} from {s.source}, "
                      f"{s.num_classes} classes" + (f" ({', '.join(s.classes)})" if s.classes else "")
                      + (f", {len(s.labels)} labels already known" if s.labels else ""))
        console.print(f"model {c.model}, strategy {c.strategy}" + (" (instant mode)" if s.instant else "")
                      + f", protocol {c.protocol}, seed {c.seed}; first query {c.initial_size} rows, then {c.budget}")
        if s.classes and s.files is not None:
            console.print(f"Label Studio labeling interface: {os.path.join(s.directory, LABEL_CONFIG_FILE)}")
        console.print(f"next: jaxal session query {s.directory} --to batch.csv")
    return 0


def query_command(args: argparse.Namespace) -> int:
    """``jaxal session query DIR [--budget N] [--to FILE]``: the rows to label next."""
    with Session.open(args.dir) as s:
        before = s.round
        idx = s.query(args.budget)
        console = _console()
        if s.round != before:
            last = s.history[-1]
            acc = last.get("test_accuracy")
            console.print(f"trained on {last['n_labeled']} labels first (round {last['round']}"
                          + (f", held-out accuracy {acc:.3f}" if acc is not None else "") + ")")
        files = list(s.files) if s.files is not None else None
        if args.to:
            try:
                if args.to.lower().endswith(".json"):
                    exchange.write_label_studio_tasks(args.to, idx, files=files, url_prefix=args.url_prefix)
                    what = "Label Studio tasks"
                elif args.to.lower().endswith(".csv"):
                    exchange.write_query_csv(args.to, idx, files=files)
                    what = "a CSV: fill in its label column"
                else:
                    raise ValueError(f"--to {args.to}: write a .csv (annotators fill its label column) or a .json "
                                     "(Label Studio tasks)")
            except OSError as e:
                raise ValueError(f"--to {args.to}: {e.strerror or e} (the query is recorded: run the same command "
                                 "again to get the same rows)") from None
            console.print(f"{len(idx)} rows to label -> {args.to} ({what}); then: jaxal session teach {s.directory} "
                          f"--from {args.to if args.to.lower().endswith('.csv') else 'EXPORT.json'}")
        else:
            for i in idx:
                console.print(f"{int(i)}" + (f"\t{files[int(i)]}" if files else ""))
    return 0


def teach_command(args: argparse.Namespace) -> int:
    """``jaxal session teach DIR --from FILE``: store the answers of a CSV or a Label Studio export."""
    with Session.open(args.dir) as s:
        files = list(s.files) if s.files is not None else None
        try:
            answers = exchange.read_answers(args.source, num_classes=s.num_classes, classes=s.classes, files=files,
                                            **({"annotator": args.annotator} if args.source.lower().endswith(".csv")
                                               else {}))
        except OSError as e:
            raise ValueError(f"--from {args.source}: {e.strerror or e}") from None
        if not answers:
            raise ValueError(f"--from {args.source} holds no answers yet (empty label cells are skipped)")
        before = s.round
        # one call: every answer is checked before any is stored
        new = s.teach([a.index for a in answers], [a.label for a in answers],
                      annotator=[a.annotator or args.annotator for a in answers], time=[a.time for a in answers])
        console = _console()
        console.print(f"{new} new labels ({len(answers) - new} already known), {len(s.labels)} in all, "
                      f"{len(s.pending)} not trained on yet")
        if s.round != before:
            console.print(f"retrained (every {s.retrain_every} answers in instant mode): round {s.round}")
        if args.fit and len(s.pending):
            record = s.fit()
            acc = record.get("test_accuracy")
            console.print(f"trained round {record['round']} on {record['n_labeled']} labels"
                          + (f": held-out accuracy {acc:.3f}" if acc is not None else ""))
    return 0


def fit_command(args: argparse.Namespace) -> int:
    """``jaxal session fit DIR``: retrain on every answer now."""
    with Session.open(args.dir) as s:
        record = s.fit()
        acc = record.get("test_accuracy")
        _console().print(f"trained round {record['round']} on {record['n_labeled']} labels"
                         + (f": held-out accuracy {acc:.3f}" if acc is not None else ""))
    return 0


def status_command(args: argparse.Namespace) -> int:
    """``jaxal session status DIR``: labels, classes, accuracy, stopping signals, a plot."""
    with Session.open(args.dir) as s:
        rules = list(args.stop) if args.stop else None
        st = s.status(rules)
        console = _console()
        console.print(f"session {s.directory}: {st['labels']} of {st['pool']} rows labeled ({st['pending']} not "
                      f"trained on yet, {st['not_queried']} answered without being queried), {st['fits']} fits, "
                      f"strategy {st['strategy']}" + (" (instant mode)" if st["instant"] else ""))
        console.print("class counts: " + ", ".join(f"{k} {v}" for k, v in st["class_counts"].items()))
        if st["heldout_accuracy"] is not None:
            console.print(f"held-out accuracy: {st['heldout_accuracy']:.3f}")
        if st["signals"]:
            console.print("signals: " + ", ".join(f"{k} {v:.4g}" for k, v in st["signals"].items() if v is not None))
        for rule, verdict in st["stopping"].items():
            console.print(f"  {rule:<22} {verdict}")
        if s.history:
            path = plot_signals(s.history, args.plot or os.path.join(s.directory, "status.png"),
                                title=f"labeling session {os.path.basename(os.path.abspath(s.directory))}",
                                stops=st["stopped_at"])
            console.print(f"plot: {path}")
        if args.json:
            console.print(json.dumps(st, indent=2), markup=False)
    return 0
