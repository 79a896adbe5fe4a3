"""Compiled programs of the core loop: one per configuration, kept in the cache.

A program is keyed by the loss, the optimizer's ``update`` and the run's static settings
(:mod:`jaxdescent._engine.cache` says how objects are keyed); the step budget, the tolerance
and the chunk's end are runtime arguments, so runs of another length or tolerance, and fresh
jaxdescent rules with other hyperparameter values, reuse it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
import optax

from jaxdescent import data as data_lib
from jaxdescent._engine import core
from jaxdescent._engine.cache import Program, memo

# XLA:CPU options for the loops of second-order rules (marked by
# :func:`jaxdescent.optim._common.curvature_rule`), whose runs take few, expensive steps, so
# that compiling is most of a cold call: the older fusion emitters compile such a loop in
# about two thirds of the time at about the same speed (benchmarks/RESULTS.md). First-order
# loops keep the defaults: their many cheap steps run faster with the newer emitters.
LATENCY_OPTIONS = {"xla_cpu_use_fusion_emitters": False}

# When such a run's step is also small, unoptimised code compiles much faster and a step
# costs a few tens of microseconds more; a step is small when one run's parameters x the
# data numbers it reads are at most SMALL_WORK. The choice depends on shapes only, never on
# the step budget, so a resumed run computes what one longer run computes, bit for bit.
SMALL_WORK = 1 << 17
SMALL_OPTIONS = {**LATENCY_OPTIONS, "xla_backend_optimization_level": 0}


def small_run(params, data, batch_size: int | None, batched: bool = False) -> bool:
    """Whether one run's step is small (see ``SMALL_WORK``): its parameters times the data
    numbers one step reads (a Jacobian's size for least squares). With ``batched`` the
    params have a leading run axis, which does not count."""
    leaves = jax.tree.leaves(params)
    runs = max(int(np.shape(leaves[0])[0]), 1) if batched and leaves else 1
    n_data = sum(int(np.size(x)) for x in jax.tree.leaves(data))
    if batch_size is not None and data is not None:
        n_data = -(-n_data * batch_size // max(data_lib.num_examples(data), 1))
    work = sum(int(np.size(x)) for x in leaves) * max(n_data, 1)
    return work // runs <= SMALL_WORK


def compiler_options(optimizer: optax.GradientTransformation, small: bool) -> dict | None:
    """The XLA options of a loop: latency options for curvature rules on CPU."""
    if getattr(optimizer.update, "compile_for_latency", False) and jax.default_backend() == "cpu":
        return SMALL_OPTIONS if small else LATENCY_OPTIONS
    return None


def loop(
    loss: Callable,
    optimizer: optax.GradientTransformation,
    spec: core.Spec,
    *,
    batched: bool = False,
    small: bool = False,
) -> Program:
    """The compiled :func:`jaxdescent._engine.core.run` for one configuration (cached).

    Called as ``program((loss, optimizer), state, data, tol, steps, until)``.
    """
    options = compiler_options(optimizer, small)

    def build():
        def run(objects, state, data, tol, steps, until):
            loss, optimizer = objects
            return core.run(
                state, data, tol, steps, until,
                loss=loss, optimizer=optimizer, spec=spec, batched=batched,
            )  # fmt: skip

        return Program(run, compiler_options=options)

    parts = ("loop", loss, optimizer.update, spec, batched, options)
    return memo(parts, build)


def evaluate(loss: Callable, batched: bool = False) -> Program:
    """The compiled loss and gradient norm at ``params`` on the whole data (vmapped over
    runs when ``batched``): ``program(loss, params, data) -> (value, grad_norm)``."""

    def build():
        def value_and_norm(loss, params, data):
            from jaxdescent._engine.step import global_norm, measure

            value, grads = measure(loss, params, data)
            return value, global_norm(grads)

        def run(loss, params, data):
            if batched:
                return jax.vmap(value_and_norm, in_axes=(None, 0, None))(loss, params, data)
            return value_and_norm(loss, params, data)

        return Program(run)

    return memo(("evaluate", loss, batched), build)
