"""The host side of a run: chunks of compiled steps, progress, callbacks, traces,
checkpoints and resume."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdescent import checkpoint as ckpt
from jaxdescent import data as data_lib
from jaxdescent._checks import check_int
from jaxdescent._engine import programs
from jaxdescent._engine.cache import Traced
from jaxdescent._engine.checks import traced_error
from jaxdescent._engine.core import (
    Spec,
    State,
    history_dtype,
    pack_host,
    recorded_rows,
    rows_for,
    unpack_host,
)
from jaxdescent.optim.hyperparams import refresh_hyperparams
from jaxdescent.results import Status

CHECKPOINT_NAME = "checkpoint.jdc"
# the layout of the saved run state (:class:`jaxdescent._engine.core.State`); a checkpoint of
# another layout is refused with a message saying so
STATE_FORMAT = 3
# the longest default chunk: bounds the in-program history buffer of a long run, and lets
# runs of more steps than this share one compiled program
MAX_CHUNK = 8192


class ChunkEnd(NamedTuple):
    """What a ``callback`` receives after each chunk of compiled steps.

    Attributes:
      step: steps run so far.
      params: the current params (stacked over restarts under ``multistart``).
      opt_state: the current optimizer state.
      losses: the losses recorded in this chunk (the last axis is steps).
      status: the :class:`~jaxdescent.results.Status` code(s) so far (``RUNNING`` while
        going on).
    """

    step: int
    params: Any
    opt_state: Any
    losses: jax.Array
    status: jax.Array


def check_chunk(chunk_size, steps, progress, checkpoint_dir, *, trace=None, callback=None) -> int:
    """The chunk length: ``chunk_size``, else ``trace``, else ~20 chunks when something
    watches the run, else the whole run (at most :data:`MAX_CHUNK` steps)."""
    if trace is not None:
        if chunk_size is not None and chunk_size != trace:
            raise ValueError(
                f"trace={trace} records the params every {trace} steps, between chunks of that "
                f"length; chunk_size={chunk_size} cannot apply with it (leave it out)"
            )
        return min(trace, steps)
    if chunk_size is not None:
        return min(check_int("chunk_size", chunk_size, minimum=1), steps)
    if progress or checkpoint_dir is not None or callback is not None:
        return min(max(1, math.ceil(steps / 20)), MAX_CHUNK)
    return min(steps, MAX_CHUNK)


def drive(
    state: State,
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
    resume: str | os.PathLike | None = None,
    record_every: int = 1,
    trace: int | None = None,
    callback: Callable | None = None,
    caller: str = "fit",
):
    """Run the core loop in chunks of ``chunk`` steps until every run has ended.

    Returns ``(state, (losses, norms), trace)``; the histories hold the recorded steps up to
    the last one run. Between chunks the host only watches: the loop decides every status.
    """
    n = 0 if data is None else data_lib.num_examples(data)
    spec = Spec(batch_size, n, record_every, rows_for(chunk, record_every))
    small = programs.small_run(state.params, data, batch_size, batched)
    try:
        run_chunk = programs.loop(loss, optimizer, spec, batched=batched, small=small)
    except Traced:  # the loss or optimizer closes over a value of a transformation
        raise traced_error(caller) from None
    objects = (loss, optimizer)
    # a Python float is a weakly typed scalar argument: no eager conversion to compile
    tol_value = -math.inf if tol is None else float(tol)
    # host (NumPy) data goes to the device once, not once per chunk
    data = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x), data)
    losses, norms = [], []
    path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
    done_steps = 0
    # what a checkpoint must agree on to be continued by this run
    run_meta = {
        "examples": n,
        "batch_size": batch_size,
        "runs": list(state.status.shape),
        "record_every": record_every,
        "params_structure": str(jax.tree.structure(state.params)),
        "state_structure": str(jax.tree.structure(state.opt_state)),
    }
    if resume is not None:
        source = Path(resume) / CHECKPOINT_NAME
        if source.exists():
            state, (losses, norms), done_steps = _resume(source, state, steps, tol, run_meta)
    bar = _progress_bar(steps, done_steps) if progress else None
    path_taken = [state.params] if trace is not None else None
    chunks_run = 0
    try:
        while np.any(np.asarray(state.status) == Status.RUNNING):
            until = min(done_steps + chunk, steps)
            state, (chunk_losses, chunk_norms) = run_chunk(
                objects, state, data, tol_value, steps, until
            )
            ran = int(np.max(np.asarray(state.step))) - done_steps
            rows = recorded_rows(done_steps, ran, record_every)
            losses.append(_recorded(chunk_losses, rows))
            norms.append(_recorded(chunk_norms, rows))
            done_steps += ran
            chunks_run += 1
            if path_taken is not None:
                path_taken.append(state.params)
            if bar is not None:
                bar.update(ran)
                # the lowest latest loss over the runs, named for what it is
                label = ("best_" if batched else "") + ("batch_loss" if batch_size else "loss")
                bar.set_postfix({label: _latest_loss(losses[-1])})
            if callback is not None:
                info = ChunkEnd(
                    done_steps, state.params, state.opt_state, losses[-1], state.status
                )
                callback(info)
            if path is not None and chunks_run % checkpoint_every == 0 and done_steps < steps:
                _save(path, state, losses, norms, done_steps, tol, run_meta)
    finally:
        if bar is not None:
            bar.close()
    hist_losses = _join(losses, state)
    hist_norms = _join(norms, state)
    if path is not None:
        _save(path, state, [hist_losses], [hist_norms], done_steps, tol, run_meta)
    traced = None
    if path_taken is not None:
        path_taken[-1] = state.params  # the returned params (a non-finite end rolls back)
        axis = 1 if batched else 0
        traced = jax.tree.map(
            lambda *xs: jax.device_put(np.stack([np.asarray(x) for x in xs], axis=axis)),
            *path_taken,
        )
    return state, (hist_losses, hist_norms), traced


def check_checkpointing(checkpoint_dir, checkpoint_every, resume):
    """Validate the checkpoint options before anything is compiled.

    Returns ``(checkpoint_dir, checkpoint_every, resume_dir)``: ``resume`` may be ``True``
    (continue from ``checkpoint_dir``), ``False``, or a folder to continue from (then also the
    folder saved into when ``checkpoint_dir`` is not given).
    """
    if resume is not None and not isinstance(resume, (bool, np.bool_, str, os.PathLike)):
        raise TypeError(
            f"resume must be True, False or a folder holding a checkpoint; got {resume!r} "
            f"({type(resume).__name__})"
        )
    if checkpoint_every is not None:
        check_int("checkpoint_every", checkpoint_every, minimum=1)
    resume_dir = None
    if isinstance(resume, (str, os.PathLike)):
        resume_dir = _check_folder("resume", resume)
        if checkpoint_dir is None:
            checkpoint_dir = resume_dir
    elif resume:
        if checkpoint_dir is None:
            raise ValueError(
                "resume=True continues from the checkpoint in checkpoint_dir, but no "
                "checkpoint_dir was given (pass checkpoint_dir=..., or resume='path/to/run')"
            )
        resume_dir = checkpoint_dir
    if checkpoint_dir is None:
        if checkpoint_every is not None:
            raise ValueError(
                f"checkpoint_every={checkpoint_every!r} needs a checkpoint_dir to save into; "
                "none was given"
            )
        return None, 1, None
    checkpoint_dir = _check_folder("checkpoint_dir", checkpoint_dir)
    if resume_dir is not None:
        resume_dir = _check_folder("resume", resume_dir)
    try:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"checkpoint_dir {str(checkpoint_dir)!r} cannot be created: {err.strerror or err}"
        ) from err
    if not checkpoint_dir.is_dir() or not os.access(checkpoint_dir, os.W_OK | os.X_OK):
        raise ValueError(f"checkpoint_dir {str(checkpoint_dir)!r} is not a writable folder")
    every = (
        1
        if checkpoint_every is None
        else check_int("checkpoint_every", checkpoint_every, minimum=1)
    )
    return checkpoint_dir, every, resume_dir


def _check_folder(name, value) -> Path:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a folder path; got {value!r} ({type(value).__name__})")
    if not os.fspath(value).strip():
        raise ValueError(f"{name} must be a folder path; got the empty string {value!r}")
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} {str(path)!r} exists and is not a folder")
    return path


def _resume(path, state, steps, tol, run_meta):
    """The state, history and step count saved at ``path``, checked against this run."""
    meta = ckpt.read_meta(path)
    if meta.get("state_format", 1) != STATE_FORMAT:
        raise ckpt.CheckpointError(
            f"checkpoint {str(path)!r} was written by another version of jaxdescent, whose "
            "run state has another layout, so this run cannot resume from it; its params "
            "can still be read with jd.checkpoint.load_params(path)"
        )
    labels = {
        "params_structure": "params of another structure",
        "state_structure": "an optimizer state of another structure (another optimizer?)",
    }
    for name, value in run_meta.items():
        if name in meta and meta[name] != value:
            what = labels.get(name, f"{name}={meta[name]!r}")
            raise ckpt.CheckpointError(
                f"checkpoint {str(path)!r} was written by a run with {what}; this run has "
                f"{name}={value!r}, so it cannot resume from it"
            )
    done = int(meta["steps_done"])
    if done > steps:
        raise ValueError(
            f"the checkpoint in {str(path.parent)!r} has already run {done} steps; to resume "
            f"from it, steps must be at least {done}; got steps={steps}"
        )
    dtype = history_dtype(state.params)
    rows = int(meta.get("history_rows", done))
    empty = jnp.zeros((*state.status.shape, rows), dtype)
    (saved, hist), _ = ckpt.load(path, (state, (empty, empty)))
    # A run that only ran out of steps goes on when this run's budget is larger; a run that
    # converged goes on when this run's tolerance is tighter; a run saved while going on goes
    # on (with its budget spent, the loop's final evaluation ends it). One that stopped and
    # meets a looser tolerance at its params has converged.
    saved_tol = meta.get("tol")
    tighter = tol is not None and (saved_tol is None or tol < saved_tol)
    status = np.asarray(saved.status)
    reopen = (
        ((status == Status.MAX_STEPS) & (np.asarray(saved.step) < steps))
        | ((status == Status.CONVERGED) & tighter)
        | (status == Status.RUNNING)
    )
    stopped = (status == Status.MAX_STEPS) | (status == Status.STALLED)
    met = stopped & ~reopen & (np.asarray(saved.grad_norm) < (-np.inf if tol is None else tol))
    status = np.where(reopen, Status.RUNNING, np.where(met, Status.CONVERGED, status))
    # the optimizer of this call decides the hyperparameters (as an optax rule's closure
    # would): the values saved in the state are replaced by the fresh state's
    like = (saved.params, saved.opt_state)
    prev_params, prev_state = unpack_host(saved.prev, like)
    lead = len(saved.status.shape)
    saved = saved._replace(
        opt_state=refresh_hyperparams(saved.opt_state, state.opt_state),
        prev=pack_host((prev_params, refresh_hyperparams(prev_state, state.opt_state)), lead),
        status=jnp.asarray(status, jnp.int32),
    )
    return saved, ([np.asarray(hist[0])], [np.asarray(hist[1])]), done


def _latest_loss(chunk_losses) -> str:
    """The progress bar's loss: the last finite one (the best restart's, under multistart)."""
    values = np.asarray(chunk_losses).reshape(-1, chunk_losses.shape[-1])
    latest = [row[np.isfinite(row)][-1] for row in values if np.isfinite(row).any()]
    return f"{min(latest):.4g}" if latest else "nan"


def _save(path, state, losses, norms, done_steps, tol, run_meta):
    hist = (_join(losses, state), _join(norms, state))
    meta = {
        "state_format": STATE_FORMAT,
        "steps_done": done_steps,
        "tol": tol,
        "history_rows": hist[0].shape[-1],
        **ckpt.params_record(state.params),
        **run_meta,
    }
    ckpt.save(path, (state, hist), meta)


def _recorded(history, rows):
    """A chunk's history cut to its ``rows`` recorded steps: the device array itself when
    they fill it (a whole run in one chunk), else cut on the host (an eager slice would
    compile once per history length)."""
    if history.shape[-1] == rows:
        return history
    return np.asarray(history)[..., :rows]


def _join(parts, state):
    """The recorded history as one device array, joined on the host: eager ``jnp`` ops
    (and ``jnp.asarray``) would compile once per history length."""
    if len(parts) == 1 and isinstance(parts[0], jax.Array):
        return parts[0]
    if parts:
        return jax.device_put(np.concatenate([np.asarray(p) for p in parts], axis=-1))
    return jax.device_put(np.zeros((*state.status.shape, 0), history_dtype(state.params)))


def warn_nonfinite(state, losses, grad_norms, record_every) -> None:
    """Warn (once per call) that a run ended ``NONFINITE``: after how many steps, and whether
    the loss or the gradient was not finite."""
    codes = np.asarray(state.status).reshape(-1)
    bad = np.flatnonzero(codes == Status.NONFINITE)
    if bad.size == 0:
        return
    first = int(bad[0])
    taken = int(np.asarray(state.updates).reshape(-1)[first])
    iteration = int(np.asarray(state.step).reshape(-1)[first])
    what = "the loss or gradient"
    if record_every and (iteration - 1) % record_every == 0:  # the failing step was recorded
        r = recorded_rows(0, iteration, record_every) - 1
        loss = np.asarray(losses).reshape(codes.size, -1)[first, r]
        norm = np.asarray(grad_norms).reshape(codes.size, -1)[first, r]
        if not np.isfinite(loss):
            what = f"the loss ({loss})"
        elif not np.isfinite(norm):
            what = f"the gradient (norm {norm})"
    who = "the run" if codes.size == 1 else f"{bad.size} of {codes.size} restarts (first: {first})"
    warnings.warn(
        f"{who} ended NONFINITE: {what} was not finite after {taken} accepted updates; the "
        "returned params are the last ones at which the loss and gradient were finite",
        RuntimeWarning,
        stacklevel=3,
    )


def _progress_bar(total, initial):
    try:
        from tqdm.auto import tqdm
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("progress=True needs tqdm: pip install tqdm") from err
    return tqdm(total=total, initial=initial, unit="step", leave=False)
