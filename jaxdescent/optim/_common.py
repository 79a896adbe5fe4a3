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


def check_grads(grads: Any, params: Any, like: Any = None) -> None:
    """Check ``grads`` has the tree structure and leaf shapes of ``params`` (or of ``like``,
    a state tree built from the params, when ``params`` is not given).

    It runs in Python while ``update`` is traced, so it costs nothing in a compiled step, and
    turns a mismatch into a clear ``ValueError`` instead of a ``tree_map`` or broadcasting
    error deep inside the rule (or, worse, updates of the wrong shape).
    """
    name, ref = ("params", params) if params is not None else ("the optimizer state", like)
    if ref is None:
        return
    expected, got = jax.tree.structure(ref), jax.tree.structure(grads)
    if expected != got:
        raise ValueError(
            f"grads must have the same tree structure as {name} (the tree opt.init was given); "
            f"expected {expected}, got {got}"
        )
    for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref)):
        if jnp.shape(g) != jnp.shape(r):
            raise ValueError(
                f"grads{jax.tree_util.keystr(path)} must have shape {jnp.shape(r)} like "
                f"{name}; got shape {jnp.shape(g)}"
            )
