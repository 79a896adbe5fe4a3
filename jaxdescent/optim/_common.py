"""Pieces shared by the update rules: runtime hyperparameters, counters and dtype-preserving
maps."""

from __future__ import annotations

import contextlib
import math
import numbers
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdescent._checks import check_learning_rate

# --- hyperparameters as runtime values -------------------------------------------------------
#
# A rule's numeric hyperparameters live in its state (``state.hyperparams``), not in the
# closure of its ``update``: two rules that differ only in those values then have ``update``
# functions that close over the same static configuration, so a compiled program keyed by
# that configuration serves both (no recompile in a sweep), and a stack of states with
# different values can be vmapped (a sweep in one program). What stays in the closure:
#
# - a learning rate that is a schedule (a function of the step count, not a number);
# - values given as JAX arrays. ``optax.inject_hyperparams`` calls the factory on every update
#   with its own current values as arrays, and those must be the ones used; an array may also
#   be a tracer of an outer transformation. Only Python and NumPy numbers move to the state.


def split_hyperparams(
    learning_rate: optax.ScalarOrSchedule | None = None, **values: Any
) -> tuple[Callable | None, dict[str, jax.Array], dict[str, Any]]:
    """Sort a rule's numeric hyperparameters into ``(schedule, pinned, runtime)``.

    ``schedule`` is the learning rate when it is callable (else ``None``); ``pinned`` holds the
    values given as JAX arrays, used as given by every update; ``runtime`` the Python and
    NumPy numbers, which :func:`initial_hyperparams` puts in the state. ``update`` must close
    over ``schedule`` and ``pinned`` only.
    """
    schedule = learning_rate if callable(learning_rate) else None
    if learning_rate is not None and schedule is None:
        values = {"learning_rate": learning_rate, **values}
    pinned = {k: v for k, v in values.items() if isinstance(v, jax.Array)}
    runtime = {k: v for k, v in values.items() if k not in pinned}
    return schedule, pinned, runtime


def hyperparam_dtype(params: Any) -> jnp.dtype:
    """The dtype runtime hyperparameters are kept in: the widest floating dtype among the
    params' leaves, at least float32 (float32 params keep float32 values even under x64; in
    bfloat16, ``b2 = 0.999`` would round to 1 and Adam's second moment would vanish)."""
    types = (_dtype_of(x) for x in jax.tree.leaves(params))
    floats = [t for t in types if jnp.issubdtype(t, jnp.floating)]
    widest = jax.dtypes.canonicalize_dtype(jnp.result_type(*floats) if floats else float)
    return jnp.promote_types(widest, jnp.float32)


def _dtype_of(x) -> np.dtype:
    dtype = getattr(x, "dtype", None)  # arrays: read it (jnp.result_type costs ~10 us each)
    if isinstance(dtype, np.dtype) and not getattr(x, "weak_type", False):
        return dtype
    return jnp.result_type(x)


def initial_hyperparams(runtime: dict[str, Any], params: Any) -> dict[str, jax.Array]:
    """``state.hyperparams`` at init: each runtime value as a scalar array of
    :func:`hyperparam_dtype`. Each use casts it to the dtype of the leaf it meets."""
    dtype = hyperparam_dtype(params)
    return {name: _scalar(value, dtype) for name, value in runtime.items()}


def _scalar(value, dtype):
    if isinstance(value, numbers.Number | np.ndarray | np.generic):  # on the host: no compile
        return _host_array(np.asarray(value, dtype))
    return jnp.asarray(value, dtype)


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


def current_hyperparams(
    state_hyperparams: dict[str, jax.Array],
    pinned: dict[str, jax.Array],
    schedule: Callable | None,
    count: jax.Array,
) -> dict[str, jax.Array]:
    """The values for the update numbered ``count``: the state's, the pinned ones, and the
    learning rate from its schedule when it has one."""
    hp = {**state_hyperparams, **pinned}
    if schedule is not None:
        hp["learning_rate"] = jnp.asarray(schedule(count))
    return hp


# what each known hyperparameter must satisfy: (test on a float64 array, expectation)
_HYPERPARAM_RULES: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {}


def _rule(names: tuple[str, ...], test: Callable, expected: str) -> None:
    for name in names:
        _HYPERPARAM_RULES[name] = (test, expected)


_rule(("learning_rate",), lambda v: v >= 0, ">= 0 and finite")
_rule(("b1", "b2", "decay", "momentum", "beta"), lambda v: (v >= 0) & (v < 1), "in [0, 1)")
_rule(("eta",), lambda v: (v >= 0) & (v < 1), "in [0, 1)")
_rule(("eps", "initial_damping", "max_radius"), lambda v: v > 0, "> 0 and finite")
_rule(
    ("weight_decay", "damping", "eps_root", "initial_radius"),
    lambda v: v >= 0,
    ">= 0 and finite",
)
_rule(("shrink", "c1"), lambda v: (v > 0) & (v < 1), "in (0, 1)")
_rule(("cg_tol",), lambda v: (v > 0) & (v <= 1), "in (0, 1]")
_rule(("damping_factor",), lambda v: v > 1, "> 1 and finite")


def check_hyperparam(name: str, value: Any) -> None:
    """Check a runtime value of the hyperparameter ``name`` (a number or an array of them,
    e.g. one value per restart), as ``multistart(hyperparams=...)`` receives it.

    Known names get their rule's range (``learning_rate >= 0``; ``b1``, ``b2``, ``decay``,
    ``momentum``, ``beta`` in ``[0, 1)``; ``eps > 0``; ``weight_decay``, ``damping >= 0``;
    ``shrink``, ``c1`` in ``(0, 1)``; ``cg_tol`` in ``(0, 1]``; ``damping_factor > 1``; ...);
    any other name must be finite. Tracers cannot be inspected and pass.

    Raises:
      TypeError: ``value`` is not real (a string, a bool, a complex number, None).
      ValueError: a value is not finite or out of range; the message names
        ``hyperparams[name]``, the expected range and the offending value.
    """
    where = f"hyperparams[{name!r}]"
    if isinstance(value, jax.core.Tracer):
        return
    if isinstance(value, (bool, np.bool_)) or not (
        isinstance(value, numbers.Real)
        or (
            isinstance(value, (np.ndarray, np.generic, jax.Array))
            and (
                jnp.issubdtype(value.dtype, jnp.floating)
                or jnp.issubdtype(value.dtype, jnp.integer)
            )
        )
    ):
        raise TypeError(
            f"{where} must be a real number or an array of real numbers; got {value!r} "
            f"({type(value).__name__})"
        )
    array = np.asarray(value, dtype=np.float64)
    test, expected = _HYPERPARAM_RULES.get(name, (lambda v: np.ones_like(v, bool), "finite"))
    good = np.isfinite(array) & test(array)
    if np.all(good):
        return
    if array.ndim == 0:
        raise ValueError(f"{where} must be {expected}; got {value!r}")
    index = tuple(int(i) for i in np.argwhere(~good)[0])
    raise ValueError(
        f"{where} must be {expected} for every entry; got {array[index]!r} at index "
        f"{index if len(index) > 1 else index[0]} (of {math.prod(array.shape)} values)"
    )


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


def checked_learning_rate(learning_rate: optax.ScalarOrSchedule) -> optax.ScalarOrSchedule:
    check_learning_rate(learning_rate)
    return learning_rate


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
    (:data:`jaxdescent._engine.loop.LATENCY_OPTIONS`): these runs take few, expensive steps,
    so compiling is most of a cold call. ``stalled(state) -> bool``, where given, is true
    only when no later update from ``state`` can change the params (the loop then ends a
    full-batch run ``STALLED``: :func:`jaxdescent._engine.loop.stall_test`).
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
