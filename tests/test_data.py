"""On-device mini-batches: a permutation per epoch, the last partial batch, fit's visits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxdescent as jd
from jaxdescent import data as data_lib

KEY = jax.random.key(7)


def epoch_rows(n, batch_size, epoch, key=KEY):
    """The example indices ``batch_at`` gives over one epoch, batch by batch."""
    rows = jnp.arange(n)
    per_epoch = n // batch_size
    return np.stack(
        [
            np.asarray(jd.data.batch_at(rows, key, epoch * per_epoch + b, batch_size))
            for b in range(per_epoch)
        ]
    )


@pytest.mark.parametrize("batch_size", [1, 5])
def test_an_epoch_of_batches_is_a_permutation(batch_size):
    seen = epoch_rows(10, batch_size, epoch=0).ravel()
    assert sorted(seen.tolist()) == list(range(10))


def test_the_last_partial_batch_sits_the_epoch_out():
    # 10 examples in batches of 4: two batches an epoch, and the two examples that come last
    # in that epoch's order are left out of that epoch only (drop_last).
    n, batch_size = 10, 4
    for epoch in range(3):
        seen = epoch_rows(n, batch_size, epoch).ravel()
        order = np.asarray(data_lib.epoch_permutation(KEY, epoch, n))
        assert len(set(seen.tolist())) == 8
        np.testing.assert_array_equal(seen, order[:8])
        assert set(order[8:].tolist()).isdisjoint(seen.tolist())
    # the order changes every epoch, so nobody is left out for good
    left_out = {
        tuple(sorted(np.asarray(data_lib.epoch_permutation(KEY, e, n))[8:].tolist()))
        for e in range(6)
    }
    assert len(left_out) > 1


def test_epochs_differ_and_keys_differ():
    a, b = epoch_rows(12, 3, epoch=0), epoch_rows(12, 3, epoch=1)
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, epoch_rows(12, 3, epoch=0, key=jax.random.key(8)))
    np.testing.assert_array_equal(a, epoch_rows(12, 3, epoch=0))  # a pure function of key


def test_batch_at_slices_every_leaf_alike_and_jits():
    x = jnp.arange(20.0).reshape(10, 2)
    data = {"x": x, "y": jnp.arange(10), "z": (jnp.arange(10.0) * 10,)}
    batch = jax.jit(jd.data.batch_at, static_argnums=3)(data, KEY, jnp.asarray(3), 4)
    rows = np.asarray(batch["y"])
    np.testing.assert_array_equal(batch["x"], np.asarray(x)[rows])
    np.testing.assert_array_equal(batch["z"][0], rows * 10.0)
    assert batch["x"].shape == (4, 2)


SGD1 = jd.optim.sgd(1.0)


def onehot_sum(p, batch):
    """A linear loss whose gradient is the sum of the one-hot rows in the batch."""
    return jnp.sum(batch @ p)


@pytest.mark.parametrize("epochs", [1, 3])
def test_sgd_visits_each_example_once_per_epoch(epochs):
    # SGD (batch_size=1) with learning rate 1 on sum(p . onehot) subtracts the one-hot of
    # the example it saw: after k epochs every coordinate is exactly -k.
    n = 9
    res = jd.fit(onehot_sum, jnp.zeros(n), SGD1, data=jnp.eye(n), steps=epochs * n,
                 batch_size=1, key=KEY, chunk_size=n)  # fmt: skip
    np.testing.assert_array_equal(res.params, -float(epochs) * np.ones(n))


def test_fit_minibatches_leave_out_n_mod_batch_size_per_epoch():
    n, batch_size = 10, 4
    res = jd.fit(onehot_sum, jnp.zeros(n), SGD1, data=jnp.eye(n), steps=2,
                 batch_size=batch_size, key=KEY)  # fmt: skip
    counts = -np.asarray(res.params)
    assert sorted(counts.tolist()) == [0.0] * 2 + [1.0] * 8
    order = np.asarray(data_lib.epoch_permutation(KEY, 0, n))
    np.testing.assert_array_equal(counts[order[8:]], 0.0)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ((jnp.ones((4, 2)), jnp.ones(5)), "share their leading size"),
        ({"x": jnp.ones(3), "s": jnp.array(1.0)}, "leading example axis"),
        ((), "no arrays"),
        (jnp.ones((0, 2)), "at least one example"),
        (jnp.array([1.0, jnp.nan]), "must be finite"),
    ],
)
def test_check_data_rejects(data, fragment):
    with pytest.raises(ValueError, match=fragment):
        data_lib.check_data(data)


def test_check_data_counts_examples():
    assert data_lib.check_data({"x": np.ones((6, 2)), "y": np.arange(6)}) == 6
