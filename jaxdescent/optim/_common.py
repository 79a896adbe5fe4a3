"""Pieces shared by the update rules: learning rates, counters and dtype-preserving maps."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxdescent._checks import check_learning_rate


def learning_rate_at(learning_rate: optax.ScalarOrSchedule, count: jax.Array) -> jax.Array:
    """The learning rate for the update numbered ``count`` (0 for the first update)."""
    return learning_rate(count) if callable(learning_rate) else jnp.asarray(learning_rate)


def scale_like(tree: Any, factor: jax.Array) -> Any:
    """``factor * leaf`` for every leaf, keeping each leaf's dtype (no silent float64)."""
    return jax.tree.map(lambda x: jnp.asarray(factor, x.dtype) * x, tree)


def increment(count: jax.Array) -> jax.Array:
    """``count + 1`` that saturates instead of overflowing int32."""
    return optax.safe_increment(count)


def zeros_like(params: Any) -> Any:
    return jax.tree.map(jnp.zeros_like, params)


def full_like(params: Any, value: float) -> Any:
    return jax.tree.map(lambda p: jnp.full_like(p, value), params)


def checked_learning_rate(learning_rate: optax.ScalarOrSchedule) -> optax.ScalarOrSchedule:
    check_learning_rate(learning_rate)
    return learning_rate
