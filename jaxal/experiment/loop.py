"""The active-learning loop: rounds of train -> query -> oracle, with records and resume.

Data flow (one way)::

    data set -> pool -> train -> model snapshot -> strategy -> indices -> oracle -> pool

The loop is a state machine. :class:`LoopState` is everything carried from one round
to the next (exactly what the checkpoint stores), :class:`LoopEnv` what stays fixed
over a run (config, data, model, strategy), and :func:`round_step` maps a state and
the round's key to the next state and the round's record. :func:`run` only drives it:
it builds the environment, restores or starts the state, and after every step appends
the record and saves the checkpoint.

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
The settings and their checks live in :mod:`jaxal.experiment.config` (re-exported here).

Devices: with ``mesh`` (:func:`jaxal.pool.pool_mesh`) the strategy reads the pool sharded
by rows over the mesh (``Context.mesh``, bounded by ``memory_bytes``) and training is
data-parallel over it (``train(..., mesh=)``); the trained variables come back to the
host (NumPy), so evaluation on the test set, candidate subsampling, restarts,
semi-supervised trainers and strategies that do not use a mesh run as before on the
default device, never mixing arrays committed to different devices. Several processes
(:mod:`jaxal.distributed`, a mesh over every process's devices) run the same loop:
they check that they agree on the config and the data, every one computes every round
(the replicated parts identically), only process 0 takes the run-directory lock and
writes ``config.json``, ``records.jsonl`` and the checkpoint, and every process checks
after each round that it labeled the same points. On resume every process reads the
checkpoint (the run directory must be on a filesystem they share) once process 0 has
checked the directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import time
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import jax
import numpy as np

from jaxal import data as data_lib
from jaxal import distributed, pool, stopping, strategies
from jaxal import models as models_lib
from jaxal.experiment import checkpoint as ckpt
from jaxal.experiment import signals as signals_lib
from jaxal.experiment.compile_clock import compile_seconds
from jaxal.experiment.config import (  # noqa: F401 - START_MODES, NOISES, sequential_strategies: re-exported
    NOISES,
    RESUMABLE_KEYS,
    START_MODES,
    ExperimentConfig,
    check_same_run,
    check_sizes,
    json_default,
    sequential_strategies,
    validate,
)
from jaxal.experiment.progress import progress_bar
from jaxal.interrupt import check as check_interrupt
from jaxal.ops.random import split
from jaxal.strategies.base import as_query, check_options, make_context, sequential_mode
from jaxal.training import augment, ssl
from jaxal.training.train import (
    TrainConfig,
    TrainResult,
    evaluate,
    init_variables,
    restart,
    scale_head,
    train,
)
from jaxal.validation import check_budget

__all__ = [
    "ExperimentConfig",
    "check_regression",
    "train_config_of",
    "headline",
    "RunExistsError",
    "RunLockedError",
    "preflight",
    "LoopEnv",
    "LoopState",
    "round_step",
    "learn_step",
    "query_step",
    "fit_step",
    "initial_set",
    "initial_variables",
    "round_key",
    "stop_rows",
    "locked",
    "checked_module",
    "with_stop",
    "run",
    "validate",
    "sequential_strategies",
]

CONFIG_FILE = "config.json"
RECORDS_FILE = "records.jsonl"
CHECKPOINT_FILE = "checkpoint.msgpack"

# Tags for fold_in: one stream per purpose, independent of the strategy.
TAG_INITIAL_SET, TAG_INIT_MODEL, TAG_ROUND, TAG_STOP_SET = 1, 2, 3, 4


class RunExistsError(ValueError):
    """``out_dir`` already holds a run and ``resume`` was not asked for."""


class RunLockedError(ValueError):
    """Another process is writing the run directory."""


LOCK_FILE = ".lock"


class LoopEnv(NamedTuple):
    """What stays fixed over a run's rounds (built once by :func:`run`).

    Attributes:
      config: the experiment.
      module: the Flax module (:func:`jaxal.models.create`).
      strategy: the registered strategy function.
      x_train, y_train: the training set; the pool and the labeled set are rows of it.
      x_test, y_test: the test set every round is evaluated on.
      num_classes: number of classes.
      root: the seed's root key; every key of the run is folded from it.
      ssl_config: the semi-supervised trainer's settings (``None`` for ``supervised``).
      emit: ``emit(event, round)``, called after a round's query and after its training.
      mesh: the device mesh the pool and training are spread over (``None``: one device).
      memory_bytes: bound on what a strategy caches for the pool on the mesh.
      stop_rows: rows of ``x_train`` forming the stop set the round signals are measured on
        (:mod:`jaxal.experiment.signals`; ``None``: drawn from ``root``).
      task: ``"classification"``, or ``"regression"`` (real targets, ``num_classes``
        outputs trained with the squared loss ``"mse"``; records carry ``test_rmse``).
    """

    config: ExperimentConfig
    module: Any
    strategy: Callable[..., Any]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: Any
    y_test: Any
    num_classes: int
    root: jax.Array
    ssl_config: ssl.SSLConfig | None
    emit: Callable[[str, int], None]
    mesh: Any = None
    memory_bytes: int | None = None
    stop_rows: np.ndarray | None = None
    task: str = "classification"


def stop_rows(root: jax.Array, n: int) -> np.ndarray:
    """The run's stop set (rows of ``x_train``): drawn from the seed alone, so every
    strategy of a comparison measures its signals on the same points."""
    return signals_lib.stop_set(jax.random.fold_in(root, TAG_STOP_SET), n)


class LoopState(NamedTuple):
    """What a run carries from one round to the next; a checkpoint stores exactly this.

    Attributes:
      round: the last completed round (``-1`` before round 0).
      labeled: ``[L]`` int64 indices into ``x_train``, in acquisition order.
      variables: the Flax variables after that round's training.
      strategy_state: the strategy's carried state (``None`` when stateless).
      records: the round records so far, rounds ``0..round``.
    """

    round: int
    labeled: np.ndarray
    variables: Any
    strategy_state: Any
    records: tuple[dict, ...]


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=json_default))


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
        f.write(json.dumps(record, default=json_default) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _prepare_dir(out_dir: str, config: ExperimentConfig, resume: bool) -> bool:
    """Check ``out_dir`` (creating it); return True when a checkpoint should be restored.

    On resume, temporary files a killed write left behind (``.tmp-*``, see
    :func:`jaxal.experiment.checkpoint.write_atomic`) are removed: the files they were
    meant to replace are intact, old or new.
    """
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
        check_same_run(stored, config, out_dir,
                       "resume with the same settings, or start a new run with another --out")
    if resume:
        for tmp in glob.glob(os.path.join(glob.escape(out_dir), ".tmp-*")):
            with contextlib.suppress(OSError):
                os.remove(tmp)
    return resume and os.path.exists(os.path.join(out_dir, CHECKPOINT_FILE))


@contextlib.contextmanager
def locked(out_dir: str, error: type = None) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` (``.lock``, released when the process dies),
    so two writers never share one run (or labeling session); the second gets ``error``
    (default :class:`RunLockedError`). Two opens in one process conflict too."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no POSIX locks (Windows): run unlocked
        yield
        return
    path = os.path.join(out_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise (error or RunLockedError)(
                f"another process (pid {holder}) is writing {out_dir}; wait for it to finish, or use another "
                "directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def preflight(config: ExperimentConfig, datasets: dict | None = None) -> tuple[data_lib.Dataset, Any]:
    """Every check a run can make before it trains: the config (:func:`validate`), the
    data set (loaded, labels and sizes checked), the model built for it, and the
    strategy's options against the budget and that model (e.g. BALD needs dropout).

    Cheap next to training: the model is shape-inferred, not initialised. :func:`run`
    calls it before it creates ``out_dir``, so a run that fails it leaves nothing
    behind; ``jaxal run`` / ``jaxal compare`` call it for every run before the first.

    Returns:
      ``(dataset, module)``. Raises ``ValueError`` naming what is wrong.
    """
    validate(config)
    ds = _dataset(config, datasets)
    n_train = int(np.shape(ds.x_train)[0])
    check_sizes(config, n_train)
    task = getattr(ds, "task", "classification")
    if task == "regression":
        check_regression(config)
    elif config.train.loss == "mse":
        raise ValueError(f"loss 'mse' is for regression targets; {config.dataset!r} is a classification set "
                         "(train with cross_entropy or squared)")
    if config.balanced_init and config.initial_size % int(ds.num_classes):
        raise ValueError(f"balanced_init needs initial_size divisible by the {ds.num_classes} classes, "
                         f"got initial_size={config.initial_size}")
    budget = min(config.budget, n_train - config.initial_size) if config.rounds else config.budget
    module = checked_module(config, int(ds.num_classes), tuple(np.shape(ds.x_train)[1:]), max(budget, 1), task)
    return ds, module


def check_regression(config: ExperimentConfig) -> None:
    """What a regression run cannot do: class-balanced initial sets, semi-supervised
    trainers (their pseudo-labels are classes)."""
    if config.balanced_init:
        raise ValueError("balanced_init needs classes; this data set has real-valued regression targets")
    if config.trainer != "supervised":
        raise ValueError(f"trainer {config.trainer!r} is semi-supervised with class pseudo-labels; a regression "
                         "run trains with trainer='supervised'")


def train_config_of(config: ExperimentConfig, task: str) -> TrainConfig:
    """The training settings of a run: ``config.train``, with the loss ``"mse"`` for a
    regression set: a protocol's ``squared`` (one-hot targets) becomes the squared error
    to the real targets, and ``cross_entropy`` has no meaning there. The protocol's other
    settings (``target_loss``, ``max_epochs``, warm start) carry over."""
    if task == "regression" and config.train.loss != "mse":
        return dataclasses.replace(config.train, loss="mse")
    return config.train


def checked_module(config: ExperimentConfig, num_classes: int, input_shape: tuple, budget: int,
                   task: str = "classification") -> Any:
    """The config's Flax module for inputs of ``input_shape``, with the strategy's options
    checked against it and ``budget`` (e.g. BALD needs dropout) and the ``task``.
    Cheap: the module is shape-inferred, not initialised."""
    module = models_lib.create(config.model, num_classes, input_shape=input_shape, **dict(config.model_options))
    shapes = jax.eval_shape(lambda k, x: module.init({"params": k, "dropout": k}, x), jax.random.key(0),
                            jax.ShapeDtypeStruct((1, *input_shape), np.float32))
    check_options(config.strategy, config.strategy_options, config.sequential, budget=budget,
                  model=models_lib.as_model(module, shapes), task=task)
    return module


def with_stop(state: LoopState, rules: Sequence[Any]) -> tuple[LoopState, str | None]:
    """``state`` with ``stopped_by`` on its last record when one of ``rules``
    (:mod:`jaxal.stopping`) fires on its records, and the rule's text (``None``: go on)."""
    hit = stopping.stop_round(state.records, rules) if rules else None
    if hit is None:
        return state, None
    return state._replace(records=state.records[:-1] + ({**state.records[-1], "stopped_by": hit[1]},)), hit[1]


def headline(record: Mapping[str, Any]) -> str:
    """A round's test result in a few characters: ``acc 0.912`` or, for regression, ``rmse 0.431``."""
    if record.get("task") == "regression":
        return "rmse –" if record.get("test_rmse") is None else f"rmse {record['test_rmse']:.3f}"
    return "acc –" if record.get("test_accuracy") is None else f"acc {record['test_accuracy']:.3f}"


def round_key(root: jax.Array, r: int) -> jax.Array:
    """Round ``r``'s key: the same whatever the strategy, and whether or not the run was resumed."""
    return jax.random.fold_in(jax.random.fold_in(root, TAG_ROUND), r)


def _dataset(config: ExperimentConfig, datasets: dict | None) -> data_lib.Dataset:
    """The run's data set, from the caller's ``datasets`` cache when it holds it."""
    args = dict(seed=config.seed, data_dir=config.data_dir, **dict(config.dataset_options))
    key = data_lib.load_key(config.dataset, **args) if datasets is not None else None
    if key is not None and key in datasets:
        return datasets[key]
    ds = data_lib.load(config.dataset, **args)
    if key is not None:
        for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
            if isinstance(a, np.ndarray):
                a.setflags(write=False)  # shared by every run of the grid: nobody may change it
        datasets[key] = ds
    return ds


def run(
    config: ExperimentConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    on_event: Callable[[str, int], None] | None = None,
    datasets: dict | None = None,
    mesh: Any = None,
    memory_bytes: int | None = None,
) -> list[dict]:
    """Run (or resume) one active-learning experiment and return its round records.

    Args:
      config: the experiment.
      out_dir: run directory for ``config.json``, ``records.jsonl`` and the checkpoint.
      resume: continue the run in ``out_dir`` from its last checkpoint (rounds already
        recorded are neither lost nor repeated). Without it, a directory that already
        holds a run is refused (:class:`RunExistsError`).
      progress: show a rich progress bar (process 0 only).
      on_event: ``on_event(event, round)`` called after each step of a round:
        ``"queried"``, ``"trained"``, ``"recorded"``, ``"checkpointed"`` (tests raise
        from it to simulate a kill at that instant). With several processes it is
        called on each; ``"checkpointed"`` comes once process 0 has saved the round
        and every process has checked that it labeled the same points.
      datasets: a dict the caller owns and passes to every run of a grid: data sets
        are loaded into it once (keyed by :func:`jaxal.data.load_key`, arrays made
        read-only) and reused by later runs with the same data. ``None``: load afresh.
      mesh: a one-axis device mesh (:func:`jaxal.pool.pool_mesh`) to spread the
        strategy's pool and the training over; ``None``: one device. With several
        processes (:mod:`jaxal.distributed`) it must span every process (the default
        ``pool_mesh()`` does); every process calls ``run`` with the same arguments.
      memory_bytes: bound on what a strategy caches for the whole pool on the mesh
        (``Context.memory_bytes``); needs ``mesh``.

    Returns:
      The records of rounds ``0..config.rounds``. Each holds ``round, n_labeled,
      test_accuracy, test_loss, train_accuracy, train_loss, train_epochs,
      reached_target, train_seconds, query_seconds, chosen`` (indices into
      ``x_train``; for round 0 the initial set), ``strategy, seed, dataset, model,
      info`` (the strategy's diagnostics), and ``train_compile_seconds``,
      ``query_compile_seconds``: the tracing, lowering and XLA compilation inside training and the query
      (:mod:`jaxal.experiment.compile_clock`), so timings compare with compiles apart; ``signals``:
      the stopping signals (:mod:`jaxal.experiment.signals`), and ``stopped_by`` on the
      round after which a rule of ``config.stop`` ended the run.

    Raises:
      ValueError: anything :func:`preflight` finds (then ``out_dir`` is not created),
        an existing run without ``resume`` (:class:`RunExistsError`), another process
        writing ``out_dir`` (:class:`RunLockedError`), ``rounds`` below the rounds a
        resumed run has recorded, or a corrupt / mismatched checkpoint
        (:class:`jaxal.experiment.checkpoint.CheckpointError`); with several processes,
        processes that disagree on the config or the data
        (:class:`jaxal.distributed.MismatchError`), and any of these raised on one
        process is raised on all.
    """
    _check_devices(mesh, memory_bytes)
    multi = distributed.process_count() > 1
    with distributed.together("preflight"):
        ds, module = preflight(config, datasets)  # before out_dir exists: a bad run leaves nothing behind
    out_dir = os.fspath(out_dir)
    if multi:
        distributed.agree("run settings", {
            "config": config.to_dict(), "resume": bool(resume), "memory_bytes": memory_bytes,
            "mesh devices": None if mesh is None else int(mesh.size),
            "data": distributed.fingerprint_arrays(ds.x_train, ds.y_train, ds.x_test, ds.y_test),
        })
    primary = distributed.is_primary()
    with contextlib.ExitStack() as held:
        with distributed.together("run directory"):  # checked and locked by process 0 alone
            restore = False
            if primary:
                os.makedirs(out_dir, exist_ok=True)
                held.enter_context(locked(out_dir))
                restore = _prepare_dir(out_dir, config, resume)
        restore = bool(distributed.broadcast("restore", restore))
        return _run_locked(config, out_dir, ds, module, restore, progress, on_event, mesh, memory_bytes)


def _check_devices(mesh: Any, memory_bytes: Any) -> None:
    """``mesh`` is a one-axis :class:`~jax.sharding.Mesh` spanning every process;
    ``memory_bytes`` a positive integer, and only with a mesh."""
    if memory_bytes is not None:
        if isinstance(memory_bytes, bool) or not isinstance(memory_bytes, (int, np.integer)) or memory_bytes < 1:
            raise ValueError(f"memory_bytes must be a positive integer (bytes) or None, got {memory_bytes!r}")
        if mesh is None:
            raise ValueError("memory_bytes bounds what a strategy caches for the pool on a device mesh; pass mesh= "
                             "too (CLI: --mesh or --distributed)")
    if mesh is None:
        return
    from jax.sharding import Mesh

    if not isinstance(mesh, Mesh) or len(mesh.axis_names) != 1:
        raise ValueError(f"mesh must be a one-axis jax.sharding.Mesh (jaxal.pool.pool_mesh()), got {mesh!r}")
    n = distributed.process_count()
    covered = {int(d.process_index) for d in mesh.devices.flat}
    if covered != set(range(n)):
        raise ValueError(f"the mesh holds devices of processes {sorted(covered)} but the run has {n} processes: "
                         "every process computes every round, so the mesh must span them all (jaxal.pool.pool_mesh())")


def _to_host(tree: Any) -> Any:
    """Device arrays (replicated over a mesh, maybe over several processes) as NumPy."""
    return jax.tree.map(lambda a: pool.to_host(a) if isinstance(a, jax.Array) else a, tree)


def _run_locked(config: ExperimentConfig, out_dir: str, ds: data_lib.Dataset, module: Any, restore: bool,
                progress: bool, on_event: Callable[[str, int], None] | None, mesh: Any = None,
                memory_bytes: int | None = None) -> list[dict]:
    emit = on_event or (lambda event, r: None)
    primary = distributed.is_primary()
    x_train, y_train = np.asarray(ds.x_train), np.asarray(ds.y_train)
    root = jax.random.key(config.seed)
    env = LoopEnv(
        config=config,
        module=module,
        strategy=strategies.get(config.strategy),
        x_train=x_train,
        y_train=y_train,
        x_test=ds.x_test,
        y_test=ds.y_test,
        num_classes=ds.num_classes,
        root=root,
        ssl_config=ssl_config_of(config),
        emit=emit,
        mesh=mesh,
        memory_bytes=memory_bytes,
        stop_rows=stop_rows(root, int(x_train.shape[0])),
        task=getattr(ds, "task", "classification"),
    )
    fingerprint = config.fingerprint()
    config_dict = config.to_dict()
    initial_vars = initial_variables(env)

    cfg_path = os.path.join(out_dir, CONFIG_FILE)
    rec_path = os.path.join(out_dir, RECORDS_FILE)
    ck_path = os.path.join(out_dir, CHECKPOINT_FILE)

    if restore:
        with distributed.together("checkpoint"):  # every process reads it (process 0 is done checking the dir)
            if not os.path.exists(ck_path):
                raise ckpt.CheckpointError(
                    f"process {distributed.process_index()} sees no {ck_path}, which process 0 resumes from: the run "
                    "directory must be on a filesystem every process shares, at the same path")
            ck = ckpt.load(ck_path, variables_template=initial_vars, fingerprint=fingerprint, config=config_dict,
                           ignore=RESUMABLE_KEYS)
            if config.rounds < ck.round:
                raise ValueError(
                    f"{out_dir} has already recorded rounds 0..{ck.round}; rounds={config.rounds} would drop some. "
                    f"Resume with rounds >= {ck.round} (CLI: --rounds {ck.round}), or read its records as they are"
                )
        state = LoopState(ck.round, ck.labeled, ck.variables, ck.strategy_state, tuple(ck.records))
    else:
        state = LoopState(-1, np.zeros(0, dtype=np.int64), initial_vars, None, ())
    if primary:
        # The checkpoint is the truth: drop any record written after it (a kill between
        # appending a record and saving the checkpoint), then continue.
        ckpt.write_atomic(rec_path, "".join(json.dumps(r) + "\n" for r in state.records).encode())
        ckpt.write_atomic(cfg_path, (json.dumps(config_dict, indent=2, sort_keys=True) + "\n").encode())

    description = f"{config.strategy} seed {config.seed}"
    rules = [stopping.parse(t) for t in config.stop]
    stopped = bool(rules) and stopping.stop_round(state.records, rules) is not None
    with progress_bar(progress and primary, description, max(config.rounds - state.round, 0),
                      transient=True) as update:
        for r in range(state.round + 1, config.rounds + 1):
            if stopped:
                break
            check_interrupt()  # a Ctrl-C stops between rounds or training steps (jaxal.interrupt)
            state, _ = round_step(env, state, round_key(root, r))
            state, rule = with_stop(state, rules)
            record, stopped = state.records[-1], rule is not None  # a rule fired: this round is the run's last
            if primary:
                _append_record(rec_path, record)
            emit("recorded", r)
            if primary:
                ckpt.save(ck_path, **state._asdict(), config=config_dict, fingerprint=fingerprint)
            # every process labeled the same points (and process 0 has saved them)
            distributed.agree("round", {"round": r, "labeled": _digest(state.labeled)})
            emit("checkpointed", r)
            update(advance=1, status=f"labeled {len(state.labeled)}  {headline(record)}")
    check_interrupt()  # a Ctrl-C during the last round is not lost
    return list(state.records)


def _digest(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.int64).tobytes()).hexdigest()[:16]


def round_step(env: LoopEnv, state: LoopState, key: jax.Array) -> tuple[LoopState, dict]:
    """One round: choose points (round 0: the initial set), label them, retrain, evaluate.

    Args:
      env: what stays fixed over the run.
      state: the state after round ``state.round``.
      key: this round's key (the loop uses ``fold_in`` of the root key with the round
        number, so a resumed run draws the keys an uninterrupted one would).

    Returns:
      ``(state after round state.round + 1, that round's record)``. Nothing is written:
      files are :func:`run`'s business.
    """
    r = state.round + 1
    k_candidates, k_query, k_restart, k_train = split(key, 4)
    strategy_state = state.strategy_state
    info: dict = {}
    query_seconds = query_compile = 0.0
    if r == 0:
        chosen = initial_set(env)
    else:
        t0, c0 = time.perf_counter(), compile_seconds()
        chosen, info, strategy_state = query_step(env, state, k_candidates, k_query)
        query_seconds, query_compile = time.perf_counter() - t0, compile_seconds() - c0
    return learn_step(env, state, chosen, (k_restart, k_train), strategy_state=strategy_state, info=info,
                      query_seconds=query_seconds, query_compile_seconds=query_compile)


def initial_set(env: LoopEnv) -> np.ndarray:
    """Round 0's labeled set: drawn from the seed alone (not the strategy)."""
    config = env.config
    return np.asarray(
        data_lib.initial_indices(
            jax.random.fold_in(env.root, TAG_INITIAL_SET), env.y_train, config.initial_size,
            balanced=config.balanced_init, num_classes=int(env.num_classes),
        ),
        dtype=np.int64,
    )


def initial_variables(env: LoopEnv) -> Any:
    """The model before round 0's training: drawn from the seed alone (not the strategy)."""
    return scale_head(init_variables(jax.random.fold_in(env.root, TAG_INIT_MODEL), env.module, env.x_train[:1]),
                      env.config.head_init_scale)


def learn_step(
    env: LoopEnv,
    state: LoopState,
    chosen: np.ndarray,
    keys: tuple[jax.Array, jax.Array],
    *,
    strategy_state: Any = None,
    info: dict | None = None,
    query_seconds: float = 0.0,
    query_compile_seconds: float = 0.0,
) -> tuple[LoopState, dict]:
    """The second half of a round: add ``chosen`` (labels in ``env.y_train``) to the labeled
    set, restart the parameters (rounds after 0), retrain, evaluate, measure the signals.

    Args:
      keys: ``(restart key, training key)`` of the round (:func:`round_step` splits them
        from the round key; a labeling session splits the same ones).
      strategy_state, info, query_seconds, query_compile_seconds: the query's, carried
        into the state and the record.

    Returns:
      ``(state after round state.round + 1, that round's record)``. The record's test
      metrics are ``None`` when ``env.x_test`` is ``None`` (a session with no held-out set).
    """
    config = env.config
    r = state.round + 1
    k_restart, k_train = keys
    info = dict(info or {})
    variables = state.variables
    if r > 0:
        variables = restart(
            k_restart, config.start, env.module, variables, env.x_train[:1],
            lam=config.lam, sigma=config.sigma, noise=config.noise,
        )
        if config.start == "cold":
            variables = scale_head(variables, config.head_init_scale)
    chosen = np.asarray(chosen, dtype=np.int64)
    already = state.labeled.tolist()
    if len(set(chosen.tolist()) | set(already)) != len(already) + len(chosen):
        raise RuntimeError(f"round {r}: a chosen index is already labeled")  # loop invariant
    labeled = np.concatenate([state.labeled, chosen]).astype(np.int64)
    env.emit("queried", r)

    c0 = compile_seconds()
    result = fit_step(env, k_train, variables, labeled, r)
    train_compile = compile_seconds() - c0
    test_acc = test_loss = None
    if env.x_test is not None:
        test_acc, test_loss = evaluate(
            env.module, result.variables, env.x_test, env.y_test, env.num_classes, train_config_of(config, env.task).loss
        )
    env.emit("trained", r)
    signals = signals_step(env, state, result.variables, labeled, r, info)

    regression = env.task == "regression"
    record = {
        "round": r,
        "n_labeled": len(labeled),
        "test_accuracy": None if test_acc is None or regression else float(test_acc),
        "test_loss": None if test_loss is None else float(test_loss),
        **({"task": "regression",
            "test_rmse": None if test_loss is None else float(np.sqrt(test_loss)),
            "test_mae": None if test_acc is None else float(test_acc),
            "train_mae": float(result.train_accuracy)} if regression else {}),
        "train_accuracy": None if regression else float(result.train_accuracy),
        "train_loss": float(result.train_loss),
        "train_epochs": int(result.epochs),
        "reached_target": bool(result.reached_target),
        "train_seconds": float(result.seconds),
        "query_seconds": float(query_seconds),
        "train_compile_seconds": round(float(train_compile), 4),
        "query_compile_seconds": round(float(query_compile_seconds), 4),
        "chosen": [int(i) for i in chosen],
        "strategy": config.strategy,
        "seed": config.seed,
        "dataset": config.dataset,
        "model": config.model,
        "info": _jsonable(info),
        "signals": signals,
    }
    return LoopState(r, labeled, result.variables, strategy_state, state.records + (record,)), record


def signals_step(env: LoopEnv, state: LoopState, variables: Any, labeled: np.ndarray, r: int, info: dict) -> dict:
    """The round's stopping signals (:mod:`jaxal.experiment.signals`): the trained model and
    the previous round's (``state.variables``) on the stop set, and the query's own."""
    rows = env.stop_rows if env.stop_rows is not None else stop_rows(env.root, int(env.x_train.shape[0]))
    x_stop = env.x_train[rows]
    if env.task == "regression":
        now = signals_lib.predict_outputs(env.module, variables, x_stop)
        before = signals_lib.predict_outputs(env.module, state.variables, x_stop) if r > 0 else None
        out = signals_lib.regression_signals(now, before, ~np.isin(rows, labeled))
        previous_scale = float(np.mean(np.linalg.norm(before, axis=-1))) if before is not None else None
        out.update(signals_lib.query_signals(info, previous_scale, int(labeled.shape[0])))
        return out
    current = signals_lib.predict_stop_set(env.module, variables, x_stop)
    previous = signals_lib.predict_stop_set(env.module, state.variables, x_stop) if r > 0 else None
    unlabeled = ~np.isin(rows, labeled)
    out = signals_lib.round_signals(current, previous, unlabeled, int(env.num_classes))
    previous_scale = float(np.mean(previous.norm)) if previous is not None else None
    out.update(signals_lib.query_signals(info, previous_scale, int(labeled.shape[0])))
    return out


def ssl_config_of(config: ExperimentConfig) -> ssl.SSLConfig | None:
    """The semi-supervised trainer's settings, augmentations included (``None`` when supervised)."""
    if config.trainer == "supervised":
        return None
    return ssl.SSLConfig(**dict(config.ssl_options), augment=augment.for_dataset(_augment_name(config.dataset)))


def _augment_name(dataset: str) -> str:
    """The augmentation table's entry for a data set (``generic`` for unknown ones)."""
    return dataset if dataset in augment.datasets() else "generic"


def fit_step(env: LoopEnv, key: jax.Array, variables: Any, labeled: np.ndarray, r: int) -> TrainResult:
    """Train on the labeled rows (and, for a semi-supervised trainer, the unlabeled ones)."""
    config = env.config
    train_config = train_config_of(config, env.task)
    if r > 0 and config.retrain_inference_mode:
        train_config = dataclasses.replace(train_config, inference_mode=True)
    x, y = env.x_train, env.y_train
    if config.trainer == "supervised":
        if env.mesh is None:
            return train(key, env.module, variables, x[labeled], y[labeled], env.num_classes, train_config)
        result = train(key, env.module, variables, x[labeled], y[labeled], env.num_classes, train_config,
                       mesh=env.mesh)
        return result._replace(variables=_to_host(result.variables))  # replicated over the mesh: one copy
    unlabeled = np.setdiff1d(np.arange(x.shape[0]), labeled)
    fn = ssl.get_trainer(config.trainer)
    return fn(key, env.module, variables, x[labeled], y[labeled], x[unlabeled], env.num_classes,
              train_config, env.ssl_config)


def query_step(env: LoopEnv, state: LoopState, k_candidates: jax.Array, k_query: jax.Array) -> tuple[np.ndarray, dict, Any]:
    """One acquisition from the model of ``state``: (chosen indices into x_train, info, new strategy state)."""
    config = env.config
    labeled = state.labeled
    unlabeled = np.setdiff1d(np.arange(env.x_train.shape[0]), labeled)
    if config.candidates is not None and config.candidates < unlabeled.shape[0]:
        pool = np.asarray(data_lib.subsample(k_candidates, unlabeled, config.candidates), dtype=np.int64)
    else:
        pool = unlabeled
    budget = check_budget(config.budget, int(pool.shape[0]))
    ctx = make_context(
        models_lib.as_model(env.module, state.variables),
        x_labeled=env.x_train[labeled],
        y_labeled=env.y_train[labeled],
        x_pool=env.x_train[pool],
        num_classes=env.num_classes,
        state=state.strategy_state,
        round=state.round,
        mesh=env.mesh,
        memory_bytes=env.memory_bytes,
        task=env.task,
    )
    options = dict(config.strategy_options)
    if config.sequential:
        calls: list[int] = []
        twin = sequential_mode(config.strategy)
        raw = twin(k_query, ctx, budget, _make_oracle(env.y_train[pool], calls), **options)
    else:
        raw = env.strategy(k_query, ctx, budget, **options)
    q = as_query(raw, budget, int(pool.shape[0]), config.strategy)
    info = dict(q.info)
    if config.sequential:
        info.setdefault("oracle_calls", len(calls))
    return pool[q.indices], info, q.state
