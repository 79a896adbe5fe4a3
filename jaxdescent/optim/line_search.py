r"""Backtracking (Armijo) line search, as a transform and as the helper Newton's rules share.

Given a descent direction ``d`` at ``theta`` (one with ``g . d < 0`` for the gradient ``g``),
the search tries the steps ``t = t_0, rho t_0, rho^2 t_0, ...`` and accepts the first one
with *sufficient decrease* (the Armijo condition)

.. math:: L(\theta + t d) \le L(\theta) + c_1 \, t \, g^\top d .

It runs as a ``lax.while_loop``, so it compiles once, works under ``jit`` and ``vmap`` (where
it loops until every batch member has accepted a step) and costs one loss evaluation per
trial step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxdescent.optim._common import increment
from jaxdescent.optim.hyperparams import BACKTRACKING_LINE_SEARCH

__all__ = ["BacktrackingLineSearchState", "backtracking_line_search"]


class BacktrackingLineSearchState(NamedTuple):
    """State of :func:`backtracking_line_search`: update count, the last accepted step and
    the runtime hyperparameters (``initial_step``, ``shrink``, ``c1``).

    ``step_size`` is ``0`` after a search that found no acceptable step (the update was zero).
    """

    count: jax.Array
    step_size: jax.Array
    hyperparams: dict[str, jax.Array]


def tree_vdot(a: Any, b: Any) -> jax.Array:
    """``sum_i <a_i, b_i>`` over the leaves of two trees of the same structure and shapes
    (``optax.tree.vdot``, optax >= 0.2.5: at ``Precision.HIGHEST`` on accelerators)."""
    return optax.tree.vdot(a, b)


def tree_axpy(t: jax.Array, x: Any, y: Any) -> Any:
    """``t * x + y`` leaf by leaf, keeping the dtype of ``y`` (``t`` is cast to it first;
    ``optax.tree.add_scale`` would promote a float32 tree by a float64 ``t`` under x64)."""
    return jax.tree.map(lambda a, b: (jnp.asarray(t, b.dtype) * a + b).astype(b.dtype), x, y)


def tree_dtype(tree: Any) -> Any:
    """The floating dtype all leaves of ``tree`` promote to (``optax.tree.dtype(tree,
    "promote")`` without its ``jnp.asarray`` of each leaf, a device transfer per NumPy leaf
    when a rule's ``init`` runs on the host)."""
    return jnp.result_type(*jax.tree.leaves(tree))


def armijo_step(
    value_fn: Callable[[Any], jax.Array],
    params: Any,
    direction: Any,
    value: jax.Array,
    slope: jax.Array,
    *,
    initial_step: float = 1.0,
    shrink: float = 0.5,
    c1: float = 1e-4,
    max_steps: int = 50,
    active: jax.Array | bool = True,
) -> tuple[jax.Array, jax.Array]:
    """The Armijo step along ``direction``: returns ``(step, found)``.

    ``slope`` is ``g . direction`` at ``params``, where the loss is ``value``. The search stops
    at the first step meeting the Armijo condition, or after ``max_steps`` trials; a search
    that finds none, that starts from a non-descent direction (``slope >= 0`` with a nonzero
    direction), or that is not ``active``, returns ``step = 0`` and ``found = False``. A
    non-finite trial loss counts as a failed trial, so the step never leads to NaN.
    """
    dtype = jnp.result_type(value)
    value = jnp.asarray(value, dtype)
    slope = jnp.asarray(slope, dtype)
    # A zero direction (at a minimum) is accepted with step t0 and changes nothing.
    usable = jnp.asarray(active) & jnp.isfinite(value) & jnp.isfinite(slope) & (slope <= 0)

    def trial(t):
        return jnp.asarray(value_fn(tree_axpy(t, direction, params)), dtype)

    def accepted(t, v):
        return v <= value + jnp.asarray(c1, dtype) * t * slope

    def cond(state):
        t, v, i = state
        return usable & (i < max_steps) & ~accepted(t, v)

    def body(state):
        t, _, i = state
        t = t * jnp.asarray(shrink, dtype)
        return t, trial(t), i + 1

    t0 = jnp.asarray(initial_step, dtype)
    v0 = jax.lax.cond(usable, trial, lambda t: jnp.asarray(jnp.inf, dtype), t0)
    t, v, _ = jax.lax.while_loop(cond, body, (t0, v0, jnp.zeros([], jnp.int32)))
    found = usable & accepted(t, v)
    return jnp.where(found, t, jnp.zeros([], dtype)), found


def check_line_search(initial_step: float, shrink: float, c1: float, max_steps: int) -> int:
    """Python-side checks of the line-search hyperparameters (by
    :data:`~jaxdescent.optim.hyperparams.BACKTRACKING_LINE_SEARCH`'s table); returns
    ``max_steps`` as an ``int``."""
    checked = BACKTRACKING_LINE_SEARCH.check(
        initial_step=initial_step, shrink=shrink, c1=c1, max_steps=max_steps
    )
    return checked.static["max_steps"]


def missing_value_fn(rule: str) -> ValueError:
    return ValueError(
        f"{rule} needs the loss: call update(grads, state, params, value_fn=loss) where "
        "loss(params) is the objective on the current batch (jaxdescent.fit passes it)"
    )


def backtracking_line_search(
    initial_step: float = 1.0,
    shrink: float = 0.5,
    c1: float = 1e-4,
    max_steps: int = 50,
) -> optax.GradientTransformationExtraArgs:
    r"""Scale incoming updates (a descent direction) by a backtracking Armijo step.

    The incoming updates ``d`` are treated as a search direction at ``params``; the output is
    ``t d`` with ``t`` the first of ``t_0, rho t_0, rho^2 t_0, ...`` (``t_0 = initial_step``,
    ``rho = shrink``) such that

    .. math:: L(\theta + t d) \le L(\theta) + c_1 \, t \, \nabla L(\theta)^\top d .

    Chained after a rule that produces a direction it gives that rule a step size, so steepest
    descent with backtracking is ``optax.chain(jd.optim.sgd(1.0), backtracking_line_search())``.
    When no trial in ``max_steps`` satisfies the condition, or ``d`` is not a descent
    direction, the update is zero (and the state's ``step_size`` is 0).

    ``update`` needs the extra argument ``value_fn`` (the loss as a function of params, which
    :func:`jaxdescent.fit` passes); ``value`` (the loss at ``params``) and ``grad`` (its
    gradient) are used when given and computed from ``value_fn`` otherwise. In a chain,
    ``grad`` must be the loss gradient itself, not the transformed updates.

    Args:
      initial_step: first trial step ``t_0 > 0``.
      shrink: factor ``rho`` in ``(0, 1)`` between trials.
      c1: sufficient-decrease constant in ``(0, 1)``.
      max_steps: most trial steps per update (at least 1).

    Returns:
      An optax transformation with state :class:`BacktrackingLineSearchState`;
      ``state.hyperparams`` holds ``initial_step``, ``shrink`` and ``c1`` (runtime values:
      builds that differ in them share a compiled program, and a sweep can set them).

    Example:
      >>> import jax.numpy as jnp, optax, jaxdescent as jd
      >>> opt = optax.chain(jd.optim.sgd(1.0), jd.optim.backtracking_line_search())
      >>> f = lambda x: jnp.sum(x ** 2)
      >>> res = jd.fit(f, jnp.array([3.0, -1.0]), opt, steps=10, tol=1e-6)
      >>> int(res.steps_taken), [float(v) for v in res.params]   # t = 0.5 is exact
      (1, [0.0, 0.0])

    References:
      Armijo, *Minimization of functions having Lipschitz continuous first partial
      derivatives*, Pacific Journal of Mathematics, 1966.
      Nocedal and Wright, *Numerical Optimization*, 2nd ed., 2006, Algorithm 3.1.
    """
    checked = BACKTRACKING_LINE_SEARCH.check(
        initial_step=initial_step, shrink=shrink, c1=c1, max_steps=max_steps
    )
    fixed, max_steps = checked.fixed, checked.static["max_steps"]

    def init(params):
        return BacktrackingLineSearchState(
            count=jnp.zeros([], jnp.int32),
            step_size=jnp.zeros([], tree_dtype(params)),
            hyperparams=checked.init(params),
        )

    def update(updates, state, params=None, *, value_fn=None, value=None, grad=None, **extra):
        del extra
        if value_fn is None:
            raise missing_value_fn("backtracking_line_search")
        if params is None:
            raise ValueError("backtracking_line_search needs params in update(...)")
        if value is None or grad is None:
            value, grad = jax.value_and_grad(value_fn)(params)
        slope = tree_vdot(grad, updates)
        hp = fixed.values(state.hyperparams, state.count)
        step, _ = armijo_step(
            value_fn,
            params,
            updates,
            value,
            slope,
            initial_step=hp["initial_step"],
            shrink=hp["shrink"],
            c1=hp["c1"],
            max_steps=max_steps,
        )
        new_updates = jax.tree.map(lambda u: jnp.asarray(step, u.dtype) * u, updates)
        new_state = BacktrackingLineSearchState(
            count=increment(state.count),
            step_size=step.astype(state.step_size.dtype),
            hyperparams=fixed.carry(state.hyperparams),
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init, fixed.mark(update))
