"""The active-learning loop: rounds of train -> query -> oracle, with records and resume.

Data flow (one way)::

    data set -> pool -> train -> model snapshot -> strategy -> indices -> oracle -> pool

Round 0 trains on the initial labeled set (no query). Each round ``r >= 1`` snapshots
the model trained in round ``r - 1``, asks the strategy for ``budget`` pool points
(among a random candidate subsample when ``candidates`` is set), reveals their held
labels, appends them to the labeled set (acquisition order: strategies rely on it),
restarts the parameters (cold / warm / shrink-and-perturb), retrains and evaluates.

Randomness: every key is ``fold_in`` of the seed's root key with a fixed tag and the
round number. The initial set and the initial model depend on the seed only (not on
the strategy), so strategies compared at one seed start from the same point, and a
resumed run draws exactly the keys an uninterrupted one would.

Files in ``out_dir``: ``config.json`` (written once), ``records.jsonl`` (one JSON
record per round), ``checkpoint.msgpack`` (see :mod:`jaxal.experiment.checkpoint`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import jax
import numpy as np

from jaxal import data as data_lib
from jaxal import models as models_lib
from jaxal import strategies
from jaxal.experiment import checkpoint as ckpt
from jaxal.experiment.protocols import PROTOCOLS
from jaxal.strategies.base import as_query, check_options, make_context, sequential_mode, sequential_names
from jaxal.training import augment, ssl
from jaxal.training.train import TrainConfig, evaluate, init_variables, restart, scale_head, train
from jaxal.validation import check_budget, check_choice

__all__ = ["ExperimentConfig", "RunExistsError", "run", "validate", "sequential_strategies"]

CONFIG_FILE = "config.json"
RECORDS_FILE = "records.jsonl"
CHECKPOINT_FILE = "checkpoint.msgpack"
START_MODES = ("cold", "warm", "shrink_perturb")
NOISES = ("init", "gaussian")

# Config keys that do not change what a run computes: a resume may change them
# (``rounds`` extends or shortens a run; ``data_dir`` only says where files are;
# ``label`` only names the arm in comparisons).
RESUMABLE_KEYS = ("rounds", "data_dir", "label")

# Tags for fold_in: one stream per purpose, independent of the strategy.
_TAG_INITIAL_SET, _TAG_INIT_MODEL, _TAG_ROUND = 1, 2, 3


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines one active-learning run (one strategy, one seed).

    Attributes:
      dataset: data set name (:func:`jaxal.data.names`) or a path to a ``.npz`` file.
      dataset_options: extra keyword arguments for :func:`jaxal.data.load`.
      data_dir: the TFDS data directory (not part of the fingerprint).
      model: model name (:func:`jaxal.models.names`).
      model_options: extra keyword arguments for :func:`jaxal.models.create`
        (e.g. ``{"widths": (64, 64)}``).
      strategy: strategy name (:func:`jaxal.strategies.names`).
      strategy_options: keyword arguments passed to the strategy every round.
      initial_size: size of the initial labeled set.
      budget: points queried per round.
      rounds: query rounds after the initial training (records: ``rounds + 1``).
      seed: root seed for the data split, initial set, init and every round's keys.
      start: parameters before each retraining: ``cold`` (fresh init), ``warm``
        (previous params), ``shrink_perturb`` (``lam * prev + sigma * noise``).
      lam, sigma, noise: shrink-and-perturb settings (see :func:`jaxal.training.train.restart`).
      train: the :class:`~jaxal.training.train.TrainConfig` used every round.
      candidates: size of the random candidate subsample per round (``None``: the
        whole unlabeled pool).
      balanced_init: draw the initial set class-balanced.
      sequential: query one point at a time with the oracle in the loop, through the
        strategy's ``sequential`` attribute (no retraining between the picks).
      trainer: ``supervised`` (labeled set only, the 99% stop rule) or a
        semi-supervised trainer from :func:`jaxal.training.ssl.trainers` (``pseudo_label``,
        ``mean_teacher``, ``fixmatch``) that also learns from the unlabeled pool.
      ssl_options: keyword arguments of :class:`jaxal.training.ssl.SSLConfig` (``steps``,
        ``threshold``, ...); augmentations come from
        :func:`jaxal.training.augment.for_dataset` for the data set.
      retrain_inference_mode: rounds after the first train with
        ``TrainConfig.inference_mode`` (BatchNorm statistics frozen, dropout off).
      head_init_scale: multiply the freshly initialised ``head`` parameters by this
        (round 0 and every cold start): ``0`` starts the network at ``f₀ ≡ 0``, which
        the squared loss needs (see :func:`jaxal.training.train.scale_head`).
      protocol: the name of the :mod:`jaxal.experiment.protocols` protocol these settings came
        from (``standard`` or ``lookahead``); a label, see :func:`jaxal.experiment.protocols.apply`.
      label: the arm's name in comparisons (default: the strategy, ``-seq`` when
        sequential); e.g. ``mlmoc[batch=greedy]`` for a variant. Not part of the
        fingerprint.
    """

    dataset: str = "digits"
    dataset_options: Mapping[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    model: str = "mlp"
    model_options: Mapping[str, Any] = field(default_factory=dict)
    strategy: str = "entropy"
    strategy_options: Mapping[str, Any] = field(default_factory=dict)
    initial_size: int = 20
    budget: int = 20
    rounds: int = 5
    seed: int = 0
    start: str = "cold"
    lam: float = 0.5
    sigma: float = 0.01
    noise: str = "init"
    train: TrainConfig = field(default_factory=TrainConfig)
    candidates: int | None = None
    balanced_init: bool = False
    sequential: bool = False
    trainer: str = "supervised"
    ssl_options: Mapping[str, Any] = field(default_factory=dict)
    retrain_inference_mode: bool = False
    head_init_scale: float = 1.0
    protocol: str = "standard"
    label: str | None = None

    def to_dict(self) -> dict:
        """A JSON-able dict (tuples become lists)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["train"] = _train_to_dict(self.train)
        for k in ("dataset_options", "model_options", "strategy_options", "ssl_options"):
            d[k] = dict(d[k])
        return json.loads(json.dumps(d, default=_json_default))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ExperimentConfig":
        """Inverse of :meth:`to_dict` (unknown keys are refused)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config has unknown keys {unknown}; valid: {sorted(names)}")
        d = dict(d)
        if isinstance(d.get("train"), Mapping):
            d["train"] = TrainConfig(**d["train"])
        return cls(**d)

    def fingerprint(self) -> str:
        """SHA-256 of the settings that determine the results (see ``RESUMABLE_KEYS``)."""
        return ckpt.fingerprint(self.to_dict(), ignore=RESUMABLE_KEYS)


class RunExistsError(ValueError):
    """``out_dir`` already holds a run and ``resume`` was not asked for."""


def _train_to_dict(tc: Any) -> dict:
    if dataclasses.is_dataclass(tc):
        return dataclasses.asdict(tc)
    if hasattr(tc, "_asdict"):
        return dict(tc._asdict())
    return dict(vars(tc))


def _json_default(o: Any) -> Any:
    """JSON for numpy / JAX values found in records and strategy info."""
    if isinstance(o, np.generic):
        return o.item()
    if hasattr(o, "__array__"):
        return np.asarray(o).tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    return str(o)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=_json_default))


def sequential_strategies() -> list[str]:
    """Names of registered strategies that offer a ``sequential`` (oracle-in-the-loop) mode."""
    return sequential_names()


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def validate(config: ExperimentConfig) -> ExperimentConfig:
    """Check names and sizes that do not need the data; raise ``ValueError`` naming the field."""
    if not isinstance(config, ExperimentConfig):
        raise ValueError(f"config must be an ExperimentConfig, got {type(config).__name__}")
    if not str(config.dataset).endswith(".npz"):
        check_choice("dataset", config.dataset, data_lib.names() + ["<path>.npz"])
    check_choice("model", config.model, models_lib.names())
    check_choice("strategy", config.strategy, strategies.names())
    check_choice("start", config.start, START_MODES)
    check_choice("noise", config.noise, NOISES)
    check_choice("trainer", config.trainer, ssl.trainers())
    check_choice("protocol", config.protocol, PROTOCOLS)
    if isinstance(config.head_init_scale, bool) or not isinstance(config.head_init_scale, (int, float)) \
            or not config.head_init_scale >= 0:
        raise ValueError(f"head_init_scale must be a number >= 0, got {config.head_init_scale!r}")
    if config.trainer != "supervised":
        ssl.SSLConfig(**dict(config.ssl_options))  # its own ValueErrors name the bad field
    elif config.ssl_options:
        raise ValueError("ssl_options were given but trainer='supervised' does not use them")
    _check_int("initial_size", config.initial_size, 1)
    _check_int("budget", config.budget, 1)
    _check_int("rounds", config.rounds, 0)
    _check_int("seed", config.seed, 0)
    if config.candidates is not None:
        _check_int("candidates", config.candidates, 1)
        if config.candidates < config.budget:
            raise ValueError(f"candidates={config.candidates} is smaller than budget={config.budget}")
    if config.sequential and sequential_mode(config.strategy) is None:
        raise ValueError(
            f"sequential=True but strategy {config.strategy!r} has no sequential mode; "
            f"strategies that support it: {', '.join(sequential_names()) or 'none yet'}"
        )
    try:  # unknown options would otherwise fail only at the first query, after training
        check_options(config.strategy, config.strategy_options, config.sequential)
    except ValueError as e:
        raise ValueError(f"strategy_options {dict(config.strategy_options)} do not fit strategy "
                         f"{config.strategy!r}: {e}") from None
    return config


def _check_sizes(config: ExperimentConfig, n_train: int) -> None:
    if config.initial_size > n_train:
        raise ValueError(f"initial_size={config.initial_size} is larger than the training set ({n_train} examples)")
    pool = n_train - config.initial_size
    if config.rounds > 0:
        if pool == 0:
            raise ValueError(f"initial_size={config.initial_size} labels the whole training set: the pool is empty")
        need = config.budget * config.rounds
        if need > pool:
            raise ValueError(
                f"budget={config.budget} x rounds={config.rounds} = {need} is larger than the pool "
                f"({pool} examples after the initial set)"
            )


def _make_oracle(labels: np.ndarray, calls: list[int]) -> Callable[[int], int]:
    """``oracle(i) -> label`` of candidate row ``i``; every call is logged in ``calls``."""
    n = int(labels.shape[0])

    def oracle(i: int) -> int:
        i = int(i)
        if not 0 <= i < n:
            raise ValueError(f"oracle: index {i} is outside the pool [0, {n})")
        calls.append(i)
        return int(labels[i])

    return oracle


def _append_record(path: str, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=_json_default) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _prepare_dir(out_dir: str, config: ExperimentConfig, resume: bool) -> bool:
    """Create/check ``out_dir``; return True when a checkpoint should be restored."""
    os.makedirs(out_dir, exist_ok=True)
    files = [f for f in (CONFIG_FILE, RECORDS_FILE, CHECKPOINT_FILE) if os.path.exists(os.path.join(out_dir, f))]
    if files and not resume:
        raise RunExistsError(
            f"out_dir {out_dir!r} already holds a run ({', '.join(files)}); pass resume=True "
            "(CLI: --resume) to continue it, or choose a new out_dir (CLI: --out)"
        )
    cfg_path = os.path.join(out_dir, CONFIG_FILE)
    if resume and os.path.exists(cfg_path):
        try:
            with open(cfg_path, encoding="utf-8") as f:
                stored = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ckpt.CheckpointError(f"{cfg_path} is unreadable ({e}); refusing to resume") from e
        if ckpt.fingerprint(stored, ignore=RESUMABLE_KEYS) != config.fingerprint():
            diff = ckpt.config_diff(stored, config.to_dict(), ignore=RESUMABLE_KEYS)
            raise ckpt.CheckpointError(
                f"{cfg_path} was written by a different config; differences (stored -> requested): "
                + "; ".join(diff)
                + ". Resume with the same settings, or start a new run with another --out."
            )
    return resume and os.path.exists(os.path.join(out_dir, CHECKPOINT_FILE))


@contextlib.contextmanager
def _progress_bar(enabled: bool, description: str, total: int):
    """Yield ``advance(text)``; a transient rich bar when enabled."""
    if not enabled:
        yield lambda text="": None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total, status="")

        def advance(text: str = "") -> None:
            bar.update(task, advance=1, status=text)

        yield advance


def run(
    config: ExperimentConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    on_event: Callable[[str, int], None] | None = None,
) -> list[dict]:
    """Run (or resume) one active-learning experiment and return its round records.

    Args:
      config: the experiment.
      out_dir: run directory for ``config.json``, ``records.jsonl`` and the checkpoint.
      resume: continue the run in ``out_dir`` from its last checkpoint (rounds already
        recorded are neither lost nor repeated). Without it, a directory that already
        holds a run is refused (:class:`RunExistsError`).
      progress: show a rich progress bar.
      on_event: ``on_event(event, round)`` called after each step of a round:
        ``"queried"``, ``"trained"``, ``"recorded"``, ``"checkpointed"`` (tests raise
        from it to simulate a kill at that instant).

    Returns:
      The records of rounds ``0..config.rounds``. Each holds ``round, n_labeled,
      test_accuracy, test_loss, train_accuracy, train_loss, train_epochs,
      reached_target, train_seconds, query_seconds, chosen`` (indices into
      ``x_train``; for round 0 the initial set), ``strategy, seed, dataset, model,
      info`` (the strategy's diagnostics).

    Raises:
      ValueError: bad config (naming the field), a pool too small for the budget, an
        existing run without ``resume``, or a corrupt / mismatched checkpoint
        (:class:`jaxal.experiment.checkpoint.CheckpointError`).
    """
    validate(config)
    out_dir = os.fspath(out_dir)
    emit = on_event or (lambda event, r: None)
    restore = _prepare_dir(out_dir, config, resume)
    ds = data_lib.load(config.dataset, seed=config.seed, data_dir=config.data_dir, **dict(config.dataset_options))
    x_train, y_train = np.asarray(ds.x_train), np.asarray(ds.y_train)
    _check_sizes(config, int(x_train.shape[0]))
    module = models_lib.create(
        config.model, int(ds.num_classes), input_shape=tuple(x_train.shape[1:]), **dict(config.model_options)
    )
    strategy = strategies.get(config.strategy)
    fingerprint = config.fingerprint()
    config_dict = config.to_dict()

    root = jax.random.key(config.seed)
    x_example = x_train[:1]
    initial_vars = scale_head(init_variables(jax.random.fold_in(root, _TAG_INIT_MODEL), module, x_example),
                              config.head_init_scale)

    cfg_path = os.path.join(out_dir, CONFIG_FILE)
    rec_path = os.path.join(out_dir, RECORDS_FILE)
    ck_path = os.path.join(out_dir, CHECKPOINT_FILE)

    if restore:
        state = ckpt.load(
            ck_path, variables_template=initial_vars, fingerprint=fingerprint, config=config_dict, ignore=RESUMABLE_KEYS
        )
        labeled = [int(i) for i in state.labeled]
        variables, strategy_state, records = state.variables, state.strategy_state, list(state.records)
        first_round = state.round + 1
    else:
        labeled, variables, strategy_state, records, first_round = [], initial_vars, None, [], 0
    # The checkpoint is the truth: drop any record written after it (a kill between
    # appending a record and saving the checkpoint), then continue.
    ckpt.write_atomic(rec_path, "".join(json.dumps(r) + "\n" for r in records).encode())
    ckpt.write_atomic(cfg_path, (json.dumps(config_dict, indent=2, sort_keys=True) + "\n").encode())

    description = f"{config.strategy} seed {config.seed}"
    with _progress_bar(progress, description, max(config.rounds + 1 - first_round, 0)) as advance:
        for r in range(first_round, config.rounds + 1):
            round_key = jax.random.fold_in(jax.random.fold_in(root, _TAG_ROUND), r)
            k_candidates, k_query, k_restart, k_train = jax.random.split(round_key, 4)
            info: dict = {}
            query_seconds = 0.0
            if r == 0:
                chosen = np.asarray(
                    data_lib.initial_indices(
                        jax.random.fold_in(root, _TAG_INITIAL_SET), y_train, config.initial_size,
                        balanced=config.balanced_init, num_classes=int(ds.num_classes),
                    ),
                    dtype=np.int64,
                )
            else:
                t0 = time.perf_counter()
                chosen, info, strategy_state = _query(
                    config, strategy, module, variables, x_train, y_train, labeled, ds.num_classes,
                    strategy_state, r, k_candidates, k_query,
                )
                query_seconds = time.perf_counter() - t0
                variables = restart(
                    k_restart, config.start, module, variables, x_example,
                    lam=config.lam, sigma=config.sigma, noise=config.noise,
                )
                if config.start == "cold":
                    variables = scale_head(variables, config.head_init_scale)
            if len(set(chosen.tolist()) | set(labeled)) != len(labeled) + len(chosen):
                raise RuntimeError(f"round {r}: a chosen index is already labeled")  # loop invariant
            labeled.extend(int(i) for i in chosen)
            emit("queried", r)

            idx = np.asarray(labeled, dtype=np.int64)
            result = _fit(config, k_train, module, variables, x_train, y_train, idx, ds.num_classes, r)
            variables = result.variables
            test_acc, test_loss = evaluate(
                module, variables, ds.x_test, ds.y_test, ds.num_classes, config.train.loss
            )
            emit("trained", r)

            record = {
                "round": r,
                "n_labeled": len(labeled),
                "test_accuracy": float(test_acc),
                "test_loss": float(test_loss),
                "train_accuracy": float(result.train_accuracy),
                "train_loss": float(result.train_loss),
                "train_epochs": int(result.epochs),
                "reached_target": bool(result.reached_target),
                "train_seconds": float(result.seconds),
                "query_seconds": float(query_seconds),
                "chosen": [int(i) for i in chosen],
                "strategy": config.strategy,
                "seed": config.seed,
                "dataset": config.dataset,
                "model": config.model,
                "info": _jsonable(info),
            }
            records.append(record)
            _append_record(rec_path, record)
            emit("recorded", r)
            ckpt.save(
                ck_path, round=r, labeled=labeled, variables=variables, strategy_state=strategy_state,
                records=records, config=config_dict, fingerprint=fingerprint,
            )
            emit("checkpointed", r)
            advance(f"labeled {len(labeled)}  acc {record['test_accuracy']:.3f}")
    return records


def _fit(
    config: ExperimentConfig,
    key: jax.Array,
    module: Any,
    variables: Any,
    x_train: np.ndarray,
    y_train: np.ndarray,
    labeled: np.ndarray,
    num_classes: int,
    r: int = 0,
) -> Any:
    """Train on the labeled rows (and, for a semi-supervised trainer, the unlabeled ones)."""
    train_config = config.train
    if r > 0 and config.retrain_inference_mode:
        train_config = dataclasses.replace(train_config, inference_mode=True)
    if config.trainer == "supervised":
        return train(key, module, variables, x_train[labeled], y_train[labeled], num_classes, train_config)
    unlabeled = np.setdiff1d(np.arange(x_train.shape[0]), labeled)
    ssl_config = ssl.SSLConfig(**dict(config.ssl_options), augment=augment.for_dataset(_augment_name(config.dataset)))
    fn = ssl.get_trainer(config.trainer)
    return fn(key, module, variables, x_train[labeled], y_train[labeled], x_train[unlabeled], num_classes,
              train_config, ssl_config)


def _augment_name(dataset: str) -> str:
    """The augmentation table's entry for a data set (``generic`` for unknown ones)."""
    return dataset if dataset in augment.datasets() else "generic"


def _query(
    config: ExperimentConfig,
    strategy: Callable[..., Any],
    module: Any,
    variables: Any,
    x_train: np.ndarray,
    y_train: np.ndarray,
    labeled: list[int],
    num_classes: int,
    strategy_state: Any,
    r: int,
    k_candidates: jax.Array,
    k_query: jax.Array,
) -> tuple[np.ndarray, dict, Any]:
    """One acquisition: returns (chosen indices into x_train, info, new strategy state)."""
    unlabeled = np.setdiff1d(np.arange(x_train.shape[0]), np.asarray(labeled, dtype=np.int64))
    if config.candidates is not None and config.candidates < unlabeled.shape[0]:
        pool = np.asarray(data_lib.subsample(k_candidates, unlabeled, config.candidates), dtype=np.int64)
    else:
        pool = unlabeled
    budget = check_budget(config.budget, int(pool.shape[0]))
    idx = np.asarray(labeled, dtype=np.int64)
    ctx = make_context(
        models_lib.as_model(module, variables),
        x_labeled=x_train[idx],
        y_labeled=y_train[idx],
        x_pool=x_train[pool],
        num_classes=num_classes,
        state=strategy_state,
        round=r - 1,
    )
    options = dict(config.strategy_options)
    if config.sequential:
        calls: list[int] = []
        twin = sequential_mode(config.strategy)
        raw = twin(k_query, ctx, budget, _make_oracle(y_train[pool], calls), **options)
    else:
        raw = strategy(k_query, ctx, budget, **options)
    q = as_query(raw, budget, int(pool.shape[0]), config.strategy)
    info = dict(q.info)
    if config.sequential:
        info.setdefault("oracle_calls", len(calls))
    return pool[q.indices], info, q.state
