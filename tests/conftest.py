"""Shared test problems and fixtures.

Conventions: default dtype float32; tests comparing with references at tight tolerance run
under the ``x64`` fixture (``jax.enable_x64(True)``). Keep problems small and steps few: the
whole default run must stay under about 6 minutes on 2 CPU cores. The rules under test, and
helpers to pick problems from ``jaxdescent.problems.CATALOGUE``, are in ``helpers.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
    """Run the test with 64-bit floats enabled (and restore the default afterwards)."""
    with jax.enable_x64(True):
        yield


def parabola(params):
    """Sum of squares of every leaf: minimum 0 at the origin."""
    return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(params))


def rosenbrock(x):
    """f(x, y) = (1 - x)^2 + 100 (y - x^2)^2: minimum 0 at (1, 1)."""
    return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2


def mlp_params(key=0, sizes=(3, 5, 2), dtype=jnp.float32):
    """A small MLP parameter pytree (list of dicts)."""
    keys = jax.random.split(jax.random.key(key), len(sizes) - 1)
    return [
        {
            "w": jax.random.normal(k, (a, b), dtype) / np.sqrt(a),
            "b": 0.1 * jnp.ones((b,), dtype),
        }
        for k, a, b in zip(keys, sizes[:-1], sizes[1:])
    ]


def regression_data(n=32, d=3, key=0, dtype=jnp.float32):
    """Linear data ``y = x w + 0.1 noise``."""
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    x = jax.random.normal(k1, (n, d), dtype)
    w = jax.random.normal(k2, (d,), dtype)
    y = x @ w + 0.1 * jax.random.normal(k3, (n,), dtype)
    return x, y


class Counter:
    """A loss that counts, with a host callback, how often the compiled code evaluates it."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def _tick(self):
        self.calls += 1

    def __call__(self, *args):
        jax.debug.callback(self._tick)
        return self.fn(*args)
