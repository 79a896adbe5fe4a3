r"""Derivatives of a solve's result: implicit (at the solution) or unrolled (through the steps).

**Implicit.** At a minimiser ``p*(theta)`` of ``L(p, theta)`` the gradient vanishes,
``g(p*(theta), theta) = 0`` with ``g = d L / d p``, so by the implicit function theorem

.. math:: \frac{d p^*}{d\theta}\,\dot\theta = -H^{-1}\, \frac{\partial g}{\partial \theta}\,\dot\theta,
   \qquad H = \frac{\partial^2 L}{\partial p^2}(p^*, \theta),

and the final loss moves by ``dL/dtheta . theta_dot`` (plus ``g . p_dot``, which vanishes at
a minimum). ``theta`` is the solve's ``data`` and any traced value the loss closes over. The
rule is a custom JVP around the whole solve, so forward mode, reverse mode (its transpose)
and higher derivatives work; the loop itself is never differentiated. ``H`` is the Hessian
of the loss on the whole data: formed and eigendecomposed for up to ``DENSE_MAX``
parameters (a derivative that does not exist, where ``H`` is singular or not positive
definite, comes out NaN), else solved by conjugate gradients on Hessian-vector products
(NaN when CG meets a direction of non-positive curvature). References: Krantz and Parks,
*The Implicit Function Theorem*, 2002; Blondel et al., *Efficient and modular implicit
differentiation*, NeurIPS 2022.

**Unrolled.** The steps run in a ``lax.scan`` (a fixed number, no ``tol``) whose body is
reverse-differentiable; the scan is split into about ``sqrt(steps)`` blocks, each
rematerialised on the backward pass (``jax.checkpoint``), so memory grows with about
``2 sqrt(steps)`` states instead of ``steps``. Reference: Griewank and Walther, *Evaluating
Derivatives*, 2nd ed., 2008, chapter 12 (checkpointing).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxdescent._engine import core

DENSE_MAX = 2048  # parameters up to which the Hessian is formed for the implicit solve
CG_MAX_STEPS = 500


def _zero_tangent(x):
    dtype = jnp.result_type(x)
    if jnp.issubdtype(dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return jnp.zeros(jnp.shape(x), jax.dtypes.float0)


def implicit(
    forward: Callable[[Any, Any, Any], tuple[core.State, Any]],
    loss_c: Callable,
    params0: Any,
    theta: Any,
    rest: Any,
) -> tuple[core.State, Any]:
    """``forward(params0, theta, rest) -> (state, history)`` with derivatives with respect to
    ``theta`` by the implicit function theorem; ``loss_c(params, theta)`` is the loss on the
    whole data. ``params0`` and ``rest`` get zero derivatives (the solution does not depend
    on where it started)."""

    @jax.custom_jvp
    def solved(params0, theta, rest):
        return forward(params0, theta, rest)

    @solved.defjvp
    def solved_jvp(primals, tangents):
        params0, theta, rest = primals
        _, theta_dot, _ = tangents
        out = solved(params0, theta, rest)
        state = out[0]
        p_dot, loss_dot = _ift(loss_c, state.params, theta, theta_dot)
        zero = jax.tree.map(_zero_tangent, out)
        zstate, zhist = zero
        zstate = zstate._replace(params=p_dot, loss=loss_dot.astype(state.loss.dtype))
        return out, (zstate, zhist)

    return solved(params0, theta, rest)


def _ift(loss_c: Callable, params: Any, theta: Any, theta_dot: Any):
    """``(p_dot, loss_dot)`` at the solution ``params`` for the data tangent ``theta_dot``."""
    flat, unravel = ravel_pytree(params)

    def grad_at(v, th):
        return ravel_pytree(jax.grad(lambda p: loss_c(p, th))(unravel(v)))[0].astype(v.dtype)

    def value_at(th):
        return loss_c(params, th)

    _, rhs = jax.jvp(lambda th: grad_at(flat, th), (theta,), (theta_dot,))
    g = grad_at(flat, theta)
    if flat.size <= DENSE_MAX:
        h = jax.jacfwd(lambda v: grad_at(v, theta))(flat)
        v = _dense_solve(0.5 * (h + h.T), -rhs)
    else:
        _, hvp = jax.linearize(lambda v: grad_at(v, theta), flat)
        v = jax.lax.custom_linear_solve(hvp, -rhs, solve=_cg_solve, symmetric=True)
    _, loss_dot = jax.jvp(value_at, (theta,), (theta_dot,))
    loss_dot = loss_dot + jnp.vdot(g, v).astype(jnp.result_type(loss_dot))
    return unravel(v), loss_dot


def _dense_solve(h: jax.Array, b: jax.Array) -> jax.Array:
    """``H^{-1} b`` for a symmetric ``H``, NaN where ``H`` is not safely positive definite
    (the implicit derivative does not exist there). Linear in ``b``."""
    lam, q = jnp.linalg.eigh(h)
    eps = jnp.finfo(h.dtype).eps
    top = jnp.max(jnp.abs(lam))
    good = jnp.all(jnp.isfinite(lam)) & (lam[0] > eps * h.shape[0] * top) & (top > 0)
    inverse = jnp.where(good, 1.0, jnp.nan).astype(h.dtype) / jnp.where(good, lam, 1.0)
    return q @ (inverse * (q.T @ b))


def _cg_solve(matvec: Callable, b: jax.Array) -> jax.Array:
    """Conjugate gradients on ``H x = b`` (relative residual ``sqrt(eps)``); NaN when a
    direction of non-positive curvature is met (``H`` not positive definite)."""
    dtype = b.dtype
    tol2 = jnp.finfo(dtype).eps * jnp.vdot(b, b)

    def cond(c):
        i, _, r, _, _, bad = c
        return (i < CG_MAX_STEPS) & (jnp.vdot(r, r) > tol2) & ~bad

    def body(c):
        i, x, r, p, rr, _ = c
        hp = matvec(p)
        curv = jnp.vdot(p, hp)
        bad = ~(curv > 0)
        alpha = rr / jnp.where(bad, 1.0, curv)
        x, r = x + alpha * p, r - alpha * hp
        rr_new = jnp.vdot(r, r)
        return i + 1, x, r, r + (rr_new / rr) * p, rr_new, bad

    zero = jnp.zeros_like(b)
    start = (jnp.zeros((), jnp.int32), zero, b, b, jnp.vdot(b, b), jnp.asarray(False))
    _, x, r, _, _, bad = jax.lax.while_loop(cond, body, start)
    done = ~bad & (jnp.vdot(r, r) <= 4.0 * tol2 + jnp.finfo(dtype).tiny)
    return jnp.where(done, x, jnp.nan)


def unrolled(
    state: core.State, data, tol, steps: int, *, loss, optimizer, spec: core.Spec
) -> tuple[core.State, Any]:
    """The run of ``steps`` steps as a checkpointed ``lax.scan`` (reverse-differentiable):
    the same evaluations, statuses and history as :func:`jaxdescent._engine.core.run`."""
    optimizer = core.as_extra_args(optimizer)
    tol = jnp.asarray(tol, state.loss.dtype)
    full_batch = spec.batch_size is None
    total = steps + 1 if full_batch else steps
    block = max(1, math.isqrt(total))
    blocks = -(-total // block)
    notes: dict = {}
    one = functools.partial(core.commit, loss=loss, optimizer=optimizer, spec=spec, notes=notes)

    def evaluation(c, _):
        s, m = c
        active = core.running_in_call(s, steps, steps, spec)
        p = core.propose(s, data, loss=loss, spec=spec)
        confirm = p.norm
        if not full_batch:
            confirm = jax.lax.cond(
                p.norm < tol,
                lambda: core._full_norm(loss, data, s.params).astype(p.norm.dtype),
                lambda: jnp.full_like(p.norm, jnp.inf),
            )
        shown = tuple(jnp.where(active, x, jnp.nan) for x in (p.value, p.norm))
        new = one(s, m, p, confirm, tol, steps, steps)
        # past its end the run is frozen (a scan has no early exit)
        return core._select(active, new, (s, m)), shown

    @jax.checkpoint
    def run_block(c, _):
        return jax.lax.scan(evaluation, c, None, length=block)

    start = (state, core.pack((state.params, state.opt_state)))
    (state, here), shown = jax.lax.scan(run_block, start, None, length=blocks)
    state = core.settle(state, here, notes.get("fixed", ()))
    shown = tuple(x.reshape(-1)[:steps] for x in shown)
    if not full_batch:
        state = core.finish(state, data, tol, loss=loss)
    every = spec.record_every
    history = tuple(x[::every] if every else x[:0] for x in shown)
    return state, history
