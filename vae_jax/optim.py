"""The training state and the optimiser: what training builds and evaluation restores.

`TrainState` is everything a run checkpoints; `init_state` builds it from a model and an
optimiser, `eval_params` picks the parameters evaluation uses. `make_optimizer` is any optax
optimiser by name with its learning-rate schedule (`make_lr_schedule`), and
`apply_finite_update` applies it only when every gradient is finite, with the skips counted
in the layout of `optax.apply_if_finite`. Adam's scaling, the gradient norm and the finite
select come from `vae_jax.fastpath` (their CPU fast forms, or optax's).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from vae_jax import fastpath, models, objectives


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (all of it is checkpointed)."""

    step: jax.Array  # int32 []
    params: Any  # {"encoder": ..., "decoder": ...}
    opt_state: Any
    ema_params: Any  # same tree as params, or None when EMA is off


def init_state(init_key, vae, image_shape, optimizer, *, ema: bool,
               output_bias=None, objective_params=None) -> TrainState:
    """Initial parameters (`VAE.init` from `init_key`), optimiser state and step 0.

    `output_bias` [F], if given, replaces the decoder's zero output bias
    (`models.set_output_bias`; see `train.initial_output_bias`). `objective_params`, if not
    empty, are the objective's own parameters (FactorVAE's discriminator), kept at
    params["objective"] and trained by the optimiser's second part (`make_optimizer`).
    """
    params = vae.init(init_key, image_shape)
    if output_bias is not None:
        params = dict(params, decoder=models.set_output_bias(vae.decoder, params["decoder"],
                                                             output_bias))
    if objective_params:
        params = dict(params, objective=objective_params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=init_skip_state(optimizer, params),
        ema_params=params if ema else None,
    )


def eval_params(state: TrainState):
    """The parameters evaluation uses: the EMA when it is kept, else the live ones."""
    return state.ema_params if state.ema_params is not None else state.params


# --------------------------------------------------------------------------- schedules


BURDA_STAGES = 8  # Burda et al. 2015, section 5: stages i = 0 .. 7


def burda_stage_epochs(epoch_scale: float = 1.0) -> list[int]:
    """Epochs of stages i = 0 .. 7 of Burda et al.'s schedule: 3^i each, or
    max(1, round(epoch_scale * 3^i)) for a compressed version (their sum is the run's length)."""
    return [max(1, round(epoch_scale * 3**i)) for i in range(BURDA_STAGES)]


def burda_schedule(learning_rate: float, steps_per_epoch: int, epoch_scale: float = 1.0
                   ) -> Callable:
    """The learning-rate schedule of Burda et al. 2015 (section 5, "Training procedure").

        stage i = 0 .. 7 lasts 3^i epochs at learning_rate * 10^(-i / 7)

    3,280 epochs in all; the last rate (learning_rate / 10) is kept after them. `epoch_scale`
    < 1 shortens every stage in proportion (`burda_stage_epochs`) and keeps the eight rates.
    Built with `optax.piecewise_constant_schedule` on step counts.
    """
    boundaries, epochs = {}, 0
    for stage_epochs in burda_stage_epochs(epoch_scale)[:-1]:
        epochs += stage_epochs
        boundaries[epochs * steps_per_epoch] = 10.0 ** (-1.0 / 7.0)
    return optax.piecewise_constant_schedule(learning_rate, boundaries)


def make_lr_schedule(config: ml_collections.ConfigDict, *, steps_per_epoch: int | None = None
                     ) -> Callable:
    """Learning-rate schedule: constant, cosine decay, linear warm-up then cosine decay, or
    "burda" (`burda_schedule`, which needs `steps_per_epoch`)."""
    optim = config.optim
    name, lr, steps = optim.lr_schedule, optim.learning_rate, config.run.num_steps
    if name == "constant":
        return optax.constant_schedule(lr)
    if name == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=steps)
    if name == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup_steps=optim.lr_warmup_steps, decay_steps=steps
        )
    if name == "burda":
        if not steps_per_epoch:
            raise ValueError('lr_schedule="burda" counts epochs: pass steps_per_epoch')
        return burda_schedule(lr, steps_per_epoch, optim.burda_epoch_scale)
    raise ValueError(
        f"unknown lr_schedule {name!r}; valid: ['burda', 'constant', 'cosine', 'warmup_cosine']"
    )


# --------------------------------------------------------------------------- the optimiser


# The arguments of `config.optim` an optax optimiser gets when its signature takes them.
OPTIMIZER_ARGS = ("b1", "b2", "eps", "weight_decay", "momentum", "nesterov")


def optimizer_factory(name: str) -> Callable:
    """The optax optimiser `name` (a function taking `learning_rate`), or a clear error."""
    factory = getattr(optax, name, None)
    if not callable(factory) or "learning_rate" not in inspect.signature(factory).parameters:
        raise ValueError(
            f"unknown optimizer {name!r}: optim.name must be an optax optimiser that takes a "
            "learning_rate, e.g. 'adam', 'adamw', 'adamax', 'lion', 'sgd', 'nadam', 'rmsprop'")
    return factory


def make_optimizer(config: ml_collections.ConfigDict, *, steps_per_epoch: int | None = None
                   ) -> optax.GradientTransformation:
    """The optax optimiser `config.optim.name` with the learning-rate schedule and whichever of
    `OPTIMIZER_ARGS` its signature takes (momentum 0 means none), after optional gradient
    clipping. `train_step` skips non-finite updates around it (`apply_finite_update`).

    "adam" (without Nesterov momentum) is `optax.adam` written as its two parts, with Adam's
    scaling from `fastpath.scale_by_adam` (the fast form when the fast paths are on): the same
    state layout either way, so checkpoints of either form load into the other.

    An objective with parameters of its own (FactorVAE's discriminator, at params["objective"])
    brings its own optimiser (`objectives.objective_optimizer`): the two are combined with
    `optax.multi_transform`, so one update (and one finite-update guard) trains both and the
    optimiser state, checkpointed with the rest, holds both states.
    """
    main = _model_optimizer(config, steps_per_epoch=steps_per_epoch)
    second = objectives.objective_optimizer(config.objective)
    if second is None:
        return main
    return optax.multi_transform(
        {"model": main, "objective": second},
        lambda params: {k: "objective" if k == "objective" else "model" for k in params})


def _model_optimizer(config: ml_collections.ConfigDict, *, steps_per_epoch: int | None
                     ) -> optax.GradientTransformation:
    optim = config.optim
    schedule = make_lr_schedule(config, steps_per_epoch=steps_per_epoch)
    parts = []
    if optim.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
    if optim.name == "adam" and not optim.nesterov:
        # A nested chain, as optax.adam is.
        parts.append(optax.chain(
            fastpath.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps),
            optax.scale_by_learning_rate(schedule)))
    else:
        factory = optimizer_factory(optim.name)
        accepted = inspect.signature(factory).parameters
        kwargs = {arg: optim[arg] for arg in OPTIMIZER_ARGS if arg in accepted}
        if "momentum" in kwargs and not kwargs["momentum"]:
            kwargs["momentum"] = None
        parts.append(factory(learning_rate=schedule, **kwargs))
    return optax.chain(*parts)


def init_skip_state(optimizer: optax.GradientTransformation, params) -> optax.ApplyIfFiniteState:
    """The optimiser state of a run: `optimizer`'s state plus counters of skipped updates, in
    the layout of `optax.apply_if_finite` (`notfinite_count` consecutive skips,
    `total_notfinite` in all, `last_finite` whether the last update was applied)."""
    return optax.ApplyIfFiniteState(
        notfinite_count=jnp.zeros([], jnp.int32),
        last_finite=jnp.array(True),
        total_notfinite=jnp.zeros([], jnp.int32),
        inner_state=optimizer.init(params),
    )


def apply_finite_update(optimizer: optax.GradientTransformation, grads, params,
                        opt_state: optax.ApplyIfFiniteState, *, branch: bool = True,
                        grad_norm: jax.Array | None = None):
    """One optimiser update if every gradient is finite; otherwise parameters and moments stay
    exactly as they were and the skip is counted. Returns `(params, opt_state)`.

    The behaviour of `optax.apply_if_finite` (the run stops after `max_consecutive_skips`, see
    `train.train_and_evaluate`). Finiteness is read from the global norm (one reduction: it is
    NaN or inf iff some gradient is); pass `grad_norm` when the caller has computed it already.
    `branch`: whether the step runs inside a `lax.scan` of several steps, where
    `fastpath.where_finite`'s fast form is a `lax.cond` around the whole update.
    """
    if grad_norm is None:
        grad_norm = fastpath.global_norm(grads)
    finite = jnp.isfinite(grad_norm)

    def update():
        updates, inner_state = optimizer.update(grads, opt_state.inner_state, params)
        return optax.apply_updates(params, updates), inner_state

    new_params, inner_state = fastpath.where_finite(
        finite, update, lambda: (params, opt_state.inner_state), scanned=branch)
    return new_params, optax.ApplyIfFiniteState(
        notfinite_count=jnp.where(finite, 0, opt_state.notfinite_count + 1),
        last_finite=finite,
        total_notfinite=opt_state.total_notfinite + jnp.where(finite, 0, 1),
        inner_state=inner_state,
    )
