"""``fit``: a whole optimisation run as compiled XLA programs.

The run is a ``lax.while_loop`` over steps inside jit, in chunks of ``chunk_size`` steps
that reuse one compiled program; Python runs only between chunks (progress bar, checkpoints,
early exit). Mini-batches are drawn on device (:mod:`jaxdescent.data`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdescent import checkpoint as ckpt
from jaxdescent import data as data_lib
from jaxdescent._checks import check_callable, check_float_tree, check_int, check_nonnegative
from jaxdescent._engine import Carry, Status, compiled, init_carry
from jaxdescent._engine import make_step as _make_step
from jaxdescent.likelihoods import Categorical

__all__ = ["FitResult", "Status", "fit", "make_step"]

CHECKPOINT_NAME = "checkpoint.jdc"


class FitResult(NamedTuple):
    """The outcome of :func:`fit`.

    Attributes:
      params: final parameters (the last ones with finite loss and gradient).
      opt_state: optimizer state after the last accepted update.
      losses: loss at each step's incoming params, shape ``(steps,)``; ``nan`` after the run
        stopped (converged or non-finite), since those steps were not computed.
      grad_norms: global gradient norm at each step, likewise.
      steps_taken: number of updates applied to reach ``params``.
      status: a :class:`Status` code (``CONVERGED``, ``MAX_STEPS`` or ``NONFINITE``).
      final_loss: the loss at ``params`` on the whole data set.
    """

    params: Any
    opt_state: Any
    losses: jax.Array
    grad_norms: jax.Array
    steps_taken: jax.Array
    status: jax.Array
    final_loss: jax.Array

    @property
    def converged(self) -> jax.Array:
        """Whether the gradient norm fell below ``tol``."""
        return self.status == Status.CONVERGED


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
    _check_optimizer(optimizer)
    return _make_step(loss, optimizer)


def _check_optimizer(optimizer) -> None:
    if isinstance(optimizer, str):  # a rule's name: say how to build it, or which names exist
        from jaxdescent import optim

        rules = sorted(n for n in optim.__all__ if n.islower())
        hint = (
            f"build it with its factory, e.g. jd.optim.{optimizer}(...)"
            if optimizer in rules
            else f"{optimizer!r} is not an update rule in jd.optim, whose rules are "
            + ", ".join(rules)
        )
        raise TypeError(
            f"optimizer must be an optax GradientTransformation, not a name; got the string "
            f"{optimizer!r}: {hint}"
        )
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            "optimizer must be an optax GradientTransformation (with init and update), such as "
            f"jd.optim.adam(1e-3); got {optimizer!r}"
        )


def as_key(key: Any, name: str = "key") -> jax.Array:
    """A typed PRNG key from a typed key or a legacy ``uint32[2]`` key."""
    if key is None:
        return jax.random.key(0)
    if isinstance(key, int):
        raise TypeError(f"{name} must be a PRNG key such as jax.random.key(0); got the int {key}")
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(
                f"{name} must be a single PRNG key; got an array of shape {key.shape}"
            )
        return key
    if dtype is not None and np.dtype(dtype) == np.uint32 and np.shape(key) == (2,):
        return jax.random.wrap_key_data(key)
    raise TypeError(f"{name} must be a PRNG key such as jax.random.key(0); got {key!r}")


def check_problem(loss, params, data, batch_size, steps, tol, name="params"):
    """Python-side checks shared by fit and multistart; returns ``n`` (0 without data)."""
    check_callable("loss", loss)
    check_float_tree(name, params)
    steps = check_int("steps", steps, minimum=1)
    if tol is not None:
        check_nonnegative("tol", tol)
    if data is None:
        if batch_size is not None:
            raise ValueError(f"batch_size needs data; got batch_size={batch_size} and data=None")
        n = 0
        probe = (params,)
    else:
        n = data_lib.check_data(data)
        if batch_size is not None:
            check_int("batch_size", batch_size, minimum=1)
            if batch_size > n:
                raise ValueError(
                    f"batch_size must be at most the number of examples ({n}); got {batch_size}"
                )
        likelihood = getattr(loss, "likelihood", None)
        if likelihood is not None and isinstance(data, (tuple, list)) and len(data) == 2:
            if isinstance(likelihood, Categorical) and callable(getattr(loss, "apply", None)):
                likelihood.check_targets(data[1], _num_classes(loss.apply, params, data[0]))
            else:
                likelihood.check_targets(data[1])
        probe = (
            params,
            data if batch_size is None else jax.tree.map(lambda x: x[:batch_size], data),
        )
    try:
        out = jax.eval_shape(loss, *probe)
    except Exception as err:  # the user's loss failed to trace: say which call
        call = "loss(params)" if data is None else "loss(params, batch)"
        raise ValueError(f"calling {call} failed while checking the problem: {err}") from err
    if not (hasattr(out, "shape") and out.shape == () and jnp.issubdtype(out.dtype, jnp.floating)):
        got = f"shape {getattr(out, 'shape', None)} and dtype {getattr(out, 'dtype', type(out))}"
        raise ValueError(f"loss must return a floating-point scalar (shape ()); got {got}")
    return n


def _num_classes(apply, params, x) -> int | None:
    """The class count a Categorical likelihood sees: the model output's last axis."""
    try:
        out = jax.eval_shape(apply, params, x)
    except Exception:  # a shape error: the loss check below reports it
        return None
    return int(out.shape[-1]) if out.ndim else None


def check_chunk(chunk_size, steps, progress, checkpoint_dir) -> int:
    if chunk_size is not None:
        return min(check_int("chunk_size", chunk_size, minimum=1), steps)
    if progress or checkpoint_dir is not None:
        return max(1, math.ceil(steps / 20))
    return steps


def drive(
    carry: Carry,
    data: Any,
    *,
    loss: Callable,
    optimizer: Any,
    steps: int,
    batch_size: int | None,
    tol: float | None,
    chunk: int,
    batched: bool,
    progress: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    history: tuple[list, list] | None = None,
):
    """Run chunks until every run has ended or ``steps`` is spent; returns (carry, hist, loss)."""
    run_chunk, finish = compiled(loss, optimizer, batch_size, chunk, batched)
    tol_value = jnp.asarray(-jnp.inf if tol is None else tol)
    # host (NumPy) data goes to the device once, not once per chunk
    data = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x), data)
    losses, norms = history if history is not None else ([], [])
    path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
    done_steps = 0
    # what a checkpoint must agree on to be continued by this run
    run_meta = {
        "examples": 0 if data is None else data_lib.num_examples(data),
        "batch_size": batch_size,
        "runs": list(carry.status.shape),
    }
    if resume and path is not None and path.exists():
        carry, (losses, norms), done_steps = _resume(path, carry, steps, run_meta)
    bar = _progress_bar(steps, done_steps) if progress else None
    chunks_run = 0
    try:
        while done_steps < steps and bool(jnp.any(carry.status == Status.RUNNING)):
            this = min(chunk, steps - done_steps)
            carry, (chunk_losses, chunk_norms) = run_chunk(carry, data, tol_value, steps, this)
            losses.append(chunk_losses[..., :this])
            norms.append(chunk_norms[..., :this])
            done_steps += this
            chunks_run += 1
            if bar is not None:
                bar.update(this)
                bar.set_postfix(loss=_latest_loss(chunk_losses[..., :this]))
            if path is not None and chunks_run % checkpoint_every == 0 and done_steps < steps:
                _save(path, carry, losses, norms, done_steps, run_meta)
    finally:
        if bar is not None:
            bar.close()
    carry, final = finish(carry, data)
    hist_losses = _pad(losses, steps, batched, carry)
    hist_norms = _pad(norms, steps, batched, carry)
    if path is not None:
        _save(path, carry, [hist_losses], [hist_norms], steps, run_meta)
    return carry, (hist_losses, hist_norms), final


def _resume(path, carry, steps, run_meta):
    """The carry, history and step count saved at ``path``, checked against this run."""
    dtype = jnp.result_type(*jax.tree.leaves(carry.params))

    def template(meta, carry=carry):
        empty = jnp.zeros((*carry.status.shape, int(meta["steps_done"])), dtype)
        return carry, (empty, empty)

    (saved, hist), meta = ckpt.load(path, template)
    for name, value in run_meta.items():
        if meta.get(name, value) != value:
            raise ckpt.CheckpointError(
                f"checkpoint {str(path)!r} was written by a run with {name}={meta[name]!r}; "
                f"this run has {name}={value!r}, so it cannot resume from it"
            )
    done = int(meta["steps_done"])
    if done > steps:
        raise ValueError(
            f"the checkpoint in {str(path.parent)!r} has already run {done} steps; to resume "
            f"from it, steps must be at least {done}; got steps={steps}"
        )
    # A run that only ran out of steps goes on when this run's budget is larger.
    more = (saved.status == Status.MAX_STEPS) & (saved.iteration < steps)
    saved = saved._replace(status=jnp.where(more, Status.RUNNING, saved.status).astype(jnp.int32))
    return saved, ([hist[0]], [hist[1]]), done


def _latest_loss(chunk_losses) -> str:
    """The progress bar's loss: the last finite one (the best restart's, under multistart)."""
    values = np.asarray(chunk_losses).reshape(-1, chunk_losses.shape[-1])
    latest = [row[np.isfinite(row)][-1] for row in values if np.isfinite(row).any()]
    return f"{min(latest):.4g}" if latest else "nan"


def _save(path, carry, losses, norms, done_steps, run_meta):
    hist = (jnp.concatenate(losses, axis=-1), jnp.concatenate(norms, axis=-1))
    ckpt.save(path, (carry, hist), {"steps_done": done_steps, **run_meta})


def _pad(parts, steps, batched, carry):
    dtype = jnp.result_type(*jax.tree.leaves(carry.params))
    if parts:
        joined = jnp.concatenate(parts, axis=-1)
    else:
        lead = carry.status.shape
        joined = jnp.zeros((*lead, 0), dtype)
    missing = steps - joined.shape[-1]
    if missing > 0:
        joined = jnp.concatenate(
            [joined, jnp.full((*joined.shape[:-1], missing), jnp.nan, joined.dtype)], axis=-1
        )
    return joined


def _progress_bar(total, initial):
    try:
        from tqdm.auto import tqdm
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("progress=True needs tqdm: pip install tqdm") from err
    return tqdm(total=total, initial=initial, unit="step", leave=False)


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
    _check_optimizer(optimizer)
    n = check_problem(loss, params, data, batch_size, steps, tol)
    chunk = check_chunk(chunk_size, steps, progress, checkpoint_dir)
    checkpoint_every = check_int("checkpoint_every", checkpoint_every, minimum=1)
    key = as_key(key)
    if shard_data and data is not None:
        data = _shard_examples(data, n)
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


def device_mesh(axis: str) -> jax.sharding.Mesh:
    """A one-axis mesh of the local devices, with automatic (GSPMD) sharding propagation.

    ``jax.make_mesh`` defaults to *explicit* axes in recent JAX, under which the batch
    gathers inside the loop would need their output shardings spelled out.
    """
    return jax.sharding.Mesh(np.array(jax.local_devices()), (axis,))


def _shard_examples(data, n):
    devices = jax.local_devices()
    if n % len(devices):
        raise ValueError(
            f"shard_data needs the number of examples ({n}) to be a multiple of the number of "
            f"devices ({len(devices)})"
        )
    mesh = device_mesh("examples")
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("examples"))
    return jax.device_put(data, spec)
