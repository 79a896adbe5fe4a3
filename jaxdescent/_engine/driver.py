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
from jaxdescent._engine.loop import (
    Carry,
    compiled,
    compiled_evaluate,
    history_dtype,
    recorded_rows,
    small_run,
)
from jaxdescent.results import Status

CHECKPOINT_NAME = "checkpoint.jdc"
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
    resume: str | os.PathLike | None = None,
    record_every: int = 1,
    trace: int | None = None,
    callback: Callable | None = None,
):
    """Run chunks until every run has ended or ``steps`` is spent.

    Returns ``(carry, (losses, norms), final_loss, final_grad_norm, trace)``; the histories
    hold the recorded steps up to the last one run.
    """
    small = small_run(carry.params, data, batch_size, batched)
    run_chunk = compiled(loss, optimizer, batch_size, chunk, batched, record_every, small)
    # a Python float is a weakly typed scalar argument: no eager conversion to compile
    tol_value = -math.inf if tol is None else float(tol)
    # host (NumPy) data goes to the device once, not once per chunk
    data = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jnp.asarray(x), data)
    losses, norms = [], []
    path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
    done_steps = 0
    # what a checkpoint must agree on to be continued by this run
    run_meta = {
        "examples": 0 if data is None else data_lib.num_examples(data),
        "batch_size": batch_size,
        "runs": list(carry.status.shape),
        "record_every": record_every,
        "params_structure": str(jax.tree.structure(carry.params)),
        "state_structure": str(jax.tree.structure(carry.opt_state)),
    }
    if resume is not None:
        source = Path(resume) / CHECKPOINT_NAME
        if source.exists():
            carry, (losses, norms), done_steps = _resume(source, carry, steps, tol, run_meta)
    bar = _progress_bar(steps, done_steps) if progress else None
    path_taken = [carry.params] if trace is not None else None
    chunks_run = 0
    final = None  # (loss, gradient norm) at the end, from the chunk in which the run ended
    try:
        while done_steps < steps and np.any(np.asarray(carry.status) == Status.RUNNING):
            this = min(chunk, steps - done_steps)
            barrier, ran, again, first_part = this, 0, True, len(losses)
            while again:  # a run that ended inside a block is taken again from its start
                carry, (chunk_losses, chunk_norms), part, *ends, spare, redo = run_chunk(
                    carry, data, tol_value, steps, this - ran, barrier
                )
                pick, again, barrier = (int(x) for x in np.asarray(redo))
                carry = _arrange(carry, spare, pick)
                final = _merge_ends(final, ends)
                part = int(part)
                rows = recorded_rows(done_steps, part, record_every)
                losses.append(_recorded(chunk_losses, rows))
                norms.append(_recorded(chunk_norms, rows))
                done_steps += part
                ran += part
            if len(losses) - first_part > 1:  # the chunk's history, in one piece
                for parts in (losses, norms):
                    parts[first_part:] = [
                        np.concatenate([np.asarray(p) for p in parts[first_part:]], -1)
                    ]
            chunks_run += 1
            if path_taken is not None:
                path_taken.append(carry.params)
            if bar is not None:
                bar.update(ran)
                # the lowest latest loss over the runs, named for what it is
                label = ("best_" if batched else "") + ("batch_loss" if batch_size else "loss")
                bar.set_postfix({label: _latest_loss(losses[-1])})
            if callback is not None:
                info = ChunkEnd(
                    done_steps, carry.params, carry.opt_state, losses[-1], carry.status
                )
                callback(info)
            if path is not None and chunks_run % checkpoint_every == 0 and done_steps < steps:
                _save(path, carry, losses, norms, done_steps, tol, run_meta)
            if ran < this:  # every run ended inside the chunk
                break
    finally:
        if bar is not None:
            bar.close()
    carry, final, final_norm = _final_values(carry, data, final, loss, batched, tol)
    hist_losses = _join(losses, carry)
    hist_norms = _join(norms, carry)
    if path is not None:
        _save(path, carry, [hist_losses], [hist_norms], done_steps, tol, run_meta)
    traced = None
    if path_taken is not None:
        path_taken[-1] = carry.params  # the returned params (a non-finite end rolls back)
        axis = 1 if batched else 0
        traced = jax.tree.map(
            lambda *xs: jax.device_put(np.stack([np.asarray(x) for x in xs], axis=axis)),
            *path_taken,
        )
    return carry, (hist_losses, hist_norms), final, final_norm, traced


def _arrange(carry, spare, pick):
    """The run as a chunk of unguarded blocks leaves it (``block_steps`` in
    :func:`jaxdescent._engine.loop._chunk`, which chooses no trees itself): ``pick`` 0 keeps
    ``carry``, 1 moves its previous params and state to the front (and ``spare`` behind
    them), 2 puts ``spare`` in both places."""
    if pick == 1:
        return carry._replace(
            params=carry.prev_params,
            opt_state=carry.prev_opt_state,
            prev_params=spare[0],
            prev_opt_state=spare[1],
        )
    if pick == 2:
        return carry._replace(
            params=spare[0], opt_state=spare[1], prev_params=spare[0], prev_opt_state=spare[1]
        )
    return carry


def _merge_ends(final, ends):
    """The loss and gradient norm of each run where it ended (``nan`` for runs still going):
    a chunk reports the runs that ended in it, so under ``multistart`` a run that stopped
    in an earlier chunk keeps what that chunk reported."""
    if final is None:  # the first chunk's: kept as the device arrays they are
        return list(ends)
    ends = [np.asarray(x) for x in ends]
    return [
        np.where(np.isnan(new), np.asarray(old), new) for old, new in zip(final, ends, strict=True)
    ]


def _final_values(carry, data, final, loss, batched, tol):
    """The loss and gradient norm at the returned params: ``(carry, loss, grad_norm)``.

    They come from the chunk in which the run ended; they are evaluated here instead when no
    chunk ran (a resumed run that had already ended, or whose budget was spent) or for a run
    rolled back to its previous params (non-finite at the last ones), which the loop did not
    measure last. A run evaluated here that spent its budget (or stalled, resumed under a
    looser ``tol``) with a gradient norm below ``tol`` is ``CONVERGED``, as at the end of a
    loop.
    """
    if final is not None:
        missing = ~(np.isfinite(np.asarray(final[0])) & np.isfinite(np.asarray(final[1])))
        if not missing.any():
            return carry, *(x if isinstance(x, jax.Array) else jax.device_put(x) for x in final)
    value, norm = (np.asarray(x) for x in compiled_evaluate(loss, batched)(carry, data))
    if final is not None:
        value, norm = (
            np.where(missing, np.asarray(new, old.dtype), np.asarray(old))
            for new, old in zip((value, norm), final, strict=True)
        )
    if tol is not None:
        status = np.asarray(carry.status)
        ended = (status == Status.MAX_STEPS) | (status == Status.STALLED)
        met = ended & (norm < tol)
        if met.any():
            status = np.where(met, Status.CONVERGED, status).astype(np.int32)
            carry = carry._replace(status=jax.device_put(status))
    return carry, jax.device_put(value), jax.device_put(norm)


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


def _resume(path, carry, steps, tol, run_meta):
    """The carry, history and step count saved at ``path``, checked against this run."""
    meta = ckpt.read_meta(path)
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
    dtype = history_dtype(carry.params)
    rows = int(meta.get("history_rows", done))
    empty = jnp.zeros((*carry.status.shape, rows), dtype)
    (saved, hist), _ = ckpt.load(path, (carry, (empty, empty)))
    # A run that only ran out of steps goes on when this run's budget is larger; a run that
    # converged goes on when this run's tolerance is tighter.
    saved_tol = meta.get("tol")
    tighter = tol is not None and (saved_tol is None or tol < saved_tol)
    reopen = (saved.status == Status.MAX_STEPS) | ((saved.status == Status.CONVERGED) & tighter)
    budget_left = saved.iteration < steps
    # a run saved while going on whose budget this call has already spent ends there
    reopen = reopen | (saved.status == Status.RUNNING)
    status = jnp.where(
        reopen, jnp.where(budget_left, Status.RUNNING, Status.MAX_STEPS), saved.status
    )
    saved = saved._replace(status=status.astype(jnp.int32))
    return saved, ([np.asarray(hist[0])], [np.asarray(hist[1])]), done


def _latest_loss(chunk_losses) -> str:
    """The progress bar's loss: the last finite one (the best restart's, under multistart)."""
    values = np.asarray(chunk_losses).reshape(-1, chunk_losses.shape[-1])
    latest = [row[np.isfinite(row)][-1] for row in values if np.isfinite(row).any()]
    return f"{min(latest):.4g}" if latest else "nan"


def _save(path, carry, losses, norms, done_steps, tol, run_meta):
    hist = (_join(losses, carry), _join(norms, carry))
    meta = {
        "steps_done": done_steps,
        "tol": tol,
        "history_rows": hist[0].shape[-1],
        **ckpt.params_record(carry.params),
        **run_meta,
    }
    ckpt.save(path, (carry, hist), meta)


def _recorded(history, rows):
    """A chunk's history cut to its ``rows`` recorded steps: the device array itself when
    they fill it (a whole run in one chunk), else cut on the host (an eager slice would
    compile once per history length)."""
    if history.shape[-1] == rows:
        return history
    return np.asarray(history)[..., :rows]


def _join(parts, carry):
    """The recorded history as one device array, joined on the host: eager ``jnp`` ops
    (and ``jnp.asarray``) would compile once per history length."""
    if len(parts) == 1 and isinstance(parts[0], jax.Array):
        return parts[0]
    if parts:
        return jax.device_put(np.concatenate([np.asarray(p) for p in parts], axis=-1))
    return jax.device_put(np.zeros((*carry.status.shape, 0), history_dtype(carry.params)))


def warn_nonfinite(carry, losses, grad_norms, record_every) -> None:
    """Warn (once per call) that a run ended ``NONFINITE``: after how many steps, and whether
    the loss or the gradient was not finite."""
    codes = np.asarray(carry.status).reshape(-1)
    bad = np.flatnonzero(codes == Status.NONFINITE)
    if bad.size == 0:
        return
    first = int(bad[0])
    taken = int(np.asarray(carry.updates).reshape(-1)[first])
    iteration = int(np.asarray(carry.iteration).reshape(-1)[first])
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
