"""The host side of a run: chunks of compiled steps, progress, checkpoints and resume."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdescent import checkpoint as ckpt
from jaxdescent import data as data_lib
from jaxdescent._checks import check_int
from jaxdescent._engine.loop import Carry, compiled
from jaxdescent.results import Status

CHECKPOINT_NAME = "checkpoint.jdc"


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
                # the lowest latest loss over the runs, named for what it is
                label = ("best_" if batched else "") + ("batch_loss" if batch_size else "loss")
                bar.set_postfix({label: _latest_loss(chunk_losses[..., :this])})
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
