"""Checkpoints: the file format (npz + SHA-256), atomic writes, and ``fit``'s saving and
resuming, which must give the same run as an uninterrupted one, bit for bit."""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxdescent as jd
import jaxdescent._engine.programs
from jaxdescent.checkpoint import CheckpointError

NAME = "checkpoint.jdc"
X = jax.random.normal(jax.random.key(0), (23, 3))
Y = X @ jnp.array([1.0, -2.0, 0.5]) + 0.3
P0 = {"w": jnp.zeros(3), "b": jnp.zeros(())}
ADAM = jd.optim.adam(0.05)
# 5 batches an epoch, chunks of 2 steps: interruptions land mid-epoch
RUN = {"data": (X, Y), "steps": 12, "batch_size": 4, "key": jax.random.key(3), "chunk_size": 2}


def mse(p, batch):
    x, y = batch
    return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)


def assert_same_run(a, b):
    for name in jd.FitResult._fields:
        if name == "wall_time":  # the one field that is not part of the run
            continue
        for u, v in zip(jax.tree.leaves(getattr(a, name)), jax.tree.leaves(getattr(b, name))):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=name)


@pytest.fixture(scope="module")
def whole():
    """The uninterrupted run every resumed run must equal."""
    return jd.fit(mse, P0, ADAM, **RUN)


class State(NamedTuple):
    params: dict
    key: jax.Array
    count: jax.Array


def test_round_trip_keeps_structure_dtypes_and_keys(tmp_path):
    state = State(
        params={"w": jnp.arange(6.0).reshape(2, 3), "h": jnp.arange(3, dtype=jnp.bfloat16) / 3},
        key=jax.random.key(42),
        count=jnp.array(7, jnp.int32),
    )
    extra = (jnp.array([True, False]), jnp.zeros((0, 2)), jax.random.split(jax.random.key(1), 3))
    path = jd.checkpoint.save(tmp_path / NAME, (state, extra), {"steps_done": 5})
    (loaded, loaded_extra), meta = jd.checkpoint.load(path, (state, extra))
    assert isinstance(loaded, State) and meta["steps_done"] == 5
    for a, b in zip(jax.tree.leaves((state, extra)), jax.tree.leaves((loaded, loaded_extra))):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a restored key draws the same numbers
    np.testing.assert_array_equal(jax.random.normal(loaded.key, (3,)),
                                  jax.random.normal(state.key, (3,)))  # fmt: skip


def test_write_is_atomic(tmp_path, monkeypatch):
    path = jd.checkpoint.save(tmp_path / NAME, jnp.ones(3), {"steps_done": 1})

    def crash(*args, **kwargs):
        raise OSError("disk gone")

    # a crash after the new file is written but before it is moved into place
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        jd.checkpoint.save(path, 2 * jnp.ones(3), {"steps_done": 2})
    monkeypatch.undo()
    value, meta = jd.checkpoint.load(path, jnp.ones(3))
    np.testing.assert_array_equal(value, np.ones(3))
    assert meta["steps_done"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [NAME], "a temporary file was left behind"


def test_corrupted_or_truncated_files_are_refused(tmp_path):
    path = jd.checkpoint.save(tmp_path / NAME, jnp.arange(100.0))
    blob = bytearray(path.read_bytes())
    blob[-200] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="SHA-256"):
        jd.checkpoint.load(path, jnp.arange(100.0))
    path.write_bytes(bytes(blob[:30]))
    with pytest.raises(CheckpointError, match="truncated"):
        jd.checkpoint.load(path, jnp.arange(100.0))


def test_saves_every_n_chunks_and_at_the_end(tmp_path, monkeypatch, whole):
    saved = []
    real_save = jd.checkpoint.save

    def spy(path, state, meta=None):
        saved.append(meta["steps_done"])
        return real_save(path, state, meta)

    monkeypatch.setattr(jd.checkpoint, "save", spy)
    res = jd.fit(mse, P0, ADAM, checkpoint_dir=tmp_path, checkpoint_every=2, **RUN)
    assert saved == [4, 8, 12]  # chunks of 2 steps: after chunks 2 and 4, then the end
    assert_same_run(res, whole)  # saving changes nothing


class Interrupt(Exception):
    """Stands for the process being killed."""


def interrupt_after(monkeypatch, chunks):
    """Make the compiled chunk raise when it is called for chunk number ``chunks + 1``."""
    real = jaxdescent._engine.programs.loop
    calls = []

    def compiled(*args, **kwargs):
        run_chunk = real(*args, **kwargs)

        def counted(*a):
            calls.append(1)
            if len(calls) > chunks:
                raise Interrupt
            return run_chunk(*a)

        return counted

    monkeypatch.setattr("jaxdescent._engine.programs.loop", compiled)
    return calls


@pytest.mark.parametrize("every", [1, 2])
def test_an_interrupted_run_resumes_bit_for_bit(tmp_path, monkeypatch, whole, every):
    interrupt_after(monkeypatch, chunks=3)
    with pytest.raises(Interrupt):
        jd.fit(mse, P0, ADAM, checkpoint_dir=tmp_path, checkpoint_every=every, **RUN)
    monkeypatch.undo()
    steps_done = jd.checkpoint.read_meta(tmp_path / NAME)["steps_done"]
    assert steps_done == (6 if every == 1 else 4)  # mid-epoch: 5 batches an epoch
    calls = interrupt_after(monkeypatch, chunks=100)
    res = jd.fit(mse, P0, ADAM, checkpoint_dir=tmp_path, resume=True, **RUN)
    assert len(calls) == (12 - steps_done) // 2  # only the missing chunks ran
    assert_same_run(res, whole)


def test_a_finished_run_resumes_to_a_longer_budget(tmp_path, monkeypatch, whole):
    short = jd.fit(mse, P0, ADAM, checkpoint_dir=tmp_path, **{**RUN, "steps": 7})
    assert int(short.status) == jd.Status.MAX_STEPS
    longer = jd.fit(mse, P0, ADAM, checkpoint_dir=tmp_path, resume=True, **RUN)
    assert_same_run(longer, whole)
    # resuming a run that has spent its budget computes no step and returns the same
    interrupt_after(monkeypatch, chunks=0)
    again = jd.fit(mse, P0, ADAM, checkpoint_dir=tmp_path, resume=True, **RUN)
    assert_same_run(again, whole)


def test_resume_without_a_checkpoint_starts_afresh(tmp_path, whole):
    res = jd.fit(mse, P0, ADAM, checkpoint_dir=tmp_path / "new", resume=True, **RUN)
    assert_same_run(res, whole)
    assert (tmp_path / "new" / NAME).exists()


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    jd.fit(mse, P0, ADAM, checkpoint_dir=tmp_path, **RUN)
    with pytest.raises(CheckpointError, match="batch_size=4"):
        jd.fit(mse, P0, ADAM, checkpoint_dir=tmp_path, resume=True, **{**RUN, "batch_size": 5})
    with pytest.raises(ValueError, match="steps must be at least 12"):
        jd.fit(mse, P0, ADAM, checkpoint_dir=tmp_path, resume=True, **{**RUN, "steps": 8})


def test_a_resumed_run_takes_the_new_optimizers_hyperparameters(tmp_path):
    """Resuming with ``sgd(0.2)`` a run saved with ``sgd(0.001)`` steps with 0.2 (as an optax
    rule, whose value lives in its closure, would), not with the value saved in the state."""
    slow = jd.fit(mse, P0, jd.optim.sgd(0.001), data=(X, Y), steps=5, checkpoint_dir=tmp_path)
    resumed = jd.fit(mse, P0, jd.optim.sgd(0.2), data=(X, Y), steps=25, checkpoint_dir=tmp_path,
                     resume=True)  # fmt: skip
    assert float(resumed.opt_state.hyperparams["learning_rate"]) == pytest.approx(0.2)
    rest = jd.fit(mse, slow.params, jd.optim.sgd(0.2), data=(X, Y), steps=20)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), resumed.params,
                 rest.params)  # fmt: skip
    # and with an optax rule in a chain holding runtime values, the same
    chained = lambda lr: optax.chain(optax.clip(1e3), jd.optim.adam(lr))  # noqa: E731
    jd.fit(mse, P0, chained(1e-4), data=(X, Y), steps=3, checkpoint_dir=tmp_path / "c")
    again = jd.fit(mse, P0, chained(0.05), data=(X, Y), steps=4, checkpoint_dir=tmp_path / "c",
                   resume=True)  # fmt: skip
    assert float(again.opt_state[1].hyperparams["learning_rate"]) == pytest.approx(0.05)


def test_a_checkpoint_of_another_state_layout_is_refused_with_the_reason(tmp_path):
    jd.fit(mse, P0, jd.optim.sgd(0.1), data=(X, Y), steps=3, checkpoint_dir=tmp_path)
    path = tmp_path / NAME
    meta = jd.checkpoint.read_meta(path)
    meta["state_format"] = 1
    jd.checkpoint.save(path, {"params": P0}, {k: v for k, v in meta.items() if k not in (
        "num_leaves", "dtypes")})  # fmt: skip
    with pytest.raises(CheckpointError, match="another version of jaxdescent"):
        jd.fit(mse, P0, jd.optim.sgd(0.1), data=(X, Y), steps=6, checkpoint_dir=tmp_path,
               resume=True)  # fmt: skip
