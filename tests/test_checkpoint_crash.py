"""Crash-safe checkpoints.

A run writing checkpoints is killed with SIGKILL in a subprocess part-way; resuming from its
last checkpoint ends bit for bit where an uninterrupted run ends. Truncated or corrupted
checkpoint files are refused with :class:`jaxdescent.checkpoint.CheckpointError`, both by
``jd.checkpoint.load`` and by ``jd.fit(..., resume=True)``, and are never loaded silently.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdescent as jd
from jaxdescent.checkpoint import MAGIC, CheckpointError

HERE = Path(__file__).resolve().parent
NAME = "checkpoint.jdc"

# The problem, shared with the subprocess (which imports this module): module-level objects,
# so every run in this process reuses one compiled program.
X = jax.random.normal(jax.random.key(21), (48, 3))
Y = (X[:, 0] - X[:, 1] * X[:, 2] > 0).astype(jnp.float32)
MODEL = jd.models.mlp([3, 8, 1])
LOSS = jd.losses.nll(MODEL.apply, jd.likelihoods.Bernoulli())
OPT = jd.optim.adam(jd.schedules.cosine_decay(0.05, 400))
CHUNK = 5
STEPS = 400
KWARGS = {"data": (X, Y), "steps": STEPS, "batch_size": 8, "key": jax.random.key(22)}


def params0():
    return MODEL.init(jax.random.key(23))


CHILD = textwrap.dedent(
    f"""
    import sys
    import time

    sys.path.insert(0, {str(HERE)!r})
    import jaxdescent as jd
    import test_checkpoint_crash as problem

    save = jd.checkpoint.save

    def slow_save(*args, **kwargs):  # leave the parent time to kill us part-way
        path = save(*args, **kwargs)
        time.sleep(0.1)
        return path

    jd.checkpoint.save = slow_save
    jd.fit(problem.LOSS, problem.params0(), problem.OPT, checkpoint_dir=sys.argv[1],
           checkpoint_every=1, chunk_size=problem.CHUNK, **problem.KWARGS)
    print("finished", flush=True)
    """
)


def steps_done(path: Path) -> int | None:
    """The step count a checkpoint file records, read straight from its documented format
    (magic line, SHA-256, then an .npz payload with a JSON ``__meta__`` record)."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    payload = blob[len(MAGIC) + 65 :]
    with np.load(io.BytesIO(payload)) as archive:
        return int(json.loads(archive["__meta__"].tobytes())["steps_done"])


def assert_identical(a, b):
    if hasattr(a, "wall_time"):  # the one field that is not part of the run
        a, b = a._replace(wall_time=None), b._replace(wall_time=None)
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), (x, y)


@pytest.fixture(scope="module")
def uninterrupted():
    res = jd.fit(LOSS, params0(), OPT, chunk_size=CHUNK, **KWARGS)
    assert int(res.status) == jd.Status.MAX_STEPS
    return res


def test_sigkilled_run_resumes_to_the_same_result(tmp_path, request, monkeypatch):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    folder = tmp_path / "run"
    path = folder / NAME
    child = subprocess.Popen(
        [sys.executable, str(script), str(folder)],
        cwd=HERE.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        uninterrupted = request.getfixturevalue("uninterrupted")  # meanwhile, in this process
        deadline = time.monotonic() + 120
        # wait for a checkpoint that has advanced past the first chunk
        while (steps_done(path) or 0) < 2 * CHUNK:
            assert child.poll() is None, child.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the child wrote no checkpoint in time"
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate(timeout=30)
    finally:  # a child that failed or hung leaves no process, and no open pipe, behind
        if child.poll() is None:
            child.kill()
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    assert b"finished" not in out
    killed_at = steps_done(path)
    assert 2 * CHUNK <= killed_at < STEPS and killed_at % CHUNK == 0

    loaded = []
    load = jd.checkpoint.load

    def spy(*args, **kwargs):
        state, meta = load(*args, **kwargs)
        loaded.append(meta["steps_done"])
        return state, meta

    monkeypatch.setattr(jd.checkpoint, "load", spy)
    resumed = jd.fit(
        LOSS, params0(), OPT, checkpoint_dir=folder, chunk_size=CHUNK, resume=True, **KWARGS
    )
    assert loaded == [killed_at]  # it did start from the killed run's last checkpoint
    assert_identical(resumed, uninterrupted)
    assert steps_done(path) == STEPS  # and finished the file


@pytest.fixture(scope="module")
def finished_bytes(tmp_path_factory, uninterrupted):
    folder = tmp_path_factory.mktemp("finished")
    res = jd.fit(
        LOSS,
        params0(),
        OPT,
        checkpoint_dir=folder,
        checkpoint_every=STEPS,
        chunk_size=CHUNK,
        **KWARGS,
    )
    assert_identical(res, uninterrupted)
    return (folder / NAME).read_bytes()


@pytest.fixture
def finished_checkpoint(tmp_path, finished_bytes):
    path = tmp_path / NAME
    path.write_bytes(finished_bytes)
    return path


def test_resuming_a_finished_checkpoint_returns_its_result(finished_checkpoint, uninterrupted):
    res = jd.fit(
        LOSS,
        params0(),
        OPT,
        checkpoint_dir=finished_checkpoint.parent,
        chunk_size=CHUNK,
        resume=True,
        **KWARGS,
    )
    assert_identical(res, uninterrupted)


def flip(blob: bytes, index: int) -> bytes:
    return blob[:index] + bytes([blob[index] ^ 0x01]) + blob[index + 1 :]


CORRUPTIONS = {
    "flipped-payload-byte": (lambda b: flip(b, len(b) // 2), "checksum"),
    "flipped-last-byte": (lambda b: flip(b, len(b) - 1), "checksum"),
    "flipped-checksum-byte": (lambda b: flip(b, len(MAGIC) + 3), "checksum"),
    "flipped-magic-byte": (lambda b: flip(b, 2), "not a jaxdescent checkpoint"),
    "cut-in-half": (lambda b: b[: len(b) // 2], "truncated"),
    "cut-last-byte": (lambda b: b[:-1], "truncated"),
    "cut-inside-header": (lambda b: b[: len(MAGIC) + 10], "truncated"),
    "empty": (lambda b: b"", "truncated"),
    "garbage-appended": (lambda b: b + b"\x00" * 7, "checksum"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupted_checkpoint_is_refused(finished_checkpoint, corruption):
    damage, words = CORRUPTIONS[corruption]
    good = finished_checkpoint.read_bytes()
    bad = damage(good)
    assert bad != good
    finished_checkpoint.write_bytes(bad)
    template = lambda meta: None  # noqa: E731  (never reached: the file is refused first)
    with pytest.raises(CheckpointError, match=words) as excinfo:
        jd.checkpoint.load(finished_checkpoint, template)
    assert NAME in str(excinfo.value)
    with pytest.raises(CheckpointError, match=words):
        jd.fit(
            LOSS,
            params0(),
            OPT,
            checkpoint_dir=finished_checkpoint.parent,
            chunk_size=CHUNK,
            resume=True,
            **KWARGS,
        )
    assert finished_checkpoint.read_bytes() == bad  # left for inspection, not overwritten


def test_checkpoint_of_another_model_is_refused(finished_checkpoint):
    other = jd.models.mlp([3, 4, 1])  # a different hidden width
    with pytest.raises(CheckpointError, match="shape"):
        jd.fit(
            LOSS,
            other.init(jax.random.key(0)),
            OPT,
            checkpoint_dir=finished_checkpoint.parent,
            chunk_size=CHUNK,
            resume=True,
            **KWARGS,
        )


def test_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    """A save that dies half-way (here: the write raises) leaves the old file intact and no
    temporary file behind."""
    path = tmp_path / NAME
    jd.checkpoint.save(path, {"w": jnp.arange(3.0)}, {"steps_done": 1})
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        jd.checkpoint.save(path, {"w": jnp.arange(3.0) + 1}, {"steps_done": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME]
    state, meta = jd.checkpoint.load(path, {"w": jnp.zeros(3)})
    np.testing.assert_array_equal(state["w"], jnp.arange(3.0))
    assert meta["steps_done"] == 1
