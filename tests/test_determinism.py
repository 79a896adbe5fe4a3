"""Determinism: the same inputs and key give bit-identical results, in two separate processes
and for any chunk size (chunks only decide where Python gets control back)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdescent as jd

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys

    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxdescent as jd

    x = jax.random.normal(jax.random.key(0), (64, 2))
    y = (x[:, 0] * x[:, 1] > 0).astype(jnp.float32)
    model = jd.models.mlp([2, 8, 1])
    loss = jd.losses.nll(model.apply, jd.likelihoods.Bernoulli())
    opt = jd.optim.adam(jd.schedules.cyclic(1e-3, 5e-2, step_size=10))
    res = jd.fit(loss, model.init(jax.random.key(1)), opt, data=(x, y), steps=50,
                 batch_size=16, key=jax.random.key(2))._replace(wall_time=0.0)
    arrays = {
        "fit" + jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(res)
    }
    np.savez(sys.argv[1], **arrays)
    """
)


def test_two_processes_give_identical_bits(tmp_path):
    """Two processes at once, with different string hashes (so dict and set orders differ)."""
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    outputs = [tmp_path / f"run{i}.npz" for i in range(2)]
    runs = []
    try:
        for seed, out in enumerate(outputs):
            runs.append(
                subprocess.Popen(
                    [sys.executable, str(script), str(out)],
                    cwd=REPO,
                    env={**os.environ, "PYTHONHASHSEED": str(seed + 1)},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        errors = [run.communicate(timeout=120)[1].decode() for run in runs]
    finally:  # a run that failed or hung leaves no process, and no open pipe, behind
        for run in runs:
            if run.poll() is None:
                run.kill()
            run.communicate()
    for run, err in zip(runs, errors):
        assert run.returncode == 0, err[-2000:]
    first, second = (np.load(out) for out in outputs)
    assert sorted(first.files) == sorted(second.files)
    assert len(first.files) > 8
    for name in first.files:
        a, b = first[name], second[name]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.tobytes() == b.tobytes(), f"{name} differs between two processes"
    assert np.isfinite(first["fit.final_loss"]) and np.all(
        np.isfinite(first["fit.params[0]['w']"])
    )


# --- chunk sizes ---------------------------------------------------------------------------

W_TRUE = jnp.array([1.0, -2.0, 0.5])
X = jax.random.normal(jax.random.key(11), (32, 3))
Y = X @ W_TRUE  # noiseless: every batch's gradient vanishes at the solution, so tol is met
MODEL = jd.models.linear(3, 1)
LOSS = jd.losses.nll(MODEL.apply, jd.likelihoods.Gaussian())
OPT = jd.optim.momentum(0.2, beta=0.5)
STEPS = 40
FIT = {"data": (X, Y), "steps": STEPS, "batch_size": 8, "tol": 1e-2, "key": jax.random.key(12)}


def raw(leaf):
    leaf = leaf if hasattr(leaf, "dtype") else np.asarray(leaf)
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(leaf)
    return leaf


def assert_identical(a, b):
    if hasattr(a, "wall_time"):  # the one field that is not part of the run
        a, b = a._replace(wall_time=None), b._replace(wall_time=None)
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        x, y = np.asarray(raw(x)), np.asarray(raw(y))
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes(), (x, y)


@pytest.fixture(scope="module")
def whole_run():
    res = jd.fit(LOSS, MODEL.init(jax.random.key(13)), OPT, **FIT)
    # the run crosses epochs (4 batches each) and converges part-way, between chunk borders
    assert int(res.status) == jd.Status.CONVERGED
    assert 8 < int(res.steps_taken) < STEPS - 8
    return res


@pytest.mark.parametrize("chunk_size", [1, 7, STEPS])
def test_fit_is_identical_for_any_chunk_size(whole_run, chunk_size):
    res = jd.fit(LOSS, MODEL.init(jax.random.key(13)), OPT, chunk_size=chunk_size, **FIT)
    assert_identical(res, whole_run)


def test_checkpointing_does_not_change_the_run(whole_run, tmp_path):
    res = jd.fit(
        LOSS, MODEL.init(jax.random.key(13)), OPT, chunk_size=7, checkpoint_dir=tmp_path, **FIT
    )
    assert_identical(res, whole_run)
    assert (tmp_path / "checkpoint.jdc").exists()


def test_multistart_is_identical_for_any_chunk_size():
    args = (MODEL.init, LOSS, OPT)
    kwargs = {**FIT, "key": jax.random.key(14), "restarts": 6}
    whole = jd.multistart(*args, **kwargs)
    chunked = jd.multistart(*args, chunk_size=7, **kwargs)
    assert_identical(chunked, whole)
    # restarts stop at different steps: some froze while the others went on
    assert len(set(np.asarray(whole.steps_taken).tolist())) > 1
