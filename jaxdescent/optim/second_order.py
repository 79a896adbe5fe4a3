r"""Second-order update rules: Newton's method, its saddle-free form and truncated Newton-CG.

Newton's method models the loss near ``theta`` by its second-order Taylor expansion and jumps
to the model's stationary point:

.. math:: \theta_{t+1} = \theta_t - H^{-1} g, \qquad g = \nabla L(\theta_t),\ H = \nabla^2 L(\theta_t).

Near a minimum with positive-definite ``H`` it converges quadratically, in a handful of steps,
and needs no learning rate. But the stationary point of the model is a saddle or a maximum
when ``H`` is indefinite, so the plain update is *attracted* to saddle points; and forming
``H`` costs ``n^2`` memory. The rules here are the textbook update and the usual remedies:

- :func:`newton`: exact Hessian, Levenberg damping ``H + mu I`` raised until positive
  definite, Armijo backtracking; ``damping=0.0, line_search=False`` is the textbook update.
- :func:`saddle_free_newton`: rescales by ``|H|`` (eigenvalues in absolute value), so
  negative-curvature directions are descended, not climbed.
- :func:`newton_cg`: matrix-free truncated Newton, conjugate gradients on Hessian-vector
  products, stopped on negative curvature; it never forms ``H``.

All are ``optax.GradientTransformationExtraArgs`` whose ``update`` needs the extra argument
``value_fn`` (the loss on the current batch as a function of params), which
:func:`jaxdescent.fit` passes; in a hand-written loop call
``opt.update(grads, state, params, value_fn=loss)``. Updates are added to the params, as in
optax. Every rule runs under ``jit`` and ``vmap`` and never returns a non-finite update from
finite inputs: when the curvature step cannot be computed it falls back to a gradient step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from jaxdescent._checks import check_int, check_nonnegative, check_positive, check_real
from jaxdescent.optim._common import check_grads, increment
from jaxdescent.optim.line_search import (
    armijo_step,
    check_line_search,
    missing_value_fn,
    tree_axpy,
    tree_dtype,
    tree_vdot,
)

__all__ = [
    "NewtonCGState",
    "NewtonState",
    "SaddleFreeNewtonState",
    "newton",
    "newton_cg",
    "saddle_free_newton",
]


class NewtonState(NamedTuple):
    """State of :func:`newton`: update count, and the damping and step size last used."""

    count: jax.Array
    damping: jax.Array
    step_size: jax.Array


class SaddleFreeNewtonState(NamedTuple):
    """State of :func:`saddle_free_newton`: update count and the step size last used."""

    count: jax.Array
    step_size: jax.Array


class NewtonCGState(NamedTuple):
    """State of :func:`newton_cg`: update count, CG iterations and step size last used."""

    count: jax.Array
    cg_steps: jax.Array
    step_size: jax.Array


def _check_params(rule: str, grads: Any, params: Any) -> None:
    if params is None:
        raise ValueError(f"{rule} needs params in update(grads, state, params, value_fn=...)")
    if jax.tree.structure(grads) != jax.tree.structure(params):
        raise ValueError(
            f"{rule}: grads must have the tree structure of params; got "
            f"{jax.tree.structure(grads)} and {jax.tree.structure(params)}"
        )
    check_grads(grads, params)  # and leaf shapes


def _flat_problem(grads, params, value_fn):
    """Flatten params and gradient; return ``(x, g, f, unravel)`` with ``f(x)`` the loss."""
    x, unravel = ravel_pytree(params)
    g = ravel_pytree(grads)[0].astype(x.dtype)

    def f(v):
        return value_fn(unravel(v))

    return x, g, f, unravel


def _finite(*arrays) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays]))


def _symmetric_hessian(f, x) -> jax.Array:
    h = jax.hessian(f)(x)
    return 0.5 * (h + h.T)


class _Search(NamedTuple):
    """Line-search settings shared by the Newton rules (``None``: take the full step)."""

    shrink: float
    c1: float
    max_steps: int


def _step_with_fallback(f, x, d, g, value, search: _Search | None):
    """Step ``t`` along ``d``, else a searched gradient step; returns ``(update, t)``.

    Works on arrays and pytrees alike. ``d`` has already been replaced by ``-g`` where it was
    not finite. With a line search:

    1. the full step ``t = 1`` is taken if it meets the Armijo condition, or if it shrinks the
       gradient norm while raising the loss by no more than rounding (``100 eps (1 + |L|)``):
       close to a minimum the decrease Newton's step promises, about ``g^T H^{-1} g / 2``,
       falls below the loss's rounding error (in float32 especially), and Armijo would
       otherwise accept only steps too short to move the params;
    2. otherwise backtracking from ``t = shrink`` along ``d``;
    3. if that fails, backtracking along ``-g``; if that fails too, the update is zero.
    """
    dtype = tree_dtype(x)
    if search is None:
        return d, jnp.ones([], dtype)
    value = jnp.asarray(f(x) if value is None else value, dtype)
    slope = tree_vdot(g, d)
    full = tree_axpy(1.0, d, x)
    v_full = jnp.asarray(f(full), dtype)
    armijo_full = v_full <= value + search.c1 * slope

    def within_rounding():
        g_full = jax.grad(f)(full)
        slack = 100 * jnp.finfo(dtype).eps * (1 + jnp.abs(value))
        return (tree_vdot(g_full, g_full) < tree_vdot(g, g)) & (v_full <= value + slack)

    unit = armijo_full | jax.lax.cond(armijo_full, lambda: jnp.zeros([], bool), within_rounding)
    kw = {"shrink": search.shrink, "c1": search.c1, "max_steps": search.max_steps}
    t, found = armijo_step(f, x, d, value, slope, initial_step=search.shrink, active=~unit, **kw)
    found = found | unit
    t = jnp.where(unit, 1.0, t).astype(dtype)
    neg_g = jax.tree.map(jnp.negative, g)
    tg, _ = armijo_step(f, x, neg_g, value, -tree_vdot(g, g), active=~found, **kw)
    update = jax.tree.map(
        lambda a, b: jnp.where(found, t.astype(a.dtype) * a, tg.astype(b.dtype) * b), d, neg_g
    )
    return update, jnp.where(found, t, tg)


def _check_search(line_search, shrink, c1, max_line_search_steps) -> _Search | None:
    if not isinstance(line_search, bool):
        raise TypeError(f"line_search must be True or False; got {line_search!r}")
    steps = check_line_search(1.0, shrink, c1, max_line_search_steps)
    return _Search(shrink, c1, steps) if line_search else None


def _levenberg_direction(h, g, damping, factor, max_tries):
    """Solve ``(H + mu I) d = -g`` by Cholesky, raising ``mu`` until ``H + mu I`` is PD.

    ``mu`` starts at ``damping``; after a failed factorisation (NaN, a singular factor or a
    non-descent result) it becomes ``max(factor * mu, 1e-3 * s)`` with ``s`` the largest
    ``|H_ij|``. Since every eigenvalue of ``H`` is at least ``-n s``, a positive-definite
    shift is reached in about ``3 + log10(n)`` tries. Returns ``(d, mu, ok)``.
    """
    n = g.shape[0]
    dtype = g.dtype
    eye = jnp.eye(n, dtype=dtype)
    scale = jnp.max(jnp.abs(h))
    floor = 1e-3 * jnp.where(scale > 0, scale, 1.0)

    def attempt(mu):
        chol = jnp.linalg.cholesky(h + mu * eye)
        d = -jax.scipy.linalg.cho_solve((chol, True), g)
        ok = _finite(chol, d) & (jnp.vdot(g, d) <= 0)
        return d, ok

    def cond(state):
        _, _, ok, i = state
        return ~ok & (i < max_tries)

    def body(state):
        mu, _, _, i = state
        mu = jnp.maximum(factor * mu, floor)
        d, ok = attempt(mu)
        return mu, d, ok, i + 1

    mu0 = jnp.asarray(damping, dtype)
    d0, ok0 = attempt(mu0)
    mu, d, ok, _ = jax.lax.while_loop(cond, body, (mu0, d0, ok0, jnp.zeros([], jnp.int32)))
    return d, mu, ok


def newton(
    damping: float = 0.0,
    line_search: bool = True,
    *,
    damping_factor: float = 10.0,
    max_damping_steps: int = 30,
    shrink: float = 0.5,
    c1: float = 1e-4,
    max_line_search_steps: int = 50,
) -> optax.GradientTransformationExtraArgs:
    r"""Newton's method with the exact Hessian, Levenberg damping and Armijo backtracking.

    .. math::
       (H + \mu I)\, d = -g, \qquad \theta_{t+1} = \theta_t + \alpha\, d,

    with ``H = jax.hessian`` of ``value_fn`` on the flattened params (``ravel_pytree``), solved
    by Cholesky. ``mu`` starts at ``damping``; when ``H + mu I`` is not positive definite
    (the Cholesky factor is NaN) ``mu`` is raised, ``mu <- max(damping_factor * mu,
    1e-3 max|H_ij|)``, until it is (Levenberg), so ``d`` is always a descent direction. With
    ``line_search=True``, ``alpha`` is the first of ``1, 1/2, 1/4, ...`` meeting the Armijo
    condition on ``value_fn`` (Nocedal and Wright's Algorithm 3.1); otherwise ``alpha = 1``.
    No learning rate is needed: near a minimum the full step is accepted and convergence is
    quadratic. (Where the decrease the step promises is below the loss's rounding error, as
    happens close to a minimum in float32, the full step is also taken when it shrinks the
    gradient norm and changes the loss by no more than rounding.)

    ``damping=0.0, line_search=False`` is the *textbook* update ``theta - H^{-1} g`` by a plain
    linear solve, with no safeguard: on an indefinite Hessian it steps to the saddle point or
    maximum of the quadratic model, which is why the safeguards exist.

    If no step can be computed (a non-finite solve, e.g. a singular Hessian in the textbook
    form, or a failed line search) the update falls back to a (searched) gradient step, so
    it is never NaN. The Hessian costs ``n^2`` memory and its factorisation ``n^3`` time, for
    ``n`` parameters: use :func:`newton_cg` beyond a few thousand.

    Args:
      damping: initial Levenberg damping ``mu >= 0``.
      line_search: backtrack on ``value_fn`` (Armijo) from the full Newton step.
      damping_factor: factor (``> 1``) by which ``mu`` grows after a failed factorisation.
      max_damping_steps: most damping increases per update.
      shrink, c1, max_line_search_steps: the line search's step factor in ``(0, 1)``,
        sufficient-decrease constant in ``(0, 1)`` and most trial steps.

    Returns:
      An optax transformation with state :class:`NewtonState`.

    Example:
      >>> import jax, jax.numpy as jnp, jaxdescent as jd
      >>> f = lambda x: 0.5 * x[0] ** 2 + 2.0 * x[1] ** 2 - x[0] * x[1] + x[0]
      >>> res = jd.fit(f, jnp.zeros(2), jd.optim.newton(), steps=10, tol=1e-5)
      >>> int(res.steps_taken), [round(float(v), 4) for v in res.params]   # one step
      (1, [-1.3333, -0.3333])

    References:
      Nocedal and Wright, *Numerical Optimization*, 2nd ed., 2006, Sections 3.3 and 3.4.
      Levenberg, *A method for the solution of certain non-linear problems in least
      squares*, Quarterly of Applied Mathematics, 1944.
    """
    check_nonnegative("damping", damping)
    check_real("damping_factor", damping_factor)
    if float(damping_factor) <= 1.0:
        raise ValueError(f"damping_factor must be > 1; got {damping_factor!r}")
    max_damping_steps = check_int("max_damping_steps", max_damping_steps, minimum=1)
    search = _check_search(line_search, shrink, c1, max_line_search_steps)
    textbook = float(damping) == 0.0 and not line_search

    def init(params):
        dtype = tree_dtype(params)
        return NewtonState(
            count=jnp.zeros([], jnp.int32),
            damping=jnp.asarray(damping, dtype),
            step_size=jnp.zeros([], dtype),
        )

    def update(grads, state, params=None, *, value_fn=None, value=None, grad=None, **extra):
        del grad, extra
        if value_fn is None:
            raise missing_value_fn("newton")
        _check_params("newton", grads, params)
        x, g, f, unravel = _flat_problem(grads, params, value_fn)
        h = _symmetric_hessian(f, x)
        if textbook:
            d = -jnp.linalg.solve(h, g)
            mu, ok = jnp.zeros([], x.dtype), _finite(d)
        else:
            d, mu, ok = _levenberg_direction(h, g, damping, damping_factor, max_damping_steps)
        d = jnp.where(ok, d, -g)
        step, t = _step_with_fallback(f, x, d, g, value, search)
        new_state = NewtonState(
            count=increment(state.count),
            damping=mu.astype(state.damping.dtype),
            step_size=t.astype(state.step_size.dtype),
        )
        return unravel(step), new_state

    return optax.GradientTransformationExtraArgs(init, update)


def saddle_free_newton(
    damping: float = 1e-3,
    line_search: bool = True,
    *,
    shrink: float = 0.5,
    c1: float = 1e-4,
    max_line_search_steps: int = 50,
) -> optax.GradientTransformationExtraArgs:
    r"""Saddle-free Newton: Newton's step rescaled by the absolute value of the Hessian.

    .. math::
       H = Q \Lambda Q^\top, \qquad
       d = -Q \, \max(|\Lambda|, \lambda)^{-1} Q^\top g, \qquad
       \theta_{t+1} = \theta_t + \alpha\, d

    (``lambda`` = ``damping``). Where ``H`` is positive definite this is Newton's step; along
    an eigenvector of negative curvature Newton's step climbs towards the saddle, while this
    one goes downhill, by the same distance. ``max(|Lambda|, lambda)`` is positive, so ``d``
    is always a descent direction, and the floor keeps it finite on a singular Hessian.
    ``alpha`` comes from Armijo backtracking on ``value_fn`` (or is 1 with
    ``line_search=False``). The eigendecomposition costs ``n^3`` for ``n`` parameters.

    Args:
      damping: floor ``lambda > 0`` on the absolute eigenvalues.
      line_search: backtrack on ``value_fn`` from the full step.
      shrink, c1, max_line_search_steps: as in :func:`newton`.

    Returns:
      An optax transformation with state :class:`SaddleFreeNewtonState`.

    Example:
      >>> import jax.numpy as jnp, jaxdescent as jd
      >>> saddle = lambda x: x[0] ** 2 - x[1] ** 2           # saddle point at the origin
      >>> res = jd.fit(saddle, jnp.array([0.5, 0.01]), jd.optim.saddle_free_newton(),
      ...              steps=3)
      >>> [round(float(v), 2) for v in res.params]           # x -> 0 while |y| doubles
      [0.0, 0.08]

    References:
      Dauphin, Pascanu, Gulcehre, Cho, Ganguli and Bengio, *Identifying and attacking the
      saddle point problem in high-dimensional non-convex optimization*, NeurIPS 2014.
    """
    check_positive("damping", damping)
    search = _check_search(line_search, shrink, c1, max_line_search_steps)

    def init(params):
        return SaddleFreeNewtonState(
            count=jnp.zeros([], jnp.int32), step_size=jnp.zeros([], tree_dtype(params))
        )

    def update(grads, state, params=None, *, value_fn=None, value=None, grad=None, **extra):
        del grad, extra
        if value_fn is None:
            raise missing_value_fn("saddle_free_newton")
        _check_params("saddle_free_newton", grads, params)
        x, g, f, unravel = _flat_problem(grads, params, value_fn)
        h = _symmetric_hessian(f, x)
        eigenvalues, q = jnp.linalg.eigh(h)
        scale = jnp.maximum(jnp.abs(eigenvalues), jnp.asarray(damping, x.dtype))
        d = -(q @ ((q.T @ g) / scale))
        d = jnp.where(_finite(d) & (jnp.vdot(g, d) <= 0), d, -g)
        step, t = _step_with_fallback(f, x, d, g, value, search)
        new_state = SaddleFreeNewtonState(
            count=increment(state.count), step_size=t.astype(state.step_size.dtype)
        )
        return unravel(step), new_state

    return optax.GradientTransformationExtraArgs(init, update)


def _steihaug_cg(hvp, g, *, max_steps, tol, damping):
    """Truncated CG on ``(H + damping I) d = -g`` over pytrees; returns ``(d, iterations)``.

    Stops when the residual norm falls below ``tol``, after ``max_steps`` iterations, or on
    a direction of non-positive curvature: then it returns the current iterate, or the
    steepest-descent direction ``-g`` if that happens on the first iteration (Nocedal and
    Wright, Algorithm 7.1).
    """
    dtype = tree_dtype(g)

    def mat(v):
        hv = hvp(v)
        return hv if damping == 0 else tree_axpy(damping, v, hv)

    zeros = jax.tree.map(jnp.zeros_like, g)
    neg_g = jax.tree.map(jnp.negative, g)
    rr0 = tree_vdot(g, g).astype(dtype)

    # state: (j, z, r, p, rr, done, use_gradient)
    def cond(state):
        j, *_, done, _ = state
        return ~done & (j < max_steps)

    def body(state):
        j, z, r, p, rr, _, _ = state
        hp = mat(p)
        curvature = tree_vdot(p, hp).astype(dtype)
        negative = ~(curvature > 0)  # also catches NaN
        alpha = jnp.where(negative, 0.0, rr / jnp.where(negative, 1.0, curvature))
        z_new = tree_axpy(alpha, p, z)
        r_new = tree_axpy(alpha, hp, r)
        rr_new = tree_vdot(r_new, r_new).astype(dtype)
        converged = jnp.sqrt(rr_new) <= tol
        beta = rr_new / jnp.where(rr > 0, rr, 1.0)
        p_new = tree_axpy(beta, p, jax.tree.map(jnp.negative, r_new))

        def keep(new, old):
            return jax.tree.map(lambda a, b: jnp.where(negative, b, a), new, old)

        return (
            j + 1,
            keep(z_new, z),
            keep(r_new, r),
            keep(p_new, p),
            jnp.where(negative, rr, rr_new),
            negative | converged,
            negative & (j == 0),
        )

    start = (
        jnp.zeros([], jnp.int32),
        zeros,
        g,
        neg_g,
        rr0,
        jnp.sqrt(rr0) <= tol,
        jnp.zeros([], bool),
    )
    j, z, *_, use_gradient = jax.lax.while_loop(cond, body, start)
    d = jax.tree.map(lambda a, b: jnp.where(use_gradient, b, a), z, neg_g)
    return d, j


def newton_cg(
    max_cg_steps: int = 20,
    cg_tol: float = 0.5,
    line_search: bool = True,
    *,
    damping: float = 0.0,
    shrink: float = 0.5,
    c1: float = 1e-4,
    max_line_search_steps: int = 50,
) -> optax.GradientTransformationExtraArgs:
    r"""Truncated Newton (Newton-CG): conjugate gradients on Hessian-vector products.

    Approximately solves ``H d = -g`` by conjugate gradients, where each product ``H v`` is
    one forward-over-reverse pass (``jax.jvp`` of ``jax.grad(value_fn)``, linearised once per
    update), so ``H`` is never formed: memory stays ``O(n)``, and a model with a million
    parameters is fine. CG stops

    - when the residual ``||H d + g||`` is below ``min(cg_tol, sqrt(||g||)) ||g||`` (a forcing
      sequence giving superlinear convergence near a minimum),
    - after ``max_cg_steps`` iterations, or
    - on a direction ``p`` of non-positive curvature ``p^T H p <= 0`` (Steihaug): it returns
      the iterate so far, which is a descent direction, or ``-g`` if that happens at once.

    Then ``theta <- theta + alpha d``, with ``alpha`` from Armijo backtracking on
    ``value_fn`` (or 1 with ``line_search=False``). Works on params of any pytree shape.
    ``damping > 0`` solves ``(H + damping I) d = -g`` instead (as in Hessian-free
    optimisation).

    Args:
      max_cg_steps: most CG iterations (Hessian-vector products) per update.
      cg_tol: relative residual tolerance, in ``(0, 1]``.
      line_search: backtrack on ``value_fn`` from the full step.
      damping: Tikhonov damping ``>= 0`` added to ``H``.
      shrink, c1, max_line_search_steps: as in :func:`newton`.

    Returns:
      An optax transformation with state :class:`NewtonCGState`.

    Example:
      >>> import jax.numpy as jnp, jaxdescent as jd
      >>> f = lambda p: jnp.sum((p["a"] - 1.0) ** 2) + 3.0 * jnp.sum(p["b"] ** 2)
      >>> p0 = {"a": jnp.zeros(3), "b": jnp.ones(2)}
      >>> opt = jd.optim.newton_cg(cg_tol=1e-6)         # H has 2 distinct eigenvalues:
      >>> res = jd.fit(f, p0, opt, steps=10, tol=1e-5)   # CG solves exactly in 2 products
      >>> int(res.steps_taken), int(res.opt_state.cg_steps), round(float(res.final_loss), 6)
      (1, 2, 0.0)

    References:
      Nocedal and Wright, *Numerical Optimization*, 2nd ed., 2006, Algorithm 7.1.
      Steihaug, *The conjugate gradient method and trust regions in large scale
      optimization*, SIAM Journal on Numerical Analysis, 1983.
      Martens, *Deep learning via Hessian-free optimization*, ICML 2010.
    """
    max_cg_steps = check_int("max_cg_steps", max_cg_steps, minimum=1)
    check_real("cg_tol", cg_tol)
    if not 0.0 < float(cg_tol) <= 1.0:
        raise ValueError(f"cg_tol must be in (0, 1]; got {cg_tol!r}")
    check_nonnegative("damping", damping)
    search = _check_search(line_search, shrink, c1, max_line_search_steps)

    def init(params):
        dtype = tree_dtype(params)
        return NewtonCGState(
            count=jnp.zeros([], jnp.int32),
            cg_steps=jnp.zeros([], jnp.int32),
            step_size=jnp.zeros([], dtype),
        )

    def update(grads, state, params=None, *, value_fn=None, value=None, grad=None, **extra):
        del grad, extra
        if value_fn is None:
            raise missing_value_fn("newton_cg")
        _check_params("newton_cg", grads, params)
        dtype = tree_dtype(params)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        _, hvp = jax.linearize(jax.grad(value_fn), params)
        gnorm = jnp.sqrt(tree_vdot(grads, grads)).astype(dtype)
        tol = jnp.minimum(jnp.asarray(cg_tol, dtype), jnp.sqrt(gnorm)) * gnorm
        d, cg_steps = _steihaug_cg(hvp, grads, max_steps=max_cg_steps, tol=tol, damping=damping)
        ok = _finite(*jax.tree.leaves(d))
        d = jax.tree.map(lambda a, g: jnp.where(ok, a, -g), d, grads)
        step, t = _step_with_fallback(value_fn, params, d, grads, value, search)
        new_state = NewtonCGState(
            count=increment(state.count), cg_steps=cg_steps, step_size=t.astype(dtype)
        )
        return step, new_state

    return optax.GradientTransformationExtraArgs(init, update)
