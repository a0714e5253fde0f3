"""What defines one active-learning run, and the checks on it before anything trains.

:class:`ExperimentConfig` is the run's settings; :func:`validate` checks the names and
sizes that need no data, :func:`check_sizes` those that need the training-set size, so
a bad setting fails before the first (slow) training. :meth:`ExperimentConfig.fingerprint`
and :func:`check_same_run` decide whether a stored run may be resumed with a config:
only the ``RESUMABLE_KEYS`` may differ.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from jaxal import data as data_lib
from jaxal import models as models_lib
from jaxal import stopping, strategies
from jaxal.experiment import checkpoint as ckpt
from jaxal.experiment.protocols import PROTOCOLS
from jaxal.strategies.base import check_options, sequential_mode, sequential_names
from jaxal.training import ssl
from jaxal.training.train import TrainConfig
from jaxal.validation import check_choice

__all__ = [
    "ExperimentConfig",
    "START_MODES",
    "NOISES",
    "RESUMABLE_KEYS",
    "validate",
    "check_sizes",
    "check_same_run",
    "sequential_strategies",
    "json_default",
]

START_MODES = ("cold", "warm", "shrink_perturb")
NOISES = ("init", "gaussian")

# Config keys that do not change what a run computes: a resume may change them
# (``rounds`` extends or shortens a run; ``data_dir`` only says where files are;
# ``label`` only names the arm in comparisons; ``stop`` only ends a run earlier).
RESUMABLE_KEYS = ("rounds", "data_dir", "label", "stop")


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
      stop: stopping rules (:mod:`jaxal.stopping`, e.g. ``("kappa:0.99:3",)``): the run
        ends after the first round where one fires (that record gets ``stopped_by``),
        ``rounds`` at the latest. Not part of the fingerprint.
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
    stop: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """A JSON-able dict (tuples become lists)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["train"] = _train_to_dict(self.train)
        for k in ("dataset_options", "model_options", "strategy_options", "ssl_options"):
            d[k] = dict(d[k])
        return json.loads(json.dumps(d, default=json_default))

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
        if "stop" in d:
            d["stop"] = tuple(d["stop"] or ())
        return cls(**d)

    def fingerprint(self) -> str:
        """SHA-256 of the settings that determine the results (see ``RESUMABLE_KEYS``)."""
        return ckpt.fingerprint(self.to_dict(), ignore=RESUMABLE_KEYS)


def _train_to_dict(tc: Any) -> dict:
    if dataclasses.is_dataclass(tc):
        return dataclasses.asdict(tc)
    if hasattr(tc, "_asdict"):
        return dict(tc._asdict())
    return dict(vars(tc))


def json_default(o: Any) -> Any:
    """JSON for the numpy / JAX values found in configs, records and strategy info."""
    if isinstance(o, np.generic):
        return o.item()
    if hasattr(o, "__array__"):
        return np.asarray(o).tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    return str(o)


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
    if isinstance(config.stop, str) or not all(isinstance(t, str) for t in config.stop):
        raise ValueError(f"stop must be a tuple of stopping-rule texts such as ('kappa:0.99:3',), got {config.stop!r}")
    for text in config.stop:
        stopping.parse(text)  # names the bad rule
    # names and types; unknown options would otherwise fail only at the first query, after training
    check_options(config.strategy, config.strategy_options, config.sequential)
    return config


def check_sizes(config: ExperimentConfig, n_train: int) -> None:
    """Check the initial set and the total budget against a training set of ``n_train`` rows."""
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


def check_same_run(stored: Mapping[str, Any], config: ExperimentConfig, where: str, advice: str) -> None:
    """Refuse to continue a stored run (its ``config.json``, as a dict) with a config that
    computes something else.

    Only ``RESUMABLE_KEYS`` may differ. Used by the loop before resuming one run and by
    the grid before starting any, so both refuse the same changes with the same words.

    Raises:
      jaxal.experiment.checkpoint.CheckpointError: naming ``where`` and every differing
        setting (stored -> requested), followed by ``advice``.
    """
    if ckpt.fingerprint(stored, ignore=RESUMABLE_KEYS) != config.fingerprint():
        diff = ckpt.config_diff(stored, config.to_dict(), ignore=RESUMABLE_KEYS)
        raise ckpt.CheckpointError(
            f"{where} holds a run with other settings (stored -> requested: {'; '.join(diff)}); {advice}"
        )
