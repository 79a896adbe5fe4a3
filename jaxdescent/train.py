"""``fit``: a whole optimisation run as compiled XLA programs.

The run is a ``lax.while_loop`` over steps inside jit, in chunks of ``chunk_size`` steps
that reuse one compiled program; Python runs only between chunks (progress bar, checkpoints,
early exit). Mini-batches are drawn on device (:mod:`jaxdescent.data`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import optax

from jaxdescent._checks import check_callable, check_int
from jaxdescent._engine.checks import as_key, check_optimizer, check_problem, shard_examples
from jaxdescent._engine.driver import check_chunk, drive
from jaxdescent._engine.loop import init_carry
from jaxdescent._engine.loop import make_step as _make_step
from jaxdescent.results import FitResult, Status

__all__ = ["FitResult", "Status", "fit", "make_step"]


def make_step(loss: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """The pure step function :func:`fit` uses, for users who write their own loops.

    ``step(params, opt_state, batch=None) -> (params, opt_state, loss, grad_norm)``; the loss
    and gradient norm are those at the incoming params. Pair it with
    :func:`jaxdescent.data.batch_at` to draw the same batches as ``fit``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxdescent as jd
      >>> opt = jd.optim.sgd(0.25)
      >>> step = jax.jit(jd.make_step(lambda x: x ** 2, opt))
      >>> x = jnp.array(2.3)
      >>> x, state, value, _ = step(x, opt.init(x))
      >>> print(f"{float(x):.2f}")
      1.15
    """
    check_callable("loss", loss)
    check_optimizer(optimizer)
    return _make_step(loss, optimizer)


def fit(
    loss: Callable,
    params: Any,
    optimizer: optax.GradientTransformation,
    *,
    data: Any = None,
    steps: int,
    batch_size: int | None = None,
    key: jax.Array | None = None,
    tol: float | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    shard_data: bool = False,
) -> FitResult:
    r"""Minimise ``loss`` from ``params`` with ``optimizer``, as one compiled loop.

    Each step evaluates the loss and its gradient at the current params (on this step's
    batch), then applies the optimizer's update:

    .. math:: \theta_{t+1} = \theta_t + u_t, \qquad (u_t, s_{t+1}) = \mathrm{update}(\nabla L_{B_t}(\theta_t), s_t, \theta_t)

    Args:
      loss: ``loss(params)`` when ``data`` is None, else ``loss(params, batch)``; a scalar.
      params: initial parameters, any pytree of floating-point arrays.
      optimizer: any optax transformation (jaxdescent's rules, optax's, or chains). It
        receives ``value_fn`` (the loss on this batch as a function of params), ``value``
        and ``grad`` as extra arguments, so Newton methods and line searches run here too.
      data: a pytree of arrays sharing a leading axis of ``n`` examples, e.g. ``(x, y)``.
      steps: the step budget (at least 1). With ``tol``, a converged run stops early and
        the remaining steps are not computed.
      batch_size: ``None`` for full-batch gradient descent, ``1`` for SGD, else mini-batch
        gradient descent. Batches come from a fresh permutation each epoch (drawn from
        ``key``); an epoch has ``n // batch_size`` batches, and the ``n % batch_size`` examples
        last in that epoch's order sit that epoch out (see :mod:`jaxdescent.data`).
      key: PRNG key for the batch order (default ``jax.random.key(0)``).
      tol: stop when the gradient norm falls below ``tol`` (status ``CONVERGED``); the
        params are then those at which it was measured.
      chunk_size: steps per compiled chunk. Defaults to the whole run in one chunk, or about
        20 chunks with ``progress`` or checkpoints. It does not change the results.
      progress: show a tqdm progress bar, updated between chunks.
      checkpoint_dir: a folder to save (params, optimizer state, step, key, history) into,
        as ``checkpoint.jdc``, every ``checkpoint_every`` chunks and at the end, each save
        atomic (:mod:`jaxdescent.checkpoint`).
      resume: continue from the checkpoint in ``checkpoint_dir`` if there is one (else start
        afresh); the resumed run equals an uninterrupted one bit for bit. Its params, state
        and key come from the checkpoint; a run that had used up its steps goes on to a
        larger ``steps``. A checkpoint written for other data sizes, batch size or number of
        steps beyond ``steps`` is refused.
      shard_data: place the data split along its example axis over all local devices (data
        parallelism; the example count must divide evenly).

    Returns:
      A :class:`FitResult`. A non-finite loss or gradient never reaches the params: the run
      stops with status ``NONFINITE`` and returns the last params at which both were finite.

    Example:
      >>> import jax.numpy as jnp, jaxdescent as jd
      >>> res = jd.fit(lambda x: jnp.sum((x - 3.0) ** 2), jnp.zeros(2), jd.optim.sgd(0.1),
      ...              steps=200, tol=1e-4)
      >>> jd.Status(int(res.status)).name, [round(float(v), 4) for v in res.params]
      ('CONVERGED', [3.0, 3.0])
    """
    check_optimizer(optimizer)
    n = check_problem(loss, params, data, batch_size, steps, tol)
    chunk = check_chunk(chunk_size, steps, progress, checkpoint_dir)
    checkpoint_every = check_int("checkpoint_every", checkpoint_every, minimum=1)
    key = as_key(key)
    if shard_data and data is not None:
        data = shard_examples(data, n)
    opt_state = optimizer.init(params)
    carry = init_carry(params, opt_state, key, n, batch_size)
    carry, (losses, norms), final = drive(
        carry,
        data,
        loss=loss,
        optimizer=optimizer,
        steps=steps,
        batch_size=batch_size,
        tol=tol,
        chunk=chunk,
        batched=False,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        resume=resume,
    )
    return FitResult(
        params=carry.params,
        opt_state=carry.opt_state,
        losses=losses,
        grad_norms=norms,
        steps_taken=carry.updates,
        status=carry.status,
        final_loss=final,
    )
