"""Pieces shared by the update rules: host-made state, counters and dtype-preserving maps.
(The hyperparameters' tables and dtype are in :mod:`jaxdescent.optim.hyperparams`.)"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

_HOST = threading.local()


@contextlib.contextmanager
def host_state() -> Iterator[None]:
    """Within it, the leaves that jaxdescent's rules make from nothing in ``init`` (zeros,
    counters, hyperparameter values) stay NumPy arrays instead of being put on the device.

    :func:`jaxdescent.fit` builds the initial state so: the compiled loop takes NumPy
    arguments for next to nothing, where a ``jax.device_put`` costs about 30 us of host time
    per leaf (about 0.3 ms for Adam's state). Arrays of several devices are still put as the
    params are.
    """
    previous = getattr(_HOST, "on", False)
    _HOST.on = True
    try:
        yield
    finally:
        _HOST.on = previous


def _host_array(x: np.ndarray, sharding=None):
    if getattr(_HOST, "on", False) and sharding is None:
        return x
    return jax.device_put(x, sharding)


# --- tree helpers ----------------------------------------------------------------------------


def scale_like(tree: Any, factor: jax.Array) -> Any:
    """``factor * leaf`` for every leaf, keeping each leaf's dtype.

    (``optax.tree.scale`` multiplies as given, so a float64 factor under x64 would turn
    float32 updates into float64 ones.)
    """
    return jax.tree.map(lambda x: jnp.asarray(factor, x.dtype) * x, tree)


def increment(count: jax.Array) -> jax.Array:
    """``count + 1`` that saturates instead of overflowing int32."""
    return optax.safe_increment(count)


def check_flag(name: str, value: Any) -> bool:
    """A boolean option: ``True`` or ``False`` only (a string such as ``"no"`` is truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False; got {value!r} ({type(value).__name__})")
    return bool(value)


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


def zeros_like(tree: Any) -> Any:
    """``optax.tree.zeros_like``, made on the host for concrete arrays.

    An eager ``jnp.zeros_like`` compiles a small XLA program per shape the first time it
    meets one (about 20 ms each on CPU), which a model's first ``fit`` pays for every
    distinct parameter shape. NumPy zeros put on the array's devices cost no compile; traced
    leaves (under ``jit`` or ``vmap``) get ``jnp.zeros_like``.
    """
    return full_like(tree, 0)


def full_like(tree: Any, value: float) -> Any:
    """``optax.tree.full_like``, made on the host for concrete (JAX or NumPy) arrays, as
    :func:`zeros_like`."""
    return jax.tree.map(lambda x: _full_like(x, value), tree)


def _full_like(x, value):
    if isinstance(x, np.ndarray | np.generic):
        return _host_array(np.full(np.shape(x), value, x.dtype))
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
        full = np.full(x.shape, value, x.dtype)
        # spread over devices as ``x`` is; on one device, uncommitted (free to follow data)
        return _host_array(full, x.sharding if len(x.sharding.device_set) > 1 else None)
    return jnp.full_like(x, value)


def shape_only(init: Callable) -> Callable:
    """Mark a rule's ``init`` as reading only the params' shapes and dtypes (zeros, counters,
    hyperparameter values; never the params' values).

    :func:`jaxdescent.multistart` then builds one restart's state on the host
    (:func:`host_state`) and stacks it, instead of tracing ``vmap(init)`` eagerly (about a
    millisecond of host time per call).
    """
    init.shape_only = True
    return init


def zero_count() -> jax.Array:
    """A step counter at zero (an int32 scalar, put on the device without a compile)."""
    return _host_array(np.zeros((), np.int32))


def curvature_rule(
    init: Callable, update: Callable, stalled: Callable | None = None
) -> optax.GradientTransformationExtraArgs:
    """A second-order rule's transformation, its ``update`` marked as one whose step is
    dominated by curvature work (Hessians, Jacobians, factorizations, trial solves).

    :func:`jaxdescent.fit` compiles the loop of such a rule for latency on CPU
    (:data:`jaxdescent._engine.programs.LATENCY_OPTIONS`): these runs take few, expensive steps,
    so compiling is most of a cold call. ``stalled(state) -> bool``, where given, is true
    only when no later update from ``state`` can change the params (the loop then ends a
    full-batch run ``STALLED``: :func:`jaxdescent._engine.step.stall_test`).
    """
    update.compile_for_latency = True
    if stalled is not None:
        update.stalled = stalled
    return optax.GradientTransformationExtraArgs(init, update)


def no_trial_made(state) -> jax.Array:
    """The stall test of trust-region rules whose state has ``count`` and ``trials``.

    An update makes no trial step only when its radius is at or below ``eps * ||D x||``
    (below the params' rounding). It then leaves the params, the radius and the scaled size
    of the params as they were (the scaling only grows), so every later update makes no
    trial either: the run can no longer move.
    """
    return (state.count > 0) & (state.trials == 0)


def no_step_taken(state) -> jax.Array:
    """The stall test of line-search rules whose state has ``count`` and ``step_size``.

    Their update is a function of the params (with the loss and gradient there) and the
    hyperparameters alone; a step size of 0 means the search found no step that lowers the
    loss and the params did not move, so every later update computes the same zero step.
    """
    return (state.count > 0) & (state.step_size == 0)
