"""optax training of a linen network on the labeled set, and restarts between rounds.

- Losses: ``"cross_entropy"`` (softmax CE on integer labels), ``"squared"``
  (``sum_c (f_c(x) - onehot(y)_c)^2``, mean over examples; the loss the NTK
  look-ahead linearises) and, for regression, ``"mse"`` (``sum_d (f_d(x) - y_d)^2``
  to real targets ``y [n]`` or ``[n, D]``, mean over examples). Under ``"mse"`` there is
  no accuracy: ``train_accuracy`` and :func:`evaluate`'s first value are the mean
  absolute error, and the stop rule reads the loss alone (``target_loss``, else
  ``max_epochs``).
- Stop rule: after each epoch the training accuracy and loss are measured in
  inference mode (running BatchNorm statistics, no dropout) over the whole labeled
  set; training stops when the accuracy reaches ``target_accuracy`` and (when
  ``target_loss`` is set) the mean loss is at most ``target_loss``, or after
  ``max_epochs``. The accuracy rule alone (the usual 99% rule) can leave a large
  residual ``y − f`` on the labeled set; the loss rule trains to a small one, which
  is what the NTK look-ahead assumes (it linearises training *to convergence*).
- Inference-mode training (``inference_mode=True``): the forward pass of every step
  uses the running BatchNorm statistics (frozen, never updated) and no dropout, so
  the function being trained is exactly the one whose empirical NTK the look-ahead
  computes.
- Mini-batches: an epoch is ``k = ceil(n / batch_size)`` batches of equal size
  ``b = n // k <= batch_size`` from a fresh permutation (drawn on the host from the
  key); the ``n mod k < k`` left-over examples sit out that epoch (a different few each
  time). So batches are never of size 1 (no ragged tail; ``n < batch_size`` is one
  batch of ``n``).
- Shape buckets: each batch is gathered on the host and padded to ``bucket(b)`` rows
  (:mod:`jaxal.ops.buckets`); padded rows carry weight 0 and the loss is the weighted
  mean, so the gradient is the unpadded one and the jitted step compiles once per
  batch bucket instead of once per labeled-set size (an active-learning run grows the
  set every round; a run from 20 to 420 labels with batches of 64 meets two
  buckets). The stop rule's inference pass runs chunks of 64 or 256 rows. Padding
  is skipped when a batch statistic could see the padded rows: a model with a
  mutable collection (BatchNorm's ``batch_stats``) trained in training mode gets
  exact shapes. Dropout masks are drawn for the padded batch shape: the same
  distribution, other draws than an unpadded batch would get.
- Data parallel: ``train(..., mesh=mesh)`` with a :class:`jax.sharding.Mesh` (e.g.
  ``Mesh(np.array(jax.devices()), ("pool",))``) splits the rows of every batch over
  the devices of the mesh's first axis (``NamedSharding(mesh, P(axis))``) and
  replicates parameters, optimiser state and BatchNorm statistics
  (``NamedSharding(mesh, P())``); the same jitted step runs on them and XLA's SPMD
  partitioner inserts the gradient all-reduce (and, for BatchNorm in training mode,
  the all-reduce of the batch statistics, which are therefore those of the whole
  batch, as on one device). Batches are padded with weight-0 rows up to a multiple of
  the mesh size, so the gradient is unchanged. Where padding is not allowed
  (BatchNorm in training mode), each batch instead shrinks to the largest multiple
  of the mesh size ``<= b`` (the rows this drops sit out the epoch like the
  ``n mod k`` left-overs; a ``ValueError`` when ``b`` is smaller than the mesh). The
  stop rule's inference pass shards its rows the same way. Arrays are built with
  ``jax.make_array_from_callback`` from the host batch, which every process holds
  in full (the permutation is drawn on the host from the same key), so the same
  code runs on one process or several; scalars are read back from replicated
  outputs.
- Restarts: ``cold`` (fresh init), ``warm`` (previous weights), ``shrink_perturb``
  (Ash & Adams 2020): ``theta <- lam * theta + sigma * theta_fresh`` (their code) or
  ``theta <- lam * theta + N(0, sigma^2)`` (the thesis text).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxal.interrupt import check as check_interrupt
from jaxal.ops.buckets import bucket
from jaxal.ops.random import host_rng, split
from jaxal.validation import check_choice, check_finite, check_labels, check_nonempty, check_same_length

__all__ = ["TrainConfig", "TrainResult", "init_variables", "scale_head", "train", "evaluate", "restart", "epoch_batches",
           "LOSSES", "OPTIMIZERS"]

LOSSES = ("cross_entropy", "squared", "mse")
OPTIMIZERS = ("adam", "adamw", "sgd")
RESTART_MODES = ("cold", "warm", "shrink_perturb")
NOISES = ("init", "gaussian")


@dataclass(frozen=True)
class TrainConfig:
    """How to train on the labeled set.

    Attributes:
      loss: ``"cross_entropy"``, ``"squared"`` (one-hot targets) or ``"mse"``
        (regression: real targets).
      optimizer: ``"adam"``, ``"adamw"`` (decoupled weight decay) or ``"sgd"``
        (momentum 0.9). For adam/sgd, ``weight_decay`` is an L2 term added to the
        gradient.
      learning_rate: step size (> 0).
      weight_decay: >= 0.
      batch_size: nominal mini-batch size (>= 2); see the module docstring.
      max_epochs: epoch cap (>= 1).
      target_accuracy: stop once the training accuracy reaches this, in (0, 1].
      target_loss: if set (> 0), also require the mean training loss to be at most
        this before stopping (e.g. ``0.01`` with the squared loss: a root-mean-square
        residual of 0.1 per example).
      inference_mode: train with running BatchNorm statistics frozen and dropout off
        (see the module docstring).
    """

    loss: str = "cross_entropy"
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    max_epochs: int = 100
    target_accuracy: float = 0.99
    target_loss: float | None = None
    inference_mode: bool = False

    def __post_init__(self) -> None:
        check_choice("loss", self.loss, LOSSES)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 2:
            raise ValueError(f"batch_size must be an integer >= 2, got {self.batch_size!r}")
        if isinstance(self.max_epochs, bool) or not isinstance(self.max_epochs, int) or self.max_epochs < 1:
            raise ValueError(f"max_epochs must be an integer >= 1, got {self.max_epochs!r}")
        if not 0 < self.target_accuracy <= 1:
            raise ValueError(f"target_accuracy must be in (0, 1], got {self.target_accuracy}")
        if self.target_loss is not None and not (isinstance(self.target_loss, (int, float)) and self.target_loss > 0):
            raise ValueError(f"target_loss must be None or a positive number, got {self.target_loss!r}")
        if not isinstance(self.inference_mode, bool):
            raise ValueError(f"inference_mode must be True or False, got {self.inference_mode!r}")


class TrainResult(NamedTuple):
    """What :func:`train` returns.

    Attributes:
      variables: trained variables (``params`` and e.g. ``batch_stats``).
      epochs: epochs run.
      train_accuracy: final accuracy on the training set, inference mode (the mean
        absolute error under the regression loss ``"mse"``).
      train_loss: final mean loss on the training set, inference mode.
      seconds: wall time, compilation included.
      reached_target: whether the stop rule was met (accuracy, and loss when
        ``target_loss`` is set).
    """

    variables: Any
    epochs: int
    train_accuracy: float
    train_loss: float
    seconds: float
    reached_target: bool


def init_variables(key: jax.Array, module: nn.Module, x_example: Any) -> Any:
    """Fresh variables of ``module`` for inputs shaped like ``x_example [n, ...]``."""
    check_nonempty("x_example", x_example)
    x = jnp.asarray(np.asarray(x_example)[:1], dtype=jnp.float32)
    return _jitted_init(module)(key, x)


def scale_head(variables: Any, scale: float) -> Any:
    """``variables`` with the ``head`` submodule's parameters multiplied by ``scale``.

    ``scale=0`` starts the network at ``f₀ ≡ 0``. This matters for the squared loss:
    training moves the outputs on the labeled set to the targets, but on other inputs
    the random initial function ``f₀`` largely stays (in the kernel regime exactly:
    ``f(x) = f₀(x) + k(x, L) K_LL⁻¹ (Y_L − f₀(X_L))``), and with one-hot targets of
    size 1 a default-initialised head's ``f₀`` (standard deviation ~0.7 per logit) is
    noise of the same size as the signal. Cross-entropy drives the logits far beyond
    ``f₀``'s scale and is hurt less. The other parameters keep their initialisation,
    so gradients reach the body as soon as the head has moved.

    Raises ``ValueError`` when the parameters have no ``head`` entry.
    """
    if scale == 1.0:
        return variables
    params = variables["params"]
    if "head" not in params:
        raise ValueError(f"head_init_scale needs a 'head' submodule; the model's parameters hold {sorted(params)}")
    return {**variables, "params": {**params, "head": _scaled(params["head"], np.float32(scale))}}


@jax.jit
def _scaled(tree: Any, scale: jax.Array) -> Any:
    """Every leaf times ``scale`` (in the leaf's dtype), one program per tree structure."""
    return jax.tree.map(lambda p: p * scale.astype(p.dtype), tree)


@functools.lru_cache(maxsize=64)
def _jitted_init(module: nn.Module):
    """One XLA compile per module and input shape (eager init compiles op by op)."""

    @jax.jit
    def init(key, x):
        params_key, dropout_key = jax.random.split(key)
        return module.init({"params": params_key, "dropout": dropout_key}, x, train=False)

    return init


def loss_fn(kind: str, logits: jax.Array, y: jax.Array, num_classes: int) -> jax.Array:
    """Per-example loss ``[n]``: cross-entropy, squared error to one-hot targets, or
    (``"mse"``) squared error to real targets ``y [n]`` / ``[n, D]``."""
    if kind == "cross_entropy":
        return optax.softmax_cross_entropy_with_integer_labels(logits, y)
    if kind == "mse":
        return jnp.sum((logits - _as_targets(y, logits)) ** 2, axis=-1)
    return jnp.sum((logits - jax.nn.one_hot(y, num_classes, dtype=logits.dtype)) ** 2, axis=-1)


def _as_targets(y: jax.Array, outputs: jax.Array) -> jax.Array:
    """Real targets shaped like the outputs ``[n, D]`` (``[n]`` targets for ``D = 1``)."""
    return jnp.reshape(y, outputs.shape).astype(outputs.dtype)


def _hits(kind: str, logits: jax.Array, y: jax.Array) -> jax.Array:
    """Per-example ``[n]``: 1 for a correct class, or (``"mse"``) the mean absolute error."""
    if kind == "mse":
        return jnp.mean(jnp.abs(logits - _as_targets(y, logits)), axis=-1)
    return (jnp.argmax(logits, -1) == y).astype(jnp.float32)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The optax optimizer a :class:`TrainConfig` names (L2 decay for adam/sgd, decoupled for adamw)."""
    lr, wd = config.learning_rate, config.weight_decay
    if config.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=wd)
    base = optax.adam(lr) if config.optimizer == "adam" else optax.sgd(lr, momentum=0.9)
    return optax.chain(optax.add_decayed_weights(wd), base) if wd > 0 else base


def _split(variables: Mapping[str, Any]) -> tuple[Any, dict]:
    return variables["params"], {k: v for k, v in variables.items() if k != "params"}


@functools.lru_cache(maxsize=64)
def _step_fn(module: nn.Module, config: TrainConfig, num_classes: int):
    """The optimiser, its jitted ``init`` and a jitted ``step(params, state, opt_state,
    key, counter, xb [B, ...], yb [B], w [B]) -> (params, state, opt_state, loss)`` on
    one batch with row weights ``w`` (0 for padded rows).

    The batch is gathered on the host (a copy of ``B`` rows, no program) and the dropout
    key is ``fold_in(key, counter)`` inside the program, so the step compiles once per
    batch bucket ``B``, whatever the labeled-set size. A Python loop over the batches
    beats a ``lax.scan`` on CPU (XLA:CPU runs loop bodies several times slower, see
    ``benchmarks/train_speed.py``) and costs nothing on GPU, where dispatch is
    asynchronous.
    """
    tx = make_optimizer(config)

    @jax.jit
    def step(params, state, opt_state, key, counter, xb, yb, w):
        key = jax.random.fold_in(key, counter)
        training = not config.inference_mode
        mutable = (list(state) or False) if training else False  # flax returns (out, {}) for an empty list

        def loss_of(p):
            out = module.apply({"params": p, **state}, xb, train=training, rngs={"dropout": key}, mutable=mutable)
            logits, new_state = out if mutable else (out, {})
            per_example = loss_fn(config.loss, logits, yb, num_classes)
            return jnp.sum(per_example * w) / jnp.sum(w), new_state

        (loss, new_state), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), {**state, **new_state}, opt_state, loss

    return tx, _opt_init(config.optimizer, config.learning_rate, config.weight_decay), step


@functools.lru_cache(maxsize=64)
def _opt_init(optimizer: str, learning_rate: float, weight_decay: float):
    """The jitted optimiser ``init`` (one program per parameter structure), shared by
    the steps of one optimiser (training and inference-mode retraining differ only in
    the step)."""
    config = TrainConfig(optimizer=optimizer, learning_rate=learning_rate, weight_decay=weight_decay)
    return jax.jit(make_optimizer(config).init)


@functools.lru_cache(maxsize=64)
def _eval_fn(module: nn.Module, loss: str, num_classes: int):
    """A jitted ``evaluate(variables, xs [m, b, ...], ys [m, b], masks [m, b])
    -> (correct, loss_sum)`` running the ``m`` chunks one after another (``lax.map``:
    memory bounded by one chunk)."""

    def chunk(variables, xym):
        x, y, mask = xym
        logits = module.apply(variables, x, train=False)
        correct = jnp.sum(_hits(loss, logits, y) * mask)
        return correct, jnp.sum(loss_fn(loss, logits, y, num_classes) * mask)

    @jax.jit
    def run(variables, xs, ys, masks):
        correct, total = jax.lax.map(functools.partial(chunk, variables), (xs, ys, masks))
        return jnp.sum(correct), jnp.sum(total)

    return run


def _chunked(x: np.ndarray, y: np.ndarray, batch_size: int,
             rows: int | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``x [n, ...]`` zero-padded to ``[m, b, ...]``, labels ``[m, b]`` and a 0/1 mask
    ``[m, b]`` marking the real rows, on the device. ``b = min(batch_size, rows)`` with
    ``rows`` (default ``bucket(n)``) at least ``n``: sizes in one bucket share a program."""
    # reshaped and sent on the host side: jnp.asarray/reshape would compile a program per shape
    return tuple(jax.device_put(a) for a in _chunked_host(x, y, batch_size, rows))


def _chunked_host(x: np.ndarray, y: np.ndarray, batch_size: int,
                  rows: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = x.shape[0]
    rows = bucket(n) if rows is None else max(int(rows), n)
    b = min(batch_size, rows)
    m = -(-rows // b)
    pad = m * b - n
    xp = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
    yp = np.concatenate([y, np.zeros((pad,) + y.shape[1:], y.dtype)]) if pad else y
    mask = (np.arange(m * b) < n).astype(np.float32)
    return xp.reshape((m, b) + x.shape[1:]), yp.reshape((m, b) + y.shape[1:]), mask.reshape(m, b)


def _stop_rule_chunks(x: np.ndarray, y: np.ndarray,
                      mesh: Mesh | None = None) -> list[tuple[jax.Array, jax.Array, jax.Array]]:
    """The labeled set as ``[1, b]`` chunks (``b`` = 64 for up to 64 rows, else 256; the
    last chunk padded and masked), each sent to the device once: the per-epoch
    inference pass of the stop rule runs them one by one, so its program has one of
    two shapes whatever the labeled-set size. With ``mesh``, ``b`` is rounded up to a
    multiple of the mesh size and the ``b`` rows are sharded over its first axis."""
    n = x.shape[0]
    b = 64 if n <= 64 else 256
    if mesh is None:
        xs, ys, masks = _chunked_host(x, y, b, rows=-(-n // b) * b)
        return [(jax.device_put(xs[i : i + 1]), jax.device_put(ys[i : i + 1]), jax.device_put(masks[i : i + 1]))
                for i in range(xs.shape[0])]
    b = _round_up(b, _mesh_size(mesh))
    xs, ys, masks = _chunked_host(x, y, b, rows=-(-n // b) * b)
    rows = NamedSharding(mesh, P(None, mesh.axis_names[0]))
    return [tuple(_put_global(a[i : i + 1], rows) for a in (xs, ys, masks)) for i in range(xs.shape[0])]


def _round_up(a: int, m: int) -> int:
    return -(-a // m) * m


def _check_mesh(mesh: Any) -> None:
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh or None, got {type(mesh).__name__}")
    if not mesh.axis_names:
        raise ValueError("mesh must have at least one axis (the batch rows are split over its first)")


def _mesh_size(mesh: Mesh) -> int:
    """Devices along the mesh's first axis: the number of row shards."""
    return int(mesh.shape[mesh.axis_names[0]])


def _put_global(host: Any, sharding: NamedSharding) -> jax.Array:
    """``host`` (the same full value on every process) as a global array with ``sharding``.

    ``make_array_from_callback`` transfers each addressable device its own slice, so
    it works on one process or several (where ``device_put`` would check that the
    processes agree, a collective, at every call)."""
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _replicated(tree: Any, mesh: Mesh) -> Any:
    """Every leaf of ``tree`` replicated over ``mesh`` (``NamedSharding(mesh, P())``);
    leaves already placed so are kept as they are (no copy)."""
    rep = NamedSharding(mesh, P())

    def put(a):
        if isinstance(a, jax.Array):
            if a.sharding.is_equivalent_to(rep, a.ndim):
                return a
            if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
                return jax.random.wrap_key_data(put(jax.random.key_data(a)), impl=jax.random.key_impl(a))
            if not a.is_fully_addressable:  # a global array laid out otherwise: reshard
                return jax.device_put(a, rep)
        return _put_global(a, rep)

    return jax.tree.map(put, tree)


def _host_scalar(a: jax.Array) -> np.ndarray:
    """A replicated result on the host, also when it spans processes (read from a local copy)."""
    return np.asarray(a.addressable_data(0))


def _check_xy(x: Any, y: Any, num_classes: int, loss: str = "cross_entropy") -> None:
    check_nonempty("x", x)
    check_same_length(x=x, y=y)
    check_finite("x", x)
    if loss == "mse":  # regression: real targets, one per output
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"num_classes (the number of outputs) must be an integer >= 1, got {num_classes!r}")
        a = np.asarray(y)
        if a.dtype.kind not in "fiub" or a.shape[1:] not in ((), (int(num_classes),)) or (a.ndim == 1 and num_classes != 1):
            raise ValueError(f"regression targets y must be real numbers [n] (one output) or [n, {num_classes}], "
                             f"got {a.dtype} {a.shape}")
        check_finite("y", a)
        return
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    check_labels("y", y, int(num_classes))


def _targets(y: Any, loss: str) -> np.ndarray:
    """Labels as int32, or regression targets as float32."""
    return np.asarray(y, np.float32 if loss == "mse" else np.int32)


def evaluate(
    module: nn.Module,
    variables: Any,
    x: Any,
    y: Any,
    num_classes: int,
    loss: str = "cross_entropy",
    batch_size: int = 1024,
) -> tuple[float, float]:
    """Accuracy and mean loss of ``module`` on ``(x [n, ...], y [n])`` in inference mode
    (under ``loss="mse"``: the mean absolute error and the mean squared error).

    Runs over chunks of ``min(batch_size, bucket(n))`` rows (padding masked) inside one
    jitted call, so test sets of sizes in one bucket share the program.
    """
    check_choice("loss", loss, LOSSES)
    _check_xy(x, y, num_classes, loss)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    chunks = _chunked(x, _targets(y, loss), batch_size)
    correct, total = _eval_fn(module, loss, int(num_classes))(variables, *chunks)
    return float(correct) / n, float(total) / n


def epoch_batches(n: int, batch_size: int) -> tuple[int, int]:
    """``(k, b)``: batches per epoch and their size for ``n`` examples.

    ``k = max(1, min(ceil(n / batch_size), n // 2))``, ``b = n // k``: ``b >= 2`` whenever
    ``n >= 2``; ``b <= batch_size`` (except ``batch_size = 2`` with ``n = 3``: one batch
    of 3), and ``b >= batch_size // 2`` once ``n >= batch_size``, so a growing labeled set
    meets at most two batch buckets past ``batch_size`` rows.
    """
    k = max(1, min(-(-n // batch_size), n // 2))
    return k, n // k


def train(
    key: jax.Array,
    module: nn.Module,
    variables: Any,
    x: Any,
    y: Any,
    num_classes: int,
    config: TrainConfig = TrainConfig(),
    *,
    buckets: bool = True,
    mesh: Mesh | None = None,
) -> TrainResult:
    """Train ``module`` from ``variables`` on ``(x [n, ...], y [n])`` with optax.

    A fresh optimiser state each call. See the module docstring for batching, shape
    buckets and the stop rule. ``key`` drives the permutations and dropout.
    ``buckets=False`` trains on exact shapes (one compiled step per labeled-set size);
    the result is the same within float rounding.

    ``mesh``: data-parallel training over a :class:`jax.sharding.Mesh` (``None``, the
    default: one device, as before). The rows of every batch (inputs, labels, row
    weights) are split over the mesh's first axis, ``mesh.axis_names[0]`` (e.g. a 1-D
    ``Mesh(np.array(jax.devices()), ("pool",))``), and parameters, optimiser state and
    BatchNorm statistics are replicated on all its devices; the same jitted step runs
    and XLA inserts the gradient all-reduce, so the result equals the one-device one
    within float rounding. Batches are padded with weight-0 rows to a multiple of the
    mesh size (``buckets=False`` included). A model with BatchNorm trained in training
    mode, whose batches are never padded, instead trains each batch on the largest
    multiple of the mesh size ``<= b`` rows (the same as one device when the mesh size
    divides ``b``; the dropped rows sit out the epoch); a batch smaller than the mesh
    raises ``ValueError``. The stop rule's inference pass is sharded likewise. The
    returned variables are replicated over the mesh. With several processes, every
    process must call with the same arguments (the same host ``x``, ``y`` and
    ``key``).
    """
    t0 = time.perf_counter()
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    _check_xy(x, y, num_classes, config.loss)
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError("variables must be a mapping with a 'params' collection")
    if mesh is not None:
        _check_mesh(mesh)
    n = int(np.shape(x)[0])
    if n < 2:
        raise ValueError(f"x must hold at least 2 examples to train (mini-batches of 1 are not used), got {n}")
    num_classes = int(num_classes)
    x_np = np.asarray(x, dtype=np.float32)
    y_np = _targets(y, config.loss)
    k, b = epoch_batches(n, config.batch_size)
    example = jax.ShapeDtypeStruct((1,) + x_np.shape[1:], jnp.float32)
    signature = _signature(variables)
    outputs = _num_outputs(module, signature, example)
    if outputs != num_classes:
        raise ValueError(f"num_classes={num_classes} but the module outputs {outputs} logits")
    params, state = _split(flax.core.unfreeze(variables))
    # a batch statistic (BatchNorm in training mode) would see padded rows: exact shapes then
    exact = bool(state) and not config.inference_mode
    pad = buckets and not exact
    batch_rows = bucket(b) if pad else b
    if mesh is not None:
        devices = _mesh_size(mesh)
        if not exact:  # weight-0 rows up to a multiple of the mesh size: the same gradient
            batch_rows = _round_up(batch_rows, devices)
        else:  # no padding: the batch split must divide
            if b < devices:
                raise ValueError(
                    f"a batch of {b} rows cannot be split over the mesh's {devices} devices: the model has "
                    f"BatchNorm trained in training mode, whose batches are never padded (padded rows would "
                    f"enter the batch statistics); use batches of at least {devices} rows (batch_size and the "
                    f"labeled set), a mesh of at most {b} devices, or inference_mode=True")
            b = batch_rows = b - b % devices

    # stop-rule and batching fields do not change the compiled step: share its cache entry;
    # neither does inference_mode for a network whose training mode computes the same
    inference_mode = config.inference_mode and _train_flag_matters_cached(module, signature, example)
    step_config = dataclasses.replace(config, batch_size=2, max_epochs=1, target_accuracy=1.0, target_loss=None,
                                      inference_mode=inference_mode)
    tx, init_opt, step = _step_fn(module, step_config, num_classes)
    evaluate_chunks = _eval_fn(module, config.loss, num_classes)
    chunks = _stop_rule_chunks(x_np, y_np, mesh)  # on the device once, reused every epoch
    if mesh is not None:
        params, state = _replicated((params, state), mesh)
    opt_state = init_opt(params)
    perm_key, dropout_key = split(key, 2)
    rng = host_rng(perm_key)
    weights = np.zeros(batch_rows, np.float32)
    weights[:b] = 1.0
    if mesh is None:
        weights = jax.device_put(weights)
        to_device = to_replicated = _identity
        to_host = np.asarray
    else:
        rows = NamedSharding(mesh, P(mesh.axis_names[0]))
        weights = _put_global(weights, rows)
        opt_state, dropout_key = _replicated((opt_state, dropout_key), mesh)
        to_device = functools.partial(_put_global, sharding=rows)
        to_replicated = functools.partial(_put_global, sharding=NamedSharding(mesh, P()))
        to_host = _host_scalar
    acc, loss, epochs = 0.0, float("nan"), 0
    for epochs in range(1, config.max_epochs + 1):
        batches = np.zeros((k, batch_rows), np.int32)
        batches[:, :b] = rng.permutation(n)[: k * b].reshape(k, b)
        for i in range(k):
            check_interrupt()  # a Ctrl-C stops here, between steps (jaxal.interrupt)
            counter = to_replicated(np.int32((epochs - 1) * k + i))
            idx = batches[i]  # fresh arrays every step: the device may read them later
            params, state, opt_state, _ = step(params, state, opt_state, dropout_key, counter, to_device(x_np[idx]),
                                               to_device(y_np[idx]), weights)
        current = {"params": params, **state}
        sums = [evaluate_chunks(current, *chunk) for chunk in chunks]
        acc = float(np.sum([to_host(c) for c, _ in sums])) / n
        loss = float(np.sum([to_host(t) for _, t in sums])) / n
        if _reached(acc, loss, config):
            break
    return TrainResult(
        variables={"params": params, **state},
        epochs=epochs,
        train_accuracy=acc,
        train_loss=loss,
        seconds=time.perf_counter() - t0,
        reached_target=_reached(acc, loss, config),
    )


def _identity(a: Any) -> Any:
    return a


def _signature(tree: Any) -> tuple:
    """A hashable description of a pytree's structure, shapes and dtypes."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, tuple((np.shape(a), str(jnp.result_type(a))) for a in leaves)


def _abstract(signature: tuple) -> Any:
    treedef, leaves = signature
    return jax.tree_util.tree_unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in leaves])


@functools.lru_cache(maxsize=64)
def _num_outputs(module: nn.Module, signature: tuple, example: jax.ShapeDtypeStruct) -> int:
    """The network's number of logits, by shape inference (traced once per module and shapes)."""
    return int(jax.eval_shape(lambda v, xb: module.apply(v, xb, train=False), _abstract(signature), example).shape[-1])


@functools.lru_cache(maxsize=64)
def _train_flag_matters_cached(module: nn.Module, signature: tuple, example: jax.ShapeDtypeStruct) -> bool:
    return _train_flag_matters(module, _abstract(signature), example)


def _train_flag_matters(module: nn.Module, variables: Any, example: jax.ShapeDtypeStruct) -> bool:
    """Whether ``train=True`` changes what the network computes (dropout, batch
    statistics): the two modes' programs compared, traced on shapes only."""
    if any(k != "params" for k in variables):
        return True
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    trained = jax.make_jaxpr(lambda v, x, k: module.apply(v, x, train=True, rngs={"dropout": k}))(
        variables, example, key)
    inferred = jax.make_jaxpr(lambda v, x, k: module.apply(v, x, train=False))(variables, example, key)
    return str(trained) != str(inferred)


def _reached(accuracy: float, loss: float, config: TrainConfig) -> bool:
    """The stop rule: accuracy at target and, when ``target_loss`` is set, loss at most it
    (regression, ``"mse"``: the loss rule alone; without ``target_loss``, never)."""
    if config.loss == "mse":
        return bool(config.target_loss is not None and loss <= config.target_loss)
    return bool(accuracy >= config.target_accuracy and (config.target_loss is None or loss <= config.target_loss))


def restart(
    key: jax.Array,
    mode: str,
    module: nn.Module,
    variables_prev: Any,
    x_example: Any,
    *,
    lam: float = 0.5,
    sigma: float = 0.01,
    noise: str = "init",
) -> Any:
    """Variables to start the next round's training from.

    Args:
      key: used for the fresh init (``init_variables(key, ...)``), so ``cold`` and
        ``shrink_perturb`` with ``lam=0, sigma=1, noise="init"`` give the same values.
      mode: ``"cold"`` (fresh init, all collections fresh), ``"warm"`` (the previous
        variables), ``"shrink_perturb"``: params ``lam * theta + sigma * theta_fresh``
        (``noise="init"``, Ash & Adams' code) or ``lam * theta + N(0, sigma^2)``
        elementwise (``noise="gaussian"``, the thesis text); other collections
        (BatchNorm statistics) are kept from ``variables_prev``.
      module: the network.
      variables_prev: the previous round's variables (ignored by ``cold``).
      x_example: a batch shaped like the inputs, for the init.
    """
    check_choice("restart mode", mode, RESTART_MODES)
    check_choice("noise", noise, NOISES)
    if mode == "cold":
        return init_variables(key, module, x_example)
    if not isinstance(variables_prev, Mapping) or "params" not in variables_prev:
        raise ValueError("variables_prev must be a mapping with a 'params' collection")
    if mode == "warm":
        return variables_prev
    prev_params, state = _split(variables_prev)
    if noise == "init":
        fresh = init_variables(key, module, x_example)["params"]
        params = jax.tree.map(lambda p, f: lam * p + sigma * f, prev_params, fresh)
    else:
        leaves, treedef = jax.tree.flatten(prev_params)
        keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
        params = jax.tree.unflatten(
            treedef,
            [lam * p + sigma * jax.random.normal(kk, jnp.shape(p), jnp.result_type(p)) for p, kk in zip(leaves, keys)],
        )
    return {"params": params, **state}
