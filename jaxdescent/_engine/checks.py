"""Checks of a problem before anything is compiled, and small host-side helpers."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdescent import data as data_lib
from jaxdescent._checks import check_callable, check_float_tree, check_int, check_nonnegative
from jaxdescent._engine.cache import Traced, cached, owner_ref
from jaxdescent.likelihoods import Categorical


def has_tracer(tree: Any) -> bool:
    """Whether any leaf of ``tree`` is a JAX tracer (the call is inside a transformation)."""
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def traced_error(function: str) -> TypeError:
    return TypeError(
        f"jd.{function} is a host-side driver (chunks, progress, checkpoints, callbacks) and "
        "cannot run inside jax.jit, jax.vmap or jax.grad: it met a traced value (in its "
        "arguments, or closed over by the loss or optimizer). Use jd.solve, the pure solve, "
        "inside JAX transformations (same loop, same statuses: "
        "jax.jit(jax.vmap(lambda p: jd.solve(loss, p, opt, steps=...))))"
    )


def refuse_traced(function: str, *trees: Any) -> None:
    """``fit`` and ``multistart`` are host drivers: called under ``jax.jit``, ``jax.vmap`` or
    ``jax.grad`` they say so at once, and which function to use instead."""
    if has_tracer(trees):
        raise traced_error(function)


def check_tol(tol: Any) -> None:
    """``tol``: ``None`` or a real number ``>= 0`` (a tracer passes)."""
    if tol is None or isinstance(tol, jax.core.Tracer):
        return
    if np.ndim(tol) != 0 or isinstance(tol, (bool, np.bool_)):
        raise TypeError(f"tol must be None or a real number >= 0; got {tol!r}")
    check_nonnegative("tol", tol)


def check_optimizer(optimizer) -> None:
    if isinstance(optimizer, str):  # a rule's name: say how to build it, or which names exist
        from jaxdescent import optim

        rules = sorted(n for n in optim.__all__ if n.islower())
        hint = (
            f"build it with its factory, e.g. jd.optim.{optimizer}(...)"
            if optimizer in rules
            else f"{optimizer!r} is not an update rule in jd.optim, whose rules are "
            + ", ".join(rules)
        )
        raise TypeError(
            f"optimizer must be an optax GradientTransformation, not a name; got the string "
            f"{optimizer!r}: {hint}"
        )
    if not (
        callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))
    ):
        raise TypeError(
            "optimizer must be an optax GradientTransformation (with init and update), such as "
            f"jd.optim.adam(1e-3); got {optimizer!r}"
        )


def as_key(key: Any, name: str = "key") -> jax.Array:
    """A typed PRNG key from a typed key or a legacy ``uint32[2]`` key."""
    if key is None:
        return _default_key(jax.config.jax_default_prng_impl, jax.config.jax_default_device)
    if isinstance(key, int):
        raise TypeError(f"{name} must be a PRNG key such as jax.random.key(0); got the int {key}")
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(
                f"{name} must be a single PRNG key; got an array of shape {key.shape}"
            )
        return key
    if dtype is not None and np.dtype(dtype) == np.uint32 and np.shape(key) == (2,):
        return jax.random.wrap_key_data(key)
    raise TypeError(f"{name} must be a PRNG key such as jax.random.key(0); got {key!r}")


@functools.lru_cache(maxsize=8)
def _default_key(impl, device) -> jax.Array:
    """``jax.random.key(0)`` (made once per PRNG implementation and default device: a key
    is immutable, and making one costs ~30 us). It is made concrete even when the call is
    inside a transformation, so the cache never holds a tracer."""
    del impl, device  # the cache key: the settings ``jax.random.key`` reads
    with jax.ensure_compile_time_eval():
        return jax.random.key(0)


def check_problem(
    loss, params, data, batch_size, steps, tol, name="params", *, full_batch_any=False
):
    """Python-side checks shared by fit, solve and multistart; returns ``n`` (0 without
    data, or with ``full_batch_any`` and no ``batch_size``: data is then any pytree passed
    whole to the loss). They read shapes and dtypes only, so traced inputs pass."""
    check_callable("loss", loss)
    check_float_tree(name, params)
    steps = check_int("steps", steps, minimum=1)
    if tol is not None:
        check_nonnegative("tol", tol)
    if data is None:
        if batch_size is not None:
            raise ValueError(f"batch_size needs data; got batch_size={batch_size} and data=None")
        n = 0
        probe = (params,)
    elif full_batch_any and batch_size is None:
        n = 0
        probe = (params, data)
    else:
        n = data_lib.check_data(data)
        if batch_size is not None:
            check_int("batch_size", batch_size, minimum=1)
            if batch_size > n:
                raise ValueError(
                    f"batch_size must be at most the number of examples ({n}); got {batch_size}"
                )
        likelihood = getattr(loss, "likelihood", None)
        pair = isinstance(data, (tuple, list)) and len(data) == 2
        if likelihood is not None and pair and not has_tracer(data[1]):
            if isinstance(likelihood, Categorical) and callable(getattr(loss, "apply", None)):
                likelihood.check_targets(data[1], _num_classes(loss.apply, params, data[0]))
            else:
                likelihood.check_targets(data[1])
        probe = (
            params,
            data if batch_size is None else jax.tree.map(lambda x: x[:batch_size], data),
        )
    try:
        out = _output_shape(loss, probe)
    except Exception as err:  # the user's loss failed to trace: say which call
        call = "loss(params)" if data is None else "loss(params, batch)"
        raise ValueError(f"calling {call} failed while checking the problem: {err}") from err
    if not (hasattr(out, "shape") and out.shape == () and jnp.issubdtype(out.dtype, jnp.floating)):
        got = f"shape {getattr(out, 'shape', None)} and dtype {getattr(out, 'dtype', type(out))}"
        raise ValueError(f"loss must return a floating-point scalar (shape ()); got {got}")
    return n


def _output_shape(loss, probe):
    """``jax.eval_shape(loss, *probe)``, traced once per shapes of the arguments (kept with
    the loss's compiled programs: a repeated ``fit`` does not trace the loss again here)."""
    leaves, tree = jax.tree.flatten(probe)
    avals = tuple((np.shape(x), jnp.result_type(x), _weak(x)) for x in leaves)
    try:
        return cached(loss, ("output-shape", tree, avals), lambda: jax.eval_shape(loss, *probe))
    except Traced:  # the loss closes over a traced value: nothing to keep
        return jax.eval_shape(loss, *probe)


def _weak(x) -> bool:
    return bool(getattr(x, "weak_type", False)) or isinstance(x, (int, float, complex))


def _num_classes(apply, params, x) -> int | None:
    """The class count a Categorical likelihood sees: the model output's last axis."""
    try:
        out = jax.eval_shape(apply, params, x)
    except Exception:  # a shape error: the loss check below reports it
        return None
    return int(out.shape[-1]) if out.ndim else None


def device_mesh(axis: str) -> jax.sharding.Mesh:
    """A one-axis mesh of the local devices, with automatic (GSPMD) sharding propagation.

    ``jax.make_mesh`` defaults to *explicit* axes in recent JAX, under which the batch
    gathers inside the loop would need their output shardings spelled out.
    """
    return jax.sharding.Mesh(np.array(jax.local_devices()), (axis,))


def shard_examples(data, n):
    devices = jax.local_devices()
    if n % len(devices):
        raise ValueError(
            f"shard_data needs the number of examples ({n}) to be a multiple of the number of "
            f"devices ({len(devices)})"
        )
    mesh = device_mesh("examples")
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("examples"))
    return jax.device_put(data, spec)


def check_record_every(record_every) -> int:
    """``record_every`` as the loop takes it: ``k >= 1``, or 0 for no history (``None``)."""
    if record_every is None:
        return 0
    return check_int("record_every", record_every, minimum=1)


class _Value:
    """``loss`` without its aux: ``params[, batch] -> value`` for a ``(value, aux)`` loss."""

    def __init__(self, ref):
        self._ref = ref

    def __call__(self, *args):
        out = self._ref()(*args)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise TypeError(
                "has_aux=True needs a loss returning (value, aux); got "
                f"{type(out).__name__} {getattr(out, 'shape', '')}"
            )
        return out[0]


def value_only(loss):
    """``loss`` without its aux, for a ``(value, aux)`` loss: a plain wrapper (its token is
    the loss's, so runs of the same loss share their programs)."""
    return _Value(lambda: loss)


def scalar_loss(loss):
    """The value-only view of a ``has_aux`` loss (:func:`value_only`), after checking it is
    callable."""
    check_callable("loss", loss)
    return value_only(loss)


def aux_at(loss, params, data):
    """The aux output of a ``(value, aux)`` loss at ``params`` on the whole data (jitted)."""
    ref = owner_ref(loss)

    def build():
        def aux(params, data):
            out = ref()(params) if data is None else ref()(params, data)
            return out[1]

        return jax.jit(aux)

    return cached(loss, ("has_aux-aux",), build)(params, data)
