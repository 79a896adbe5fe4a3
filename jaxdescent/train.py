"""``fit``: a whole optimisation run, driven from the host.

The run is the core loop of :func:`jaxdescent.solve` (one ``lax.while_loop`` over steps),
compiled once per configuration and run in chunks of ``chunk_size`` steps; Python runs only
between chunks (progress bar, callbacks, traces, checkpoints). Mini-batches are drawn on
device (:mod:`jaxdescent.data`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import jax
import optax

from jaxdescent._checks import check_bool, check_callable, check_int
from jaxdescent._engine import core
from jaxdescent._engine.checks import (
    as_key,
    aux_at,
    check_optimizer,
    check_problem,
    check_record_every,
    refuse_traced,
    scalar_loss,
    shard_examples,
)
from jaxdescent._engine.driver import (
    ChunkEnd,
    check_checkpointing,
    check_chunk,
    drive,
    warn_nonfinite,
)
from jaxdescent._engine.step import make_step as _make_step
from jaxdescent.optim._common import host_state
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
    has_aux: bool = False,
    record_every: int | None = 1,
    trace: int | None = None,
    callback: Callable[[ChunkEnd], Any] | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool | str | os.PathLike = False,
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
        params are then those at which it was measured. With mini-batches a batch's gradient
        norm below ``tol`` is confirmed on the whole data before the run stops, so
        ``CONVERGED`` always means the full-data gradient norm at the returned params is
        below ``tol``. A run whose last update lands below ``tol`` is ``CONVERGED`` too.
      has_aux: ``loss`` returns ``(value, aux)``, as for ``jax.value_and_grad(...,
        has_aux=True)``; the result's ``aux`` is the aux at the final params (whole data).
      record_every: record the loss and gradient norm of every ``k``-th step (``None``:
        none). The histories hold what was recorded up to the step the run stopped at.
      trace: record the params every ``trace`` steps (and the returned ones last) into
        ``result.trace``; runs in chunks of ``trace`` steps.
      callback: ``callback(info)`` on the host after each chunk, with a
        :class:`~jaxdescent._engine.driver.ChunkEnd` (step, params, state, the chunk's
        losses, status). Its cost is one device-to-host synchronisation per chunk plus what
        it does; without ``chunk_size`` a run has about 20 chunks.
      chunk_size: steps per compiled chunk. Defaults to the whole run in one chunk, or about
        20 chunks with ``progress`` or checkpoints. It does not change the results.
      progress: show a tqdm progress bar, updated between chunks.
      checkpoint_dir: a folder to save (params, optimizer state, step, key, history) into,
        as ``checkpoint.jdc``, every ``checkpoint_every`` chunks (default 1) and at the end,
        each save atomic (:mod:`jaxdescent.checkpoint`). It is created and checked for
        writing before anything is compiled.
      resume: ``True``: continue from the checkpoint in ``checkpoint_dir`` if there is one
        (else start afresh); a folder: continue from the checkpoint there (and save there
        unless ``checkpoint_dir`` is given). The resumed run equals an uninterrupted one bit
        for bit. A run that had used up its steps goes on to a larger ``steps``, and a
        converged one goes on under a tighter ``tol``. A checkpoint written for other data
        sizes, batch size, params structure, optimizer state structure or more steps than
        ``steps`` is refused.
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
    started = time.perf_counter()
    refuse_traced("fit", params, data, key)
    check_optimizer(optimizer)
    has_aux = check_bool("has_aux", has_aux)
    progress = check_bool("progress", progress)
    shard_data = check_bool("shard_data", shard_data)
    value_loss = scalar_loss(loss) if has_aux else loss
    n = check_problem(value_loss, params, data, batch_size, steps, tol)
    every = check_record_every(record_every)
    trace = None if trace is None else check_int("trace", trace, minimum=1)
    if callback is not None:
        check_callable("callback", callback)
    checkpoint_dir, checkpoint_every, resume_dir = check_checkpointing(
        checkpoint_dir, checkpoint_every, resume
    )
    chunk = check_chunk(
        chunk_size, steps, progress, checkpoint_dir, trace=trace, callback=callback
    )
    key = as_key(key)
    if shard_data and data is not None:
        data = shard_examples(data, n)
    with host_state():  # NumPy leaves, passed to the compiled loop as they are
        opt_state = optimizer.init(params)
    spec = core.Spec(batch_size, n, every, 0)
    state = core.init_state(params, opt_state, key, spec)
    state, (losses, norms), traced = drive(
        state,
        data,
        loss=value_loss,
        optimizer=optimizer,
        steps=steps,
        batch_size=batch_size,
        tol=tol,
        chunk=chunk,
        batched=False,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        resume=resume_dir,
        record_every=every,
        trace=trace,
        callback=callback,
    )
    aux = aux_at(loss, state.params, data) if has_aux else None
    warn_nonfinite(state, losses, norms, every)
    jax.block_until_ready(state.params)
    return FitResult(
        params=state.params,
        opt_state=state.opt_state,
        losses=losses,
        grad_norms=norms,
        steps_taken=state.updates,
        status=state.status,
        final_loss=state.loss,
        final_grad_norm=state.grad_norm,
        aux=aux,
        trace=traced,
        wall_time=time.perf_counter() - started,
    )
