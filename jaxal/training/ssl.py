"""Semi-supervised training for active learning: pseudo-labelling, Mean Teacher, FixMatch.

Every trainer minimises ``L_sup + w(t) · L_unsup`` with optax over a fixed number of
steps. One step draws (with replacement) a labeled batch of ``B =
train_config.batch_size`` and an unlabeled batch of ``μB`` (``μ =
SSLConfig.unlabeled_ratio``), augments them, and runs one forward pass in training
mode over the concatenation (so BatchNorm sees labeled and unlabeled data together).
All steps run inside one jitted ``lax.scan``.

- ``pseudo_label`` (Lee, 2013, with a confidence threshold): unlabeled examples whose
  max softmax probability ≥ ``threshold`` are trained with cross-entropy on their
  hard pseudo-label ``argmax p`` (targets from the same forward pass, gradient
  stopped); ``w(t) = unlabeled_weight · sigmoid_rampup(t, rampup)``.
- ``mean_teacher`` (Tarvainen & Valpola, 2017): teacher = EMA of the student,
  ``θ' ← α θ' + (1 − α) θ`` with ``α_t = min(1 − 1/(t + 1), ema_decay)`` (the paper's
  code: a plain average early on); consistency ``mean_{x, c} (softmax f_θ(v1)_c −
  softmax f_θ'(v2)_c)²`` between two independently augmented views of every example
  in the batch (labeled and unlabeled); ``w(t) = consistency_weight ·
  sigmoid_rampup(t, rampup)``. BatchNorm statistics are averaged like the params.
  The *teacher* is returned (the paper evaluates it).
- ``fixmatch`` (Sohn et al., 2020): pseudo-label ``argmax p(weak view)`` kept where
  ``max p ≥ threshold`` (the mask), cross-entropy of the *strong* view's logits on
  it, averaged over all ``μB`` unlabeled examples (masked ones count as zero);
  constant ``w = unlabeled_weight`` (no ramp-up, as in the paper).

The supervised term is ``train_config.loss`` (cross-entropy or squared) on the weakly
augmented labeled batch; the unlabeled terms are always as above.

Stop rule: a fixed number of steps (``SSLConfig.steps``). Unlike supervised training
this does *not* stop at ``target_accuracy`` training accuracy: the labeled set is fit
early and the unlabeled terms keep improving the model after that.
``TrainResult.epochs`` reports labeled-set passes, ``ceil(steps·B / n_labeled)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Mapping, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxal.training import augment as aug_lib
from jaxal.training.train import TrainConfig, TrainResult, evaluate, loss_fn, make_optimizer, train
from jaxal.validation import check_choice, check_finite, check_labels, check_nonempty, check_same_length

Array = jax.Array

__all__ = [
    "SSLConfig",
    "SSLInfo",
    "SSL_TRAINERS",
    "trainers",
    "get_trainer",
    "train_ssl",
    "train_ssl_with_info",
    "sigmoid_rampup",
    "ema_update",
    "fixmatch_mask",
    "pseudo_label_targets",
    "masked_cross_entropy",
    "fixmatch_unlabeled_loss",
    "pseudo_label_loss",
    "consistency_loss",
]

SSL_TRAINERS = ("pseudo_label", "mean_teacher", "fixmatch")


# --------------------------------------------------------------------------- pure pieces


def sigmoid_rampup(step: Any, length: float) -> Array:
    """Mean Teacher's ramp-up ``exp(−5 (1 − T)²)``, ``T = clip(step / length, 0, 1)``;
    1 when ``length <= 0``. Goes from ``e⁻⁵ ≈ 0.0067`` at step 0 to 1 at ``length``."""
    if length <= 0:
        return jnp.asarray(1.0)
    t = jnp.clip(jnp.asarray(step, jnp.float32) / length, 0.0, 1.0)
    return jnp.exp(-5.0 * (1.0 - t) ** 2)


def ema_update(teacher: Any, student: Any, decay: Any) -> Any:
    """``θ_teacher ← decay · θ_teacher + (1 − decay) · θ_student``, leaf by leaf."""
    return jax.tree.map(lambda t, s: decay * t + (1 - decay) * s, teacher, student)


def fixmatch_mask(probs_weak: Array, threshold: float) -> Array:
    """``[n]`` float mask: 1 where ``max_c p_c ≥ threshold`` (a confident example)."""
    return (jnp.max(probs_weak, axis=-1) >= threshold).astype(probs_weak.dtype)


def pseudo_label_targets(probs: Array, threshold: float) -> tuple[Array, Array]:
    """Hard pseudo-labels ``argmax p [n]`` (int32) and the confidence mask ``[n]``."""
    return jnp.argmax(probs, axis=-1).astype(jnp.int32), fixmatch_mask(probs, threshold)


def masked_cross_entropy(logits: Array, labels: Array, mask: Array) -> Array:
    """``mean_i mask_i · CE(logits_i, labels_i)`` over *all* ``n`` rows (masked rows
    count as zeros, the FixMatch normalisation)."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.mean(mask * ce)


def fixmatch_unlabeled_loss(logits_strong: Array, probs_weak: Array, threshold: float) -> Array:
    """FixMatch's unlabeled loss: CE of the strong view on the weak view's confident
    pseudo-labels. ``probs_weak`` is a target (gradient stopped), so an example below
    the threshold gives exactly zero gradient."""
    labels, mask = pseudo_label_targets(jax.lax.stop_gradient(probs_weak), threshold)
    return masked_cross_entropy(logits_strong, labels, mask)


def pseudo_label_loss(logits: Array, threshold: float) -> Array:
    """Pseudo-labelling's unlabeled loss: CE on the model's own confident hard labels
    (targets from the same logits, gradient stopped)."""
    return fixmatch_unlabeled_loss(logits, jax.nn.softmax(logits, axis=-1), threshold)


def consistency_loss(logits_student: Array, logits_teacher: Array) -> Array:
    """Mean Teacher's consistency: ``mean_{i,c} (softmax(s)_ic − softmax(t)_ic)²``,
    teacher gradient stopped."""
    ps = jax.nn.softmax(logits_student, axis=-1)
    pt = jax.nn.softmax(jax.lax.stop_gradient(logits_teacher), axis=-1)
    return jnp.mean((ps - pt) ** 2)


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class SSLConfig:
    """Semi-supervised settings (optimiser, learning rate, batch size and supervised
    loss come from the :class:`~jaxal.training.train.TrainConfig`).

    Attributes:
      steps: optimisation steps (the stop rule; no accuracy target).
      unlabeled_ratio: ``μ``, unlabeled examples per labeled example in a step (the
        FixMatch paper uses 7; 3 keeps CPU runs cheap).
      threshold: confidence ``τ`` for pseudo_label and fixmatch.
      unlabeled_weight: ``λ_u``, weight of the unlabeled loss (pseudo_label: its
        ramped-up maximum; fixmatch: constant).
      consistency_weight: Mean Teacher's maximum consistency weight.
      rampup_fraction: ramp-up length as a fraction of ``steps`` (pseudo_label,
        mean_teacher).
      ema_decay: Mean Teacher's EMA decay ``α``.
      augment: ``(weak, strong)`` augmentations (:mod:`jaxal.training.augment`), e.g.
        ``augment.for_dataset("digits")``; ``None`` uses ``for_dataset("generic")``
        (noise and scaling). Mean Teacher uses ``weak`` for both views.
    """

    steps: int = 500
    unlabeled_ratio: int = 3
    threshold: float = 0.95
    unlabeled_weight: float = 1.0
    consistency_weight: float = 10.0
    rampup_fraction: float = 0.3
    ema_decay: float = 0.99
    augment: tuple[Callable, Callable] | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "unlabeled_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if not 0 <= self.rampup_fraction <= 1:
            raise ValueError(f"rampup_fraction must be in [0, 1], got {self.rampup_fraction}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.unlabeled_weight < 0 or self.consistency_weight < 0:
            raise ValueError("unlabeled_weight and consistency_weight must be >= 0")
        if self.augment is not None and (len(self.augment) != 2 or not all(map(callable, self.augment))):
            raise ValueError("augment must be a (weak, strong) pair of functions (key, x) -> x")


class SSLInfo(NamedTuple):
    """Per-step diagnostics of an SSL run (numpy arrays ``[steps]``).

    Attributes:
      loss: total loss ``L_sup + w(t) L_unsup``.
      supervised_loss: ``L_sup`` on the labeled batch.
      unlabeled_loss: ``L_unsup`` (unweighted).
      mask_rate: share of unlabeled examples above the threshold (pseudo_label,
        fixmatch; 1 for mean_teacher).
    """

    loss: np.ndarray
    supervised_loss: np.ndarray
    unlabeled_loss: np.ndarray
    mask_rate: np.ndarray


# --------------------------------------------------------------------------- training


def _forward(module: nn.Module, params: Any, state: dict, x: Array, key: Array) -> tuple[Array, dict]:
    """Training-mode logits and updated non-param collections (BatchNorm stats)."""
    mutable = list(state) or False
    out = module.apply({"params": params, **state}, x, train=True, rngs={"dropout": key}, mutable=mutable)
    logits, new_state = out if mutable else (out, {})
    return logits, {**state, **new_state}


def _make_step(module: nn.Module, trainer: str, tc: TrainConfig, sc: SSLConfig, num_classes: int, tx, data):
    """One SSL step ``(carry, (t, key)) -> (carry, metrics)`` on ``data = (x_l, y_l, x_u)``.

    ``carry = (params, state, opt_state, teacher)``, ``teacher = (params, state)``
    (only updated by mean_teacher); metrics ``(loss, sup, unsup, mask_rate)``.
    """
    x_l, y_l, x_u = data
    weak, strong = sc.augment if sc.augment is not None else aug_lib.for_dataset("generic")
    b, mu = tc.batch_size, sc.unlabeled_ratio
    rampup = sc.rampup_fraction * sc.steps

    def sup_loss(logits, y):
        return jnp.mean(loss_fn(tc.loss, logits, y, num_classes))

    def step(carry, inputs):
        params, state, opt_state, teacher = carry
        t, key = inputs
        k_il, k_iu, k_w1, k_w2, k_s, k_d1, k_d2 = jax.random.split(key, 7)
        il = jax.random.randint(k_il, (b,), 0, x_l.shape[0])
        iu = jax.random.randint(k_iu, (mu * b,), 0, x_u.shape[0])
        yl, xu = y_l[il], x_u[iu]

        if trainer == "fixmatch":
            batch = jnp.concatenate([weak(k_w1, x_l[il]), weak(k_w2, xu), strong(k_s, xu)])

            def loss_of(p):
                logits, new_state = _forward(module, p, state, batch, k_d1)
                lw, lu_w, lu_s = logits[:b], logits[b : b + mu * b], logits[b + mu * b :]
                probs_w = jax.lax.stop_gradient(jax.nn.softmax(lu_w, axis=-1))
                ls = sup_loss(lw, yl)
                lu = fixmatch_unlabeled_loss(lu_s, probs_w, sc.threshold)
                rate = jnp.mean(fixmatch_mask(probs_w, sc.threshold))
                return ls + sc.unlabeled_weight * lu, (new_state, ls, lu, rate)

        elif trainer == "pseudo_label":
            batch = jnp.concatenate([weak(k_w1, x_l[il]), weak(k_w2, xu)])
            w = sc.unlabeled_weight * sigmoid_rampup(t, rampup)

            def loss_of(p):
                logits, new_state = _forward(module, p, state, batch, k_d1)
                ls = sup_loss(logits[:b], yl)
                lu = pseudo_label_loss(logits[b:], sc.threshold)
                probs = jax.nn.softmax(jax.lax.stop_gradient(logits[b:]), axis=-1)
                return ls + w * lu, (new_state, ls, lu, jnp.mean(fixmatch_mask(probs, sc.threshold)))

        else:  # mean_teacher: two weak views of every example, labeled and unlabeled
            x_all = jnp.concatenate([x_l[il], xu])
            v1, v2 = weak(k_w1, x_all), weak(k_w2, x_all)
            w = sc.consistency_weight * sigmoid_rampup(t, rampup)
            t_logits, _ = _forward(module, teacher[0], teacher[1], v2, k_d2)

            def loss_of(p):
                logits, new_state = _forward(module, p, state, v1, k_d1)
                ls = sup_loss(logits[:b], yl)
                lu = consistency_loss(logits, t_logits)
                return ls + w * lu, (new_state, ls, lu, jnp.ones((), ls.dtype))

        (loss, (new_state, ls, lu, rate)), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if trainer == "mean_teacher":
            alpha = jnp.minimum(1.0 - 1.0 / (t + 1.0), sc.ema_decay)
            teacher = ema_update(teacher, (params, new_state), alpha)
        return (params, new_state, opt_state, teacher), (loss, ls, lu, rate)

    return step


@functools.lru_cache(maxsize=32)
def _run_fn(module: nn.Module, trainer: str, tc: TrainConfig, sc: SSLConfig, num_classes: int):
    """A jitted ``run(params, state, key, x_l, y_l, x_u) -> ((params, state), metrics [steps])``;
    the returned variables are the teacher's for mean_teacher, else the student's."""
    tx = make_optimizer(tc)

    @jax.jit
    def run(params, state, key, x_l, y_l, x_u):
        step = _make_step(module, trainer, tc, sc, num_classes, tx, (x_l, y_l, x_u))
        ts = jnp.arange(sc.steps, dtype=jnp.float32)
        keys = jax.random.split(key, sc.steps)
        carry = (params, state, tx.init(params), (params, state))
        (params, state, _, teacher), metrics = jax.lax.scan(step, carry, (ts, keys))
        return (teacher if trainer == "mean_teacher" else (params, state)), metrics

    return run


def _check_inputs(x_l: Any, y_l: Any, x_u: Any, num_classes: int) -> None:
    check_nonempty("x_labeled", x_l)
    check_same_length(x_labeled=x_l, y_labeled=y_l)
    check_finite("x_labeled", x_l)
    check_finite("x_unlabeled", x_u)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    check_labels("y_labeled", np.asarray(y_l), int(num_classes))
    if np.shape(x_u)[0] > 0 and np.shape(x_u)[1:] != np.shape(x_l)[1:]:
        raise ValueError(
            f"x_unlabeled rows have shape {np.shape(x_u)[1:]} but x_labeled rows have shape {np.shape(x_l)[1:]}"
        )


def train_ssl_with_info(
    key: Array,
    module: nn.Module,
    variables: Mapping[str, Any],
    x_labeled: Any,
    y_labeled: Any,
    x_unlabeled: Any,
    num_classes: int,
    config: SSLConfig = SSLConfig(),
    *,
    trainer: str = "fixmatch",
    train_config: TrainConfig = TrainConfig(),
    augment: tuple[Callable, Callable] | None = None,
) -> tuple[TrainResult, SSLInfo]:
    """:func:`train_ssl` that also returns the per-step :class:`SSLInfo`."""
    t0 = time.perf_counter()
    check_choice("trainer", trainer, SSL_TRAINERS)
    if not isinstance(config, SSLConfig):
        raise ValueError(f"config must be an SSLConfig, got {type(config).__name__}")
    if not isinstance(train_config, TrainConfig):
        raise ValueError(f"train_config must be a TrainConfig, got {type(train_config).__name__}")
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError("variables must be a mapping with a 'params' collection")
    _check_inputs(x_labeled, y_labeled, x_unlabeled, num_classes)
    if augment is not None:
        config = dataclasses.replace(config, augment=tuple(augment))
    x_l = np.asarray(x_labeled, np.float32)
    y_l = np.asarray(y_labeled, np.int32)
    # an empty pool leaves only the labeled data to be "unlabeled" (consistency on it)
    x_u = np.asarray(x_unlabeled, np.float32) if np.shape(x_unlabeled)[0] > 0 else x_l
    variables = flax.core.unfreeze(variables)
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    run = _run_fn(module, trainer, train_config, config, int(num_classes))
    (params, state), metrics = run(params, state, key, jnp.asarray(x_l), jnp.asarray(y_l), jnp.asarray(x_u))
    out = {"params": params, **state}
    acc, loss = evaluate(module, out, x_l, y_l, int(num_classes), train_config.loss)
    result = TrainResult(
        variables=out,
        epochs=math.ceil(config.steps * train_config.batch_size / x_l.shape[0]),
        train_accuracy=acc,
        train_loss=loss,
        seconds=time.perf_counter() - t0,
        reached_target=bool(acc >= train_config.target_accuracy),
    )
    return result, SSLInfo(*(np.asarray(m) for m in metrics))


def train_ssl(
    key: Array,
    module: nn.Module,
    variables: Mapping[str, Any],
    x_labeled: Any,
    y_labeled: Any,
    x_unlabeled: Any,
    num_classes: int,
    config: SSLConfig = SSLConfig(),
    *,
    trainer: str = "fixmatch",
    train_config: TrainConfig = TrainConfig(),
    augment: tuple[Callable, Callable] | None = None,
) -> TrainResult:
    """Train ``module`` from ``variables`` on labeled ``(x_labeled [L, ...], y_labeled
    [L])`` and unlabeled ``x_unlabeled [U, ...]`` with a semi-supervised ``trainer``
    (``"pseudo_label"``, ``"mean_teacher"`` or ``"fixmatch"``; module docstring).

    ``train_config`` supplies optimiser, learning rate, batch size ``B`` and the
    supervised loss (its ``max_epochs``/``target_accuracy`` are not used: the run is
    ``config.steps`` steps). ``augment`` overrides ``config.augment``. ``key`` drives
    batches, augmentations and dropout. The result's accuracy and loss are measured on
    the labeled set in inference mode.
    """
    return train_ssl_with_info(
        key, module, variables, x_labeled, y_labeled, x_unlabeled, num_classes, config,
        trainer=trainer, train_config=train_config, augment=augment,
    )[0]


# --------------------------------------------------------------------------- registry

Trainer = Callable[..., TrainResult]


def _supervised(key, module, variables, x_l, y_l, x_u, num_classes, train_config, ssl_config) -> TrainResult:
    del x_u, ssl_config  # plain supervised training ignores the pool
    return train(key, module, variables, x_l, y_l, num_classes, train_config)


def _ssl_trainer(name: str) -> Trainer:
    def fn(key, module, variables, x_l, y_l, x_u, num_classes, train_config, ssl_config) -> TrainResult:
        return train_ssl(
            key, module, variables, x_l, y_l, x_u, num_classes, ssl_config, trainer=name, train_config=train_config
        )

    fn.__name__ = name
    return fn


_TRAINERS: dict[str, Trainer] = {"supervised": _supervised, **{n: _ssl_trainer(n) for n in SSL_TRAINERS}}


def trainers() -> list[str]:
    """Names accepted by :func:`get_trainer`."""
    return list(_TRAINERS)


def get_trainer(name: str) -> Trainer:
    """The trainer ``name`` with the common signature the loop calls::

        fn(key, module, variables, x_l, y_l, x_u, num_classes,
           train_config: TrainConfig, ssl_config: SSLConfig) -> TrainResult

    (``"supervised"`` ignores ``x_u`` and ``ssl_config`` and stops by
    ``train_config``'s accuracy target; the SSL trainers run ``ssl_config.steps``).
    """
    check_choice("trainer", name, _TRAINERS)
    return _TRAINERS[name]
