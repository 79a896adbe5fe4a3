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

from jaxdescent import _curvature as curvature
from jaxdescent._checks import check_int, check_nonnegative, check_positive, check_real
from jaxdescent.optim._common import (
    check_grads,
    curvature_rule,
    increment,
    no_step_taken,
    no_trial_made,
)
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
    """State of :func:`newton`: update count, the damping and step size last used, the trust
    radius, the last gain ratio, how many trial steps the last update took, and the runtime
    hyperparameters."""

    count: jax.Array
    damping: jax.Array
    step_size: jax.Array
    radius: jax.Array
    scale: jax.Array
    rho: jax.Array
    trials: jax.Array
    hyperparams: dict[str, jax.Array]


class SaddleFreeNewtonState(NamedTuple):
    """State of :func:`saddle_free_newton`: update count, the step size last used and the
    runtime hyperparameters."""

    count: jax.Array
    step_size: jax.Array
    hyperparams: dict[str, jax.Array]


class NewtonCGState(NamedTuple):
    """State of :func:`newton_cg`: update count, CG iterations and step size last used, and
    the runtime hyperparameters."""

    count: jax.Array
    cg_steps: jax.Array
    step_size: jax.Array
    hyperparams: dict[str, jax.Array]


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
    """Flatten params and gradient into the working dtype (:mod:`jaxdescent._curvature`).

    Returns ``(x, g, f, unravel, back)``: ``f(x)`` is the loss, ``unravel`` maps a flat
    vector to a params-shaped tree, and ``back`` maps a flat *update* to the params' tree
    and dtypes (half precision params are worked on in float32).
    """
    x, f, to_tree = curvature.flatten(value_fn, params)
    g = ravel_pytree(grads)[0].astype(x.dtype)
    return x, g, f, to_tree, to_tree


def _loss_change(f, x, extra, unravel):
    """``v -> L(v) - L(x)``; for a loss built by ``jd.losses.nll`` (extras given) summed
    example by example over the output-dependent part of the log-likelihood, so constants
    such as ``log(2 pi)/2`` cancel exactly (see :mod:`jaxdescent.optim.least_squares`)."""
    model_fn, likelihood, targets = (extra.get(k) for k in ("model_fn", "likelihood", "targets"))
    if model_fn is not None and likelihood is not None and targets is not None:
        from jaxdescent.optim.least_squares import _change

        return _change(likelihood, targets, lambda v: model_fn(unravel(v)), x)
    value = f(x)
    return lambda v: f(v) - value


def _finite(*arrays) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays]))


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
       gradient norm without raising the loss at all: close to a minimum the decrease
       Newton's step promises, about ``g^T H^{-1} g / 2``, falls below the loss's rounding
       error (in float32 especially), and Armijo would otherwise accept only steps too short
       to move the params. A step that raises the loss is never taken;
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

    def no_rise():
        g_full = jax.grad(f)(full)
        return (tree_vdot(g_full, g_full) < tree_vdot(g, g)) & (v_full <= value)

    unit = armijo_full | jax.lax.cond(armijo_full, lambda: jnp.zeros([], bool), no_rise)
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


def _trust_region_step(lam, q, g, radius, iterations: int = 50):
    """Solve ``min_d g.d + d.H d / 2`` s.t. ``||d|| <= radius`` from ``H = Q diag(lam) Q^T``.

    The solution is ``d(mu) = -(H + mu I)^{-1} g`` with the smallest ``mu >= max(0,
    -lam_min)`` giving ``||d|| <= radius`` (Moré and Sorensen 1983): ``mu = 0`` when ``H`` is
    positive definite and the Newton step fits, else the root of the secular equation
    ``1/radius - 1/||d(mu)|| = 0``, found by Newton's method from below (the function is
    concave and increasing, so the iterates do not overshoot). In the *hard case*, where
    ``g`` has no component along the lowest eigenvector and ``||d(-lam_min)|| < radius``, the
    step is completed along that eigenvector to the boundary. Returns ``(d, mu, exact)``,
    ``exact`` telling that ``(H + mu I) d = -g`` holds (not in the hard case).
    """
    dtype = g.dtype
    gt = q.T @ g
    scale = jnp.maximum(jnp.max(jnp.abs(lam)), jnp.finfo(dtype).tiny)
    eps = jnp.finfo(dtype).eps
    low = jnp.maximum(0.0, -lam[0])
    # a shift that keeps lam + mu safely positive at the lower end; and since
    # ||d(mu)|| <= ||g|| / (lam_min + mu), no root lies below ||g|| / radius - lam_max
    floor = low + jnp.sqrt(eps) * scale * (lam[0] <= jnp.sqrt(eps) * scale)
    floor = jnp.maximum(floor, jnp.linalg.norm(g) / radius - lam[-1])

    def norm2(mu):
        return jnp.sum(gt**2 / (lam + mu) ** 2)

    def body(_, mu):
        z2 = norm2(mu)
        znorm = jnp.sqrt(z2)
        qsum = jnp.sum(gt**2 / (lam + mu) ** 3)
        step = (1.0 / radius - 1.0 / znorm) * znorm**3 / jnp.where(qsum > 0, qsum, 1.0)
        moved = jnp.where(jnp.isfinite(step), mu + step, 2.0 * mu + scale)
        return jnp.where((znorm > radius) & (qsum > 0), moved, mu)

    newton_fits = (lam[0] > jnp.sqrt(eps) * scale) & (norm2(0.0) <= radius**2)
    mu = jnp.where(newton_fits, 0.0, floor)
    interior_hard = ~newton_fits & (norm2(floor) <= radius**2)
    mu = jnp.where(newton_fits | interior_hard, mu, jax.lax.fori_loop(0, iterations, body, mu))
    d = -(q @ (gt / (lam + mu)))
    # hard case: step to the boundary along the lowest eigenvector
    partial = jnp.where(lam + low > jnp.sqrt(eps) * scale, gt / (lam + low), 0.0)
    d_hard = -(q @ partial)
    tau = jnp.sqrt(jnp.maximum(radius**2 - jnp.vdot(d_hard, d_hard), 0.0))
    direction = q[:, 0] * jnp.where(jnp.vdot(g, q[:, 0]) > 0, -1.0, 1.0)
    d = jnp.where(interior_hard, d_hard + tau * direction, d)
    mu = jnp.where(interior_hard, low, mu)
    # last resort (overflow): the steepest-descent step to the boundary
    gnorm = jnp.linalg.norm(g)
    cauchy = -g * (radius / jnp.where(gnorm > 0, gnorm, 1.0))
    good = _finite(d, mu)
    exact = good & ~interior_hard  # then d solves (H + mu I) d = -g
    return jnp.where(good, d, cauchy), jnp.where(good, mu, 0.0), exact


def _trust_region_update(f, x, g, h, value, state, hp, *, max_trials, change, scaled):
    """One trust-region Newton update (Nocedal and Wright, Algorithm 4.1): trial steps with a
    shrinking radius until one lowers the loss with gain ratio above ``eta``.

    With ``scaled`` the region is ``||D d|| <= Delta``, ``D`` the running maximum of
    ``sqrt(|diag H|)`` (Moré's scaling), so parameters of very different sizes are treated
    alike; the subproblem is solved in ``z = D d``.
    """
    dtype = x.dtype
    first = state.count == 0
    if scaled:
        root = jnp.sqrt(jnp.abs(jnp.diagonal(h)))
        scale = jnp.where(first, root, jnp.maximum(state.scale.astype(dtype), root))
        scale = jnp.where((scale > 0) & jnp.isfinite(scale), scale, 1.0)
    else:
        scale = jnp.ones_like(x)
    hs = h / jnp.outer(scale, scale)
    gs = g / scale
    lam, q = jnp.linalg.eigh(hs)
    finite = _finite(lam, q)
    lam = jnp.where(finite, lam, 1.0)
    q = jnp.where(finite, q, jnp.eye(x.size, dtype=dtype))
    # default first radius (initial_radius=None, stored as 0): the Newton step's own length
    # where H is positive definite (so a quadratic is solved in one step), else 1
    gt = q.T @ gs
    newton_len = jnp.sqrt(jnp.sum(gt**2 / jnp.where(lam > 0, lam, 1.0) ** 2))
    auto = jnp.where((lam[0] > 0) & jnp.isfinite(newton_len) & (newton_len > 0), newton_len, 1.0)
    given = hp["initial_radius"].astype(dtype)
    start = jnp.where(given > 0, given, auto)
    state_radius = state.radius.astype(dtype)
    radius0 = jnp.where(first | ~(state_radius > 0), start, state_radius)
    eta = hp["eta"].astype(dtype)
    gnorm2 = jnp.vdot(g, g)
    loss_now = f(x) if value is None else jnp.asarray(value, dtype)
    noise = 16.0 * jnp.finfo(dtype).eps * jnp.abs(loss_now)

    def trial(radius):
        z, mu, exact = _trust_region_step(lam, q, gs, radius)
        d = z / scale
        # the model's decrease; for an exact solution of (H + mu I) d = -g it equals
        # sum (lam_i + 2 mu) zt_i^2 / 2, free of the cancellation in -(g.d + d.H d / 2)
        zt = q.T @ z
        predicted = jnp.where(
            exact,
            0.5 * jnp.sum((lam + 2.0 * mu) * zt**2),
            -(jnp.vdot(g, d) + 0.5 * jnp.vdot(d, h @ d)),
        )
        actual = -change(x + d)
        rho = actual / jnp.where(predicted > 0, predicted, 1.0)
        ok = _finite(d) & jnp.isfinite(actual) & (predicted > 0)
        by_ratio = ok & (actual > 0) & (rho > eta)
        # a promised decrease within the loss's rounding (float32 near a minimum): the ratio
        # is noise, so judge the step by the gradient instead
        quiet = ok & (predicted <= noise)

        def flat():  # a step that does not raise the loss and shrinks the gradient
            g_new = jax.grad(f)(x + d)
            return (actual >= 0) & (jnp.vdot(g_new, g_new) < gnorm2) & _finite(g_new)

        maybe = ok & ~by_ratio & (quiet | (actual == 0))
        accept = by_ratio | jax.lax.cond(maybe, flat, lambda: False)
        return d, mu, rho, accept, jnp.linalg.norm(z), quiet

    # the radius only falls this low after many rejected trials in a row; a step within it
    # changes the scaled params by less than their rounding (eps ||D x||), so no trial is
    # made: a run stalled at the floor of its precision costs a Hessian per step, not
    # max_trials solves
    floor = jnp.finfo(dtype).eps * jnp.linalg.norm(scale * x)

    def cond(s):
        return ~s[3] & (s[4] < max_trials) & (s[0] > floor)

    def body(s):
        radius, _, _, _, i, _, _ = s
        d, mu, rho, accept, size, quiet = trial(radius)
        on_edge = size >= 0.99 * radius
        grown = jnp.where((rho > 0.75) & on_edge, 2.0 * radius, radius)
        grown = jnp.where(rho < 0.25, 0.5 * size, grown)
        # in rounding noise the ratio says nothing about the model: keep the region's size
        grown = jnp.where(quiet, jnp.maximum(radius, radius0), grown)
        shrunk = 0.5 * jnp.where(size > 0, size, radius)
        next_radius = jnp.where(accept, grown, shrunk)
        next_radius = jnp.clip(next_radius, jnp.finfo(dtype).tiny, hp["max_radius"].astype(dtype))
        return next_radius, jnp.where(accept, d, 0.0), mu, accept, i + 1, rho, radius

    start = (
        radius0,
        jnp.zeros_like(x),
        jnp.zeros([], dtype),
        jnp.zeros([], bool),
        jnp.zeros([], jnp.int32),
        jnp.zeros([], dtype),
        radius0,
    )
    radius, step, mu, accept, trials, rho, _ = jax.lax.while_loop(cond, body, start)
    return step, mu, radius, rho, trials, accept, scale


def newton(
    damping: float = 0.0,
    line_search: bool | None = None,
    *,
    initial_radius: float | None = None,
    max_radius: float = 1e10,
    eta: float = 1e-4,
    max_trials: int = 50,
    scaled: bool = True,
    damping_factor: float = 10.0,
    max_damping_steps: int = 30,
    shrink: float = 0.5,
    c1: float = 1e-4,
    max_line_search_steps: int = 50,
) -> optax.GradientTransformationExtraArgs:
    r"""Newton's method with the exact Hessian: trust region (default), line search, textbook.

    The model of the loss around ``theta`` is its second-order Taylor expansion
    ``m(d) = L + g^T d + d^T H d / 2``, with ``H = jax.hessian`` of ``value_fn`` on the
    flattened params (``ravel_pytree``). Three ways to use it:

    - **Trust region** (``line_search=None``, the default): minimise ``m`` within a ball,

      .. math::
         d = \arg\min_{\|d\| \le \Delta} m(d) = -(H + \mu I)^{-1} g, \qquad
         \rho = \frac{L(\theta) - L(\theta + d)}{m(0) - m(d)},

      solved exactly from the eigendecomposition ``H = Q \Lambda Q^T`` (the smallest
      ``mu >= max(0, -lambda_min)`` with ``||d|| <= Delta``, Moré and Sorensen's secular
      equation, hard case included), so negative curvature is *used*, not just avoided. The
      step is taken only if ``rho > eta`` and the loss goes down; ``Delta`` grows (doubles)
      after a good step on the boundary, shrinks to ``||d|| / 4`` after a poor one, and
      rejected steps are retried with a smaller ball, up to ``max_trials`` per update. **A
      step that raises the loss is never taken.** (In floating point close to a minimum,
      where the loss change is below rounding, a step that leaves the loss unchanged and
      shrinks the gradient is taken.) Once ``Delta`` is below the rounding of the params,
      ``eps ||D theta||``, no trial is made: from there no update can move the params, and
      :func:`jaxdescent.fit` ends a full-batch run ``STALLED``. (With a line search, a run
      ends ``STALLED`` when the search found no step: the next update would repeat it.)
    - **Line search** (``line_search=True``): ``(H + mu I) d = -g`` by Cholesky with Levenberg
      damping ``mu`` raised from ``damping`` until ``H + mu I`` is positive definite, then
      Armijo backtracking on ``value_fn`` from the full step (Nocedal and Wright's
      Algorithm 3.1), falling back to a searched gradient step.
    - **Textbook** (``damping=0.0, line_search=False``): ``theta - H^{-1} g`` by a plain linear
      solve, with no safeguard: on an indefinite Hessian it steps to the saddle point or
      maximum of the quadratic model, which is why the safeguards exist. With
      ``damping > 0`` and ``line_search=False`` the Levenberg-damped step is taken in full.

    No learning rate is needed: near a minimum the full Newton step is accepted and
    convergence is quadratic. The Hessian costs ``n^2`` memory and its factorisation ``n^3``
    time for ``n`` parameters: use :func:`newton_cg` beyond a few thousand. Float16 and
    bfloat16 parameters are handled in float32 inside (LAPACK has no half precision). The
    update is never non-finite from finite inputs.

    Args:
      damping: Levenberg damping ``mu >= 0`` (line-search and textbook forms; runtime).
      line_search: ``None`` for the trust region, ``True`` for the line search, ``False`` for
        full steps.
      initial_radius: the first trust radius ``Delta_0 > 0`` (runtime); ``None``: the length
        of the first Newton step when ``H`` is positive definite there (so a quadratic is
        solved in one step), else 1.
      max_radius: the largest trust radius (runtime).
      eta: the smallest gain ratio accepted, in ``[0, 1/4)`` (runtime).
      max_trials: most trial steps per trust-region update.
      scaled: measure the trust region as ``||D d||`` with ``D`` the running maximum of
        ``sqrt(|diag H|)`` (Moré's scaling), so parameters of very different magnitudes are
        stepped alike; ``False``: the plain ball ``||d||``.
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
      Nocedal and Wright, *Numerical Optimization*, 2nd ed., 2006, Chapter 4 (trust regions,
      Algorithms 4.1 and 4.3) and Sections 3.3-3.4. Moré and Sorensen, *Computing a trust
      region step*, SIAM J. Sci. Stat. Comput. 4(3), 1983. Conn, Gould and Toint,
      *Trust-Region Methods*, SIAM, 2000. Levenberg, *A method for the solution of certain
      non-linear problems in least squares*, Quarterly of Applied Mathematics, 1944.
    """
    check_nonnegative("damping", damping)
    if line_search is not None and not isinstance(line_search, bool):
        raise TypeError(f"line_search must be None, True or False; got {line_search!r}")
    check_real("damping_factor", damping_factor)
    if float(damping_factor) <= 1.0:
        raise ValueError(f"damping_factor must be > 1; got {damping_factor!r}")
    max_damping_steps = check_int("max_damping_steps", max_damping_steps, minimum=1)
    if initial_radius is not None:
        check_positive("initial_radius", initial_radius)
    check_positive("max_radius", max_radius)
    check_nonnegative("eta", eta)
    if float(eta) >= 0.25:
        raise ValueError(f"eta must be in [0, 0.25); got {eta!r}")
    max_trials = check_int("max_trials", max_trials, minimum=1)
    if not isinstance(scaled, bool):
        raise TypeError(f"scaled must be True or False; got {scaled!r}")
    search = _check_search(bool(line_search), shrink, c1, max_line_search_steps)
    values = {
        "damping": damping,
        "damping_factor": damping_factor,
        "initial_radius": 0.0 if initial_radius is None else initial_radius,
        "max_radius": max_radius,
        "eta": eta,
        "shrink": shrink,
        "c1": c1,
    }

    def init(params):
        dtype = curvature.work_dtype(tree_dtype(params))
        return NewtonState(
            count=jnp.zeros([], jnp.int32),
            damping=jnp.asarray(damping, dtype),
            step_size=jnp.zeros([], dtype),
            radius=jnp.zeros([], dtype),
            scale=jnp.zeros([ravel_pytree(params)[0].size], dtype),
            rho=jnp.zeros([], dtype),
            trials=jnp.zeros([], jnp.int32),
            hyperparams={k: jnp.asarray(v, dtype) for k, v in values.items()},
        )

    def update(grads, state, params=None, *, value_fn=None, value=None, grad=None, **extra):
        del grad
        if value_fn is None:
            raise missing_value_fn("newton")
        _check_params("newton", grads, params)
        x, g, f, unravel, back = _flat_problem(grads, params, value_fn)
        hp = {k: v.astype(x.dtype) for k, v in state.hyperparams.items()}
        h = curvature.symmetric_hessian(f, x)
        radius, rho = state.radius.astype(x.dtype), jnp.zeros([], x.dtype)
        trials, scale = jnp.zeros([], jnp.int32), state.scale
        if line_search is None:
            change = _loss_change(f, x, extra, unravel)
            step, mu, radius, rho, trials, accepted, scale = _trust_region_update(
                f, x, g, h, value, state, hp,
                max_trials=max_trials, change=change, scaled=scaled,
            )  # fmt: skip
            t = accepted.astype(x.dtype)
        else:
            d, mu, ok = _levenberg_direction(
                h, g, hp["damping"], hp["damping_factor"], max_damping_steps
            )
            if not line_search:  # textbook when damping is 0: a plain solve, no safeguard
                plain = -jnp.linalg.solve(h, g)
                textbook = hp["damping"] == 0
                d = jnp.where(textbook, plain, d)
                ok = jnp.where(textbook, _finite(plain), ok)
                mu = jnp.where(textbook, 0.0, mu)
            d = jnp.where(ok, d, -g)
            sch = None if search is None else search._replace(shrink=hp["shrink"], c1=hp["c1"])
            step, t = _step_with_fallback(f, x, d, g, value, sch)
        step = jnp.where(_finite(step), step, jnp.zeros_like(step))
        new_state = NewtonState(
            count=increment(state.count),
            damping=mu.astype(state.damping.dtype),
            step_size=t.astype(state.step_size.dtype),
            radius=radius.astype(state.radius.dtype),
            scale=scale.astype(state.scale.dtype),
            rho=rho.astype(state.rho.dtype),
            trials=trials,
            hyperparams=state.hyperparams,
        )
        return back(step), new_state

    # the trust region stalls when no trial is made, the line search when it finds no step;
    # the textbook step always moves
    stalled = no_trial_made if line_search is None else no_step_taken if line_search else None
    return curvature_rule(init, update, stalled=stalled)


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
    values = {"damping": damping, "shrink": shrink, "c1": c1}

    def init(params):
        dtype = curvature.work_dtype(tree_dtype(params))
        return SaddleFreeNewtonState(
            count=jnp.zeros([], jnp.int32),
            step_size=jnp.zeros([], dtype),
            hyperparams={k: jnp.asarray(v, dtype) for k, v in values.items()},
        )

    def update(grads, state, params=None, *, value_fn=None, value=None, grad=None, **extra):
        del grad, extra
        if value_fn is None:
            raise missing_value_fn("saddle_free_newton")
        _check_params("saddle_free_newton", grads, params)
        x, g, f, _, back = _flat_problem(grads, params, value_fn)
        hp = {k: v.astype(x.dtype) for k, v in state.hyperparams.items()}
        h = curvature.symmetric_hessian(f, x)
        eigenvalues, q = jnp.linalg.eigh(h)
        scale = jnp.maximum(jnp.abs(eigenvalues), hp["damping"])
        d = -(q @ ((q.T @ g) / scale))
        d = jnp.where(_finite(d) & (jnp.vdot(g, d) <= 0), d, -g)
        sch = None if search is None else search._replace(shrink=hp["shrink"], c1=hp["c1"])
        step, t = _step_with_fallback(f, x, d, g, value, sch)
        new_state = SaddleFreeNewtonState(
            count=increment(state.count),
            step_size=t.astype(state.step_size.dtype),
            hyperparams=state.hyperparams,
        )
        return back(step), new_state

    return curvature_rule(init, update, stalled=no_step_taken if search else None)


def _steihaug_cg(hvp, g, *, max_steps, tol, damping):
    """Truncated CG on ``(H + damping I) d = -g`` over pytrees; returns ``(d, iterations)``.

    Stops when the residual norm falls below ``tol``, after ``max_steps`` iterations, or on
    a direction of non-positive curvature: then it returns the current iterate, or the
    steepest-descent direction ``-g`` if that happens on the first iteration (Nocedal and
    Wright, Algorithm 7.1).
    """
    dtype = tree_dtype(g)

    def mat(v):
        return tree_axpy(damping, v, hvp(v))

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
    values = {"cg_tol": cg_tol, "damping": damping, "shrink": shrink, "c1": c1}

    def init(params):
        dtype = tree_dtype(params)
        return NewtonCGState(
            count=jnp.zeros([], jnp.int32),
            cg_steps=jnp.zeros([], jnp.int32),
            step_size=jnp.zeros([], dtype),
            hyperparams={k: jnp.asarray(v, dtype) for k, v in values.items()},
        )

    def update(grads, state, params=None, *, value_fn=None, value=None, grad=None, **extra):
        del grad, extra
        if value_fn is None:
            raise missing_value_fn("newton_cg")
        _check_params("newton_cg", grads, params)
        dtype = tree_dtype(params)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        hvp = curvature.hvp(value_fn, params)
        hp = {k: v.astype(dtype) for k, v in state.hyperparams.items()}
        gnorm = jnp.sqrt(tree_vdot(grads, grads)).astype(dtype)
        tol = jnp.minimum(hp["cg_tol"], jnp.sqrt(gnorm)) * gnorm
        d, cg_steps = _steihaug_cg(
            hvp, grads, max_steps=max_cg_steps, tol=tol, damping=hp["damping"]
        )
        ok = _finite(*jax.tree.leaves(d))
        d = jax.tree.map(lambda a, g: jnp.where(ok, a, -g), d, grads)
        sch = None if search is None else search._replace(shrink=hp["shrink"], c1=hp["c1"])
        step, t = _step_with_fallback(value_fn, params, d, grads, value, sch)
        new_state = NewtonCGState(
            count=increment(state.count),
            cg_steps=cg_steps,
            step_size=t.astype(dtype),
            hyperparams=state.hyperparams,
        )
        return step, new_state

    return curvature_rule(init, update, stalled=no_step_taken if search else None)
