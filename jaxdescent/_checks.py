"""Argument checks that run in Python, before anything is traced or compiled.

Every check raises a ``ValueError`` (or ``TypeError``) whose message names the argument,
says what was expected and shows what was given. Real values that are JAX tracers (for
example a learning rate injected by ``optax.inject_hyperparams``) cannot be inspected and
are let through: they were checked when they were first given as concrete numbers. A traced
integer is an error (:func:`check_int`): integers fix the compiled program.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _concrete(value: Any) -> float | None:
    """Return ``value`` as a Python float when it is a concrete scalar, else ``None``."""
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, (np.ndarray, np.generic, jax.Array)) and np.ndim(value) == 0:
        return float(np.asarray(value))
    return None


def check_real(name: str, value: Any) -> None:
    """A scalar real number (or a tracer, or a schedule when allowed by the caller)."""
    if isinstance(value, jax.core.Tracer):
        return
    if _concrete(value) is None:
        raise TypeError(f"{name} must be a real scalar; got {value!r} ({type(value).__name__})")
    if not np.isfinite(_concrete(value)):
        raise ValueError(f"{name} must be finite; got {value!r}")


def check_nonnegative(name: str, value: Any) -> None:
    check_real(name, value)
    v = _concrete(value)
    if v is not None and v < 0:
        raise ValueError(f"{name} must be >= 0; got {value!r}")


def check_positive(name: str, value: Any) -> None:
    check_real(name, value)
    v = _concrete(value)
    if v is not None and v <= 0:
        raise ValueError(f"{name} must be > 0; got {value!r}")


def check_unit_interval(name: str, value: Any, *, closed_right: bool = False) -> None:
    """``value`` in [0, 1), or [0, 1] when ``closed_right``."""
    check_real(name, value)
    v = _concrete(value)
    if v is None:
        return
    ok = 0.0 <= v <= 1.0 if closed_right else 0.0 <= v < 1.0
    if not ok:
        interval = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"{name} must be in {interval}; got {value!r}")


def check_learning_rate(value: Any, name: str = "learning_rate") -> None:
    """A non-negative float, or a schedule ``count -> value``.

    A schedule is not evaluated here (it may need tracing); jaxdescent's own schedules check
    their arguments when they are built.
    """
    if callable(value):
        return
    check_nonnegative(name, value)


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """An integer (Python, NumPy, or a concrete integer array of shape ``()``), as an ``int``.

    ``optax.inject_hyperparams`` passes every number it was given as an array, integers
    included; a concrete one is read here. A traced one cannot be: its value fixes the
    program being traced (a loop bound, a shape), so it must stay a Python number, which
    ``inject_hyperparams(rule, static_args=(name,))`` does.
    """
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"{name} must be a concrete integer, known before tracing (it fixes the compiled "
            f"program); got a traced value ({value.aval.str_short()}). Under "
            f"optax.inject_hyperparams, pass it as a static argument: "
            f"optax.inject_hyperparams(rule, static_args=({name!r},))"
        )
    if (
        isinstance(value, (np.ndarray, np.generic, jax.Array))
        and np.ndim(value) == 0
        and jnp.issubdtype(value.dtype, jnp.integer)
    ):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an integer; got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value!r}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    """A flag must be a bool (a string such as ``"no"`` is truthy and would be misread)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r} ({type(value).__name__})")
    return bool(value)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {listed}; got {value!r}")
    return value


def check_callable(name: str, value: Any) -> Callable:
    if not callable(value):
        raise TypeError(f"{name} must be callable; got {value!r} ({type(value).__name__})")
    return value


def check_float_tree(name: str, tree: Any) -> None:
    """Every leaf of ``tree`` is a floating-point array (JAX can only differentiate those)."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    if not leaves:
        raise ValueError(f"{name} must contain at least one array; got an empty pytree {tree!r}")
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path) or "(the root)"
        dtype = getattr(leaf, "dtype", None)
        if dtype is None and (callable(leaf) or isinstance(leaf, (str, bytes))):
            raise TypeError(
                f"{name} must hold only arrays to optimise; leaf {where} is a "
                f"{type(leaf).__name__} ({leaf!r:.60}). For an Equinox or Flax NNX model, split "
                "the arrays from the rest first: params, static = eqx.partition(model, "
                "eqx.is_inexact_array) (or nnx.split) and rebuild it inside the loss"
            )
        if dtype is None:
            dtype = np.asarray(leaf).dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            hint = (
                "If it is a counter or PRNG state of an Equinox/NNX model, filter it out "
                "(eqx.partition(model, eqx.is_inexact_array), or nnx.split) instead of "
                "converting it"
                if jnp.issubdtype(dtype, jnp.integer)
                or jnp.issubdtype(dtype, jax.dtypes.prng_key)
                or dtype == np.bool_
                else "Convert it, e.g. with .astype(jnp.float32)"
            )
            raise TypeError(
                f"{name} must have floating-point leaves (float32, float64, bfloat16, ...); "
                f"leaf {where} has dtype {dtype}. {hint}"
            )
