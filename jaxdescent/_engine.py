"""The compiled loop shared by :func:`jaxdescent.fit` and :func:`jaxdescent.multistart`.

One *chunk* is a ``lax.while_loop`` over up to ``chunk_len`` steps that stops as soon as the
run has ended (converged, out of steps, or non-finite); under ``vmap`` it stops once every
run has ended, and runs that ended earlier are frozen. Python only runs between chunks.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxdescent import data as data_lib


class Status(enum.IntEnum):
    """How a run ended (``RUNNING`` only while it goes on)."""

    RUNNING = 0
    CONVERGED = 1
    MAX_STEPS = 2
    NONFINITE = 3


class Carry(NamedTuple):
    """Everything a run needs to continue; saved whole in checkpoints."""

    params: Any
    opt_state: Any
    prev_params: Any  # params before the last accepted update (restored on non-finite)
    iteration: jax.Array  # loop iterations run (loss and gradient evaluations)
    updates: jax.Array  # updates applied to ``params``
    status: jax.Array
    key: jax.Array
    perm: jax.Array  # this epoch's example order (empty for full batch)


def as_extra_args(
    optimizer: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    if isinstance(optimizer, optax.GradientTransformationExtraArgs):
        return optimizer
    return optax.with_extra_args_support(optimizer)


def make_step(loss: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """One optimisation step: ``step(params, opt_state, batch=None)``.

    Returns ``(new_params, new_opt_state, loss_value, grad_norm)``, where the loss and the
    gradient norm are those at the *incoming* params. ``batch=None`` calls ``loss(params)``,
    otherwise ``loss(params, batch)``. The optimizer receives ``value_fn`` (the loss on
    this batch as a function of params), ``value`` and ``grad`` as extra arguments, which
    second-order rules and line searches use (and optax's ``lbfgs``).
    """
    opt = as_extra_args(optimizer)

    def step(params, opt_state, batch=None):
        value_fn = loss if batch is None else functools.partial(_call_with_batch, loss, batch)
        value, grads = jax.value_and_grad(value_fn)(params)
        updates, opt_state = opt.update(
            grads, opt_state, params, value_fn=value_fn, value=value, grad=grads
        )
        return optax.apply_updates(params, updates), opt_state, value, global_norm(grads)

    return step


def global_norm(tree) -> jax.Array:
    """Euclidean norm of all leaves together, ``sqrt(sum_i ||x_i||^2)``."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _call_with_batch(loss, batch, params):
    return loss(params, batch)


def init_carry(params, opt_state, key, n: int, batch_size: int | None) -> Carry:
    zero = jnp.zeros([], jnp.int32)
    perm_size = 0 if batch_size is None else n
    return Carry(
        params=params,
        opt_state=opt_state,
        prev_params=params,
        iteration=zero,
        updates=zero,
        status=zero,
        key=key,
        perm=jnp.zeros((perm_size,), jnp.int32),
    )


def _select(pred, on_true, on_false):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _chunk(carry, data, tol, total_steps, chunk_steps, *, loss, optimizer, batch_size, chunk_len):
    """Run up to ``chunk_steps`` (<= ``chunk_len``) steps; record loss and gradient norm."""
    step = make_step(loss, optimizer)
    n = 0 if data is None else data_lib.num_examples(data)
    per_epoch = None if batch_size is None else data_lib.batches_per_epoch(n, batch_size)
    dtype = jnp.result_type(*jax.tree.leaves(carry.params))
    history = (jnp.full((chunk_len,), jnp.nan, dtype), jnp.full((chunk_len,), jnp.nan, dtype))

    def cond(state):
        c, _, i = state
        return (i < chunk_steps) & (c.status == Status.RUNNING)

    def body(state):
        c, (losses, norms), i = state
        if batch_size is None:
            batch, perm = data, c.perm
        else:
            within = c.iteration % per_epoch
            perm = jax.lax.cond(
                within == 0,
                lambda: data_lib.epoch_permutation(c.key, c.iteration // per_epoch, n),
                lambda: c.perm,
            )
            batch = data_lib.take_batch(data, perm, within, batch_size)
        new_params, new_state, value, norm = step(c.params, c.opt_state, batch)
        finite = jnp.isfinite(value) & jnp.isfinite(norm)
        converged = finite & (norm < tol)
        accept = finite & ~converged
        iteration = c.iteration + 1
        status = jnp.where(
            ~finite,
            Status.NONFINITE,
            jnp.where(
                converged,
                Status.CONVERGED,
                jnp.where(iteration >= total_steps, Status.MAX_STEPS, Status.RUNNING),
            ),
        ).astype(jnp.int32)
        kept = _select(finite, c.params, c.prev_params)
        new_c = Carry(
            params=_select(accept, new_params, kept),
            opt_state=_select(accept, new_state, c.opt_state),
            prev_params=_select(accept, c.params, c.prev_params),
            iteration=iteration,
            updates=c.updates + accept.astype(jnp.int32) - (~finite).astype(jnp.int32),
            status=status,
            key=c.key,
            perm=perm,
        )
        history = (losses.at[i].set(value.astype(dtype)), norms.at[i].set(norm.astype(dtype)))
        return new_c, history, i + 1

    carry, history, _ = jax.lax.while_loop(cond, body, (carry, history, jnp.zeros([], jnp.int32)))
    return carry, history


def _finish(carry, data, *, loss):
    """Loss at the final params on the whole data; a non-finite one rolls back one update."""

    def value_at(params):
        return loss(params) if data is None else loss(params, data)

    value = value_at(carry.params)
    bad = ~jnp.isfinite(value)
    params = _select(bad, carry.prev_params, carry.params)
    value = jax.lax.cond(bad, lambda: value_at(params), lambda: value)
    status = jnp.where(bad, Status.NONFINITE, carry.status).astype(jnp.int32)
    updates = carry.updates - (bad & (carry.status != Status.NONFINITE)).astype(jnp.int32)
    return carry._replace(params=params, status=status, updates=jnp.maximum(updates, 0)), value


@functools.lru_cache(maxsize=128)
def compiled(loss, optimizer, batch_size, chunk_len, batched: bool, donate: bool = False):
    """The jitted chunk and finish functions for one configuration (cached: no retrace)."""
    chunk = functools.partial(
        _chunk, loss=loss, optimizer=optimizer, batch_size=batch_size, chunk_len=chunk_len
    )
    finish = functools.partial(_finish, loss=loss)
    if batched:
        chunk = jax.vmap(chunk, in_axes=(0, None, None, None, None))
        finish = jax.vmap(finish, in_axes=(0, None))
    return jax.jit(chunk), jax.jit(finish)
