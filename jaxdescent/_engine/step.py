"""One optimisation step: measure the loss and gradient, then apply the optimizer's update."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxdescent.losses import NLL


def as_extra_args(
    optimizer: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    """``optimizer`` as a transformation whose ``update`` accepts extra keyword arguments."""
    if isinstance(optimizer, optax.GradientTransformationExtraArgs):
        return optimizer
    if _takes_extra_args(optimizer.update):  # e.g. optax.MultiSteps, which forwards them
        return optax.GradientTransformationExtraArgs(optimizer.init, optimizer.update)
    return optax.with_extra_args_support(optimizer)


def _takes_extra_args(update) -> bool:
    try:
        parameters = inspect.signature(update).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def global_norm(tree: Any) -> jax.Array:
    """Euclidean norm of all leaves together, ``sqrt(sum_i ||x_i||^2)`` (``|x|^2`` for
    complex leaves)."""
    return jnp.sqrt(sum(jnp.sum(_abs2(x)) for x in jax.tree.leaves(tree)))


def _abs2(x: jax.Array) -> jax.Array:
    if jnp.iscomplexobj(x):
        return jnp.real(x) ** 2 + jnp.imag(x) ** 2
    return jnp.square(x)


def value_fn_for(loss: Callable, batch: Any) -> Callable:
    """The loss on ``batch`` as a function of the params (``loss(params)`` without data)."""
    return loss if batch is None else functools.partial(_call_with_batch, loss, batch)


def _call_with_batch(loss, batch, params):
    return loss(params, batch)


def measure(loss: Callable, params: Any, batch: Any) -> tuple[jax.Array, Any]:
    """``(value, grads)`` of ``loss`` at ``params`` on ``batch``."""
    return jax.value_and_grad(value_fn_for(loss, batch))(params)


def apply_update(
    loss: Callable,
    optimizer: optax.GradientTransformationExtraArgs,
    params: Any,
    opt_state: Any,
    batch: Any,
    value: jax.Array,
    grads: Any,
) -> tuple[Any, Any]:
    """``(new_params, new_state)`` from the optimizer's update. It receives ``value_fn`` (the
    loss on this batch as a function of params), ``value`` and ``grad``, and for a loss built
    by :func:`jaxdescent.losses.nll` also ``model_fn``, ``likelihood`` and ``targets``
    (:meth:`jaxdescent.losses.NLL.rule_extras`), which curvature rules use."""
    extras = loss.rule_extras(batch) if isinstance(loss, NLL) and batch is not None else {}
    updates, new_state = optimizer.update(
        grads, opt_state, params, value_fn=value_fn_for(loss, batch), value=value, grad=grads,
        **extras,
    )  # fmt: skip
    return optax.apply_updates(params, updates), new_state


def make_step(loss: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """One optimisation step: ``step(params, opt_state, batch=None)``.

    Returns ``(new_params, new_opt_state, loss_value, grad_norm)``, where the loss and the
    gradient norm are those at the *incoming* params. ``batch=None`` calls ``loss(params)``,
    otherwise ``loss(params, batch)``.
    """
    opt = as_extra_args(optimizer)

    def step(params, opt_state, batch=None):
        value, grads = measure(loss, params, batch)
        new_params, new_state = apply_update(loss, opt, params, opt_state, batch, value, grads)
        return new_params, new_state, value, global_norm(grads)

    return step


def stall_test(optimizer: optax.GradientTransformation) -> Callable | None:
    """The rule's test ``stalled(opt_state) -> bool`` (``None`` when it reports none).

    A rule sets it (:func:`jaxdescent.optim._common.curvature_rule`) when its state can show
    that no later update will change the params, e.g. a trust radius that fell below the
    params' rounding with no step taken. Full-batch runs then end ``STALLED`` at once instead
    of spending the rest of their budget standing still.
    """
    return getattr(optimizer.update, "stalled", None)
