r"""Second-order update rules: Newton's method, its saddle-free form and truncated Newton-CG.

Newton's method models the loss near ``theta`` by its second-order Taylor expansion and jumps
to the model's stationary point:

.. math:: \theta_{t+1} = \theta_t - H^{-1} g, \qquad g = \nabla L(\theta_t),\ H = \nabla^2 L(\theta_t).

Near a minimum with positive-definite ``H`` it converges quadratically, in a handful of steps,
and needs no learning rate. But the stationary point of the model is a saddle or a maximum
when ``H`` is indefinite, so the plain update is *attracted* to saddle points; and forming
``H`` costs ``n^2`` memory. The rules here are the textbook update and the usual remedies:

- :func:`newton`: exact Hessian; by default an exact trust region with one proposal per
  update (:mod:`jaxdescent.optim.trust_region`); or Levenberg damping ``H + mu I`` raised
  until positive definite with Armijo backtracking; ``damping=0.0, line_search=False`` is
  the textbook update.
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
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jaxdescent import _curvature as curvature
from jaxdescent.optim import trust_region as tr
from jaxdescent.optim._common import (
    check_flag,
    check_grads,
    curvature_rule,
    full_like,
    increment,
    no_step_taken,
    shape_only,
    zero_count,
)
from jaxdescent.optim.cg import conjugate_gradient
from jaxdescent.optim.hyperparams import (
    NEWTON,
    NEWTON_CG,
    SADDLE_FREE_NEWTON,
    initial_hyperparams,
)
from jaxdescent.optim.line_search import (
    armijo_step,
    missing_value_fn,
    tree_axpy,
    tree_dtype,
    tree_vdot,
)
from jaxdescent.optim.linear_solve import after

__all__ = [
    "NewtonCGState",
    "NewtonState",
    "SaddleFreeNewtonState",
    "newton",
    "newton_cg",
    "saddle_free_newton",
]


class NewtonState(NamedTuple):
    """State of :func:`newton`.

    ``damping``: the shift ``mu`` of the last step (``H + mu I``); ``step_size``: its length
    factor (line search); ``radius``: the trust radius the next update uses; ``scale``: Moré's
    scaling ``D``; ``rho``: the last gain ratio; ``accepted``: whether the last update moved;
    ``stuck``: it made no trial (the proposal below the params' rounding); and the runtime
    hyperparameters of the form in use.
    """

    count: jax.Array
    damping: jax.Array
    step_size: jax.Array
    radius: jax.Array
    scale: jax.Array
    rho: jax.Array
    accepted: jax.Array
    stuck: jax.Array
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


def _check_search(line_search, shrink, c1, max_steps: int) -> _Search | None:
    """The line search's settings (values checked by the rule's table), or ``None`` for
    full steps."""
    if not isinstance(line_search, bool):
        raise TypeError(f"line_search must be True or False; got {line_search!r}")
    return _Search(shrink, c1, max_steps) if line_search else None


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


def _hessian(f, x, extras, unravel) -> jax.Array:
    """The Hessian of the loss at ``x``: the GGN matrix where it is exact (a likelihood loss
    with canonical link and a model affine in the params, :mod:`jaxdescent._curvature`: one
    Jacobian and one weighted product, as IRLS), else ``jax.hessian``."""
    model_fn, likelihood, targets = (extras.get(k) for k in ("model_fn", "likelihood", "targets"))
    if model_fn is not None and likelihood is not None and targets is not None:

        def out_fn(v):
            return model_fn(unravel(v))

        if curvature.canonical_link(likelihood, targets) and curvature.is_affine(out_fn, x):
            return curvature.ggn(out_fn, likelihood, targets, x).gram
    return curvature.symmetric_hessian(f, x)


class _Proposal(NamedTuple):
    z: jax.Array  # the step in scaled coordinates, d = z / D
    mu: jax.Array  # its shift, (H + mu I) z = -g in scaled coordinates
    predicted: jax.Array  # the model's decrease -(g.z + z.H z / 2)
    radius: jax.Array  # the radius it was solved for
    newton_ok: jax.Array  # H is positive definite: the Newton step exists
    newton_decrease: jax.Array  # the Newton step's own decrease, -g.z_N / 2


def _trust_region_proposal(hs, gs, state, hp, first) -> _Proposal:
    """The exact trust-region step for the scaled ``(H, g)``: the Cholesky factorisation of
    ``H`` first (positive definite and the Newton step fits: done), the eigendecomposition
    and Moré-Sorensen only otherwise (under ``lax.cond``, so a run of Newton steps never pays
    for it)."""
    dtype = gs.dtype
    chol = jnp.linalg.cholesky(hs)
    newton = -jax.scipy.linalg.cho_solve((chol, True), gs)
    pd = tr.finite(newton) & (jnp.vdot(gs, newton) < 0)
    length = jnp.linalg.norm(newton)
    # the first radius (initial_radius=None is stored as 0): the Newton step's own length
    # where H is positive definite (so a quadratic is solved in one step), else 1
    auto = jnp.where(pd & (length > 0), length, 1.0)
    given = hp["initial_radius"]
    start = jnp.where(given > 0, given, auto)
    previous = state.radius.astype(dtype)
    radius = jnp.where(first | ~(previous > 0), start, previous)
    zero = jnp.zeros([], dtype)

    def by_cholesky():
        return newton, zero, -0.5 * jnp.vdot(gs, newton)

    def by_eigenvalues():
        # after the Cholesky, not beside it: under vmap both branches run (linear_solve.after)
        lam, q = jnp.linalg.eigh(after(hs, newton))
        ok = tr.finite(lam, q)
        lam = jnp.where(ok, lam, 1.0)
        q = jnp.where(ok, q, jnp.eye(gs.size, dtype=dtype))
        return tr.more_sorensen(lam, q, gs, radius)

    z, mu, predicted = jax.lax.cond(pd & (length <= radius), by_cholesky, by_eigenvalues)
    return _Proposal(z, mu, predicted, radius, pd, -0.5 * jnp.vdot(gs, newton))


def _trust_region_update(f, x, g, h, state, hp, change: tr.Change, *, scaled: bool):
    """One trust-region Newton update (Nocedal and Wright, Algorithm 4.1, one trial): the
    exact step within the radius, taken when its gain ratio is above ``eta``; the radius
    then follows :func:`jaxdescent.optim.trust_region.next_radius`.

    With ``scaled`` the region is ``||D d|| <= Delta``, ``D`` the running maximum of
    ``sqrt(|diag H|)`` (Moré's scaling), so parameters of very different sizes are treated
    alike; the subproblem is solved in ``z = D d``.
    """
    first = state.count == 0
    if scaled:
        scale = tr.running_scale(state.scale.astype(x.dtype), jnp.sqrt(jnp.abs(jnp.diagonal(h))),
                                 first)  # fmt: skip
    else:
        scale = jnp.ones_like(x)
    hs = h / scale[:, None] / scale[None, :]
    gs = g / scale
    prop = _trust_region_proposal(0.5 * (hs + hs.T), gs, state, hp, first)
    d = prop.z / scale
    size = jnp.linalg.norm(prop.z)
    skip = tr.no_trial(size, jnp.linalg.norm(scale * x), x, d)
    trial = x + d

    def gradient_shrinks():
        g_new = jax.grad(change.fn)(trial)
        return tr.finite(g_new) & (jnp.vdot(g_new, g_new) < jnp.vdot(g, g))

    actual = -change.fn(trial)
    verdict = tr.judge(actual, prop.predicted, hp["eta"], change.size, tr.finite(d),
                       gradient_shrinks)  # fmt: skip
    moved = verdict.accept & ~skip
    # the Newton step's own decrease (where H is positive definite; else the model has no
    # minimum and the region is what limits the step)
    too_small = tr.unmeasured(verdict, jnp.where(prop.newton_ok, prop.newton_decrease, jnp.inf))
    radius = tr.next_radius(prop.radius, verdict.rho, size, moved, hp["max_radius"], too_small)
    radius = jnp.where(skip, prop.radius, jnp.maximum(radius, jnp.finfo(x.dtype).tiny))
    step = jnp.where(moved, d, 0.0)
    return step, prop.mu, radius, verdict.rho, moved, skip, scale


def _newton_values(damping, line_search, initial_radius, max_radius, eta, damping_factor,
                   max_damping_steps, shrink, c1, max_line_search_steps):  # fmt: skip
    """Check :func:`newton`'s arguments, then refuse those the form ``line_search`` selects
    does not read; returns ``(runtime values, search, max_damping_steps)``."""
    if line_search is not None and not isinstance(line_search, bool):
        raise TypeError(f"line_search must be None, True or False; got {line_search!r}")
    given = {
        "damping": damping,
        "damping_factor": damping_factor,
        "max_damping_steps": max_damping_steps,
        "shrink": shrink,
        "c1": c1,
        "max_line_search_steps": max_line_search_steps,
        "initial_radius": initial_radius,
        "max_radius": max_radius,
        "eta": eta,
    }
    defaults = {
        "damping": 0.0,
        "damping_factor": 10.0,
        "shrink": 0.5,
        "c1": 1e-4,
        "max_radius": 1e10,
        "eta": 1e-4,
    }
    # every value given is checked against its range first, whatever the form
    static = NEWTON.check(**given).static
    v = {k: defaults.get(k) if x is None else x for k, x in given.items()}
    tries = 30 if static["max_damping_steps"] is None else static["max_damping_steps"]
    ls_steps = static["max_line_search_steps"]
    search = _Search(v["shrink"], v["c1"], 50 if ls_steps is None else ls_steps)
    if line_search is None:
        unread = ("damping", "damping_factor", "max_damping_steps", "shrink", "c1",
                  "max_line_search_steps")  # fmt: skip
        form = "the trust-region form (line_search=None)"
    else:
        unread = ("initial_radius", "max_radius", "eta")
        if line_search is False:
            unread += ("shrink", "c1", "max_line_search_steps")
        form = f"line_search={line_search}"
    for name in unread:
        if given[name] is not None:
            raise ValueError(
                f"{name} is not read by {form} of newton; got {name}={given[name]!r} (each "
                "form of newton reads only its own arguments; see its docstring)"
            )
    if line_search is None:
        values = {
            "initial_radius": 0.0 if initial_radius is None else initial_radius,
            "max_radius": v["max_radius"],
            "eta": v["eta"],
        }
        return values, None, 1
    values = {"damping": v["damping"], "damping_factor": v["damping_factor"]}
    if not line_search:
        return values, None, tries
    values.update(shrink=v["shrink"], c1=v["c1"])
    return values, search, tries


def newton(
    damping: float | None = None,
    line_search: bool | None = None,
    *,
    initial_radius: float | None = None,
    max_radius: float | None = None,
    eta: float | None = None,
    scaled: bool = True,
    damping_factor: float | None = None,
    max_damping_steps: int | None = None,
    shrink: float | None = None,
    c1: float | None = None,
    max_line_search_steps: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Newton's method with the exact Hessian: trust region (default), line search, textbook.

    The model of the loss around ``theta`` is its second-order Taylor expansion
    ``m(d) = L + g^T d + d^T H d / 2``, with ``H = jax.hessian`` of ``value_fn`` on the
    flattened params (``ravel_pytree``). For a likelihood loss whose Hessian is the Fisher
    information (``jd.losses.nll`` with a canonical link, Bernoulli-logit, Poisson-log,
    Categorical with integer labels or a fixed-scale Gaussian, and a model affine in the
    params, read from its jaxpr: a GLM), ``H`` is formed as ``J^T F J / n`` instead, at
    Gauss-Newton's cost. Three ways to use it:

    - **Trust region** (``line_search=None``, the default): minimise ``m`` within a ball,

      .. math::
         d = \arg\min_{\|D d\| \le \Delta} m(d) = -(H + \mu D^2)^{-1} g, \qquad
         \rho = \frac{L(\theta) - L(\theta + d)}{m(0) - m(d)},

      solved exactly: a Cholesky factorisation of the scaled ``H`` gives the Newton step
      when ``H`` is positive definite and the step fits; otherwise the eigendecomposition
      gives the smallest ``mu >= max(0, -lambda_min)`` with ``||D d|| <= Delta`` (Moré and
      Sorensen's secular equation, hard case included), so negative curvature is *used*, not
      just avoided. Each update makes **one proposal**, taken only if ``rho > eta`` and the loss
      goes down; ``Delta`` doubles after a good step on the boundary (``rho > 3/4``) and shrinks to
      ``||D d|| / 4`` after a poor or rejected one (``rho < 1/4``; Nocedal and Wright's Algorithm
      4.1). A rejected proposal is an update of its own (zero); the next one solves for the smaller
      region. **A step that raises the loss beyond its rounding is never taken.** (Where the
      promised decrease is within the loss's rounding, the ratio is noise and is not read: a step
      that keeps the loss within its rounding and shrinks the gradient is taken; a region too small
      to measure a step in grows.) Once the step cannot change the params (``theta + d == theta``),
      no trial is made: from there no update can move the params, and :func:`jaxdescent.fit` ends a
      full-batch run ``STALLED``. ``D`` is Moré's scaling, the running maximum of ``sqrt(|diag
      H|)`` (``scaled=True``), or ``I``.
    - **Line search** (``line_search=True``): ``(H + mu I) d = -g`` by Cholesky with Levenberg
      damping ``mu`` raised from ``damping`` until ``H + mu I`` is positive definite, then
      Armijo backtracking on ``value_fn`` from the full step (Nocedal and Wright's
      Algorithm 3.1), falling back to a searched gradient step. A run ends ``STALLED`` when
      the search found no step: the next update would repeat it.
    - **Textbook** (``damping=0.0, line_search=False``): ``theta - H^{-1} g`` by a plain linear
      solve, with no safeguard: on an indefinite Hessian it steps to the saddle point or
      maximum of the quadratic model, which is why the safeguards exist. With
      ``damping > 0`` and ``line_search=False`` the Levenberg-damped step is taken in full.

    Each form reads its own arguments and refuses the others' (``newton(damping=0.1)`` is
    an error: the trust region has no damping to set).

    No learning rate is needed: near a minimum the full Newton step is accepted and
    convergence is quadratic. The Hessian costs ``n^2`` memory and its factorisation ``n^3``
    time for ``n`` parameters: use :func:`newton_cg` beyond a few thousand. Float16 and
    bfloat16 parameters are handled in float32 inside (LAPACK has no half precision). The
    update is never non-finite from finite inputs.

    Args:
      damping: Levenberg damping ``mu >= 0`` (line-search and textbook forms, default 0;
        runtime).
      line_search: ``None`` for the trust region, ``True`` for the line search, ``False`` for
        full steps.
      initial_radius: the first trust radius ``Delta_0 > 0`` (runtime); ``None``: the length
        of the first Newton step when ``H`` is positive definite there (so a quadratic is
        solved in one step), else 1.
      max_radius: the largest trust radius (default 1e10, runtime).
      eta: the smallest gain ratio accepted, in ``[0, 1/4)`` (default 1e-4, runtime).
      scaled: measure the trust region as ``||D d||`` with Moré's scaling; ``False``: the
        plain ball ``||d||``.
      damping_factor: factor (``> 1``, default 10) by which ``mu`` grows after a failed
        factorisation (line-search and textbook forms).
      max_damping_steps: most damping increases per update (default 30).
      shrink, c1, max_line_search_steps: the line search's step factor in ``(0, 1)``
        (default 0.5), sufficient-decrease constant in ``(0, 1)`` (1e-4) and most trial
        steps (50).

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
    scaled = check_flag("scaled", scaled)
    values, search, max_damping_steps = _newton_values(
        damping, line_search, initial_radius, max_radius, eta, damping_factor,
        max_damping_steps, shrink, c1, max_line_search_steps,
    )  # fmt: skip

    @shape_only
    def init(params):
        dtype = curvature.work_dtype(tree_dtype(params))
        size = int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))
        return NewtonState(
            count=zero_count(),
            damping=_const((), 0.0, dtype),
            step_size=_const((), 0.0, dtype),
            radius=_const((), 0.0, dtype),
            scale=_const((size,), 0.0, dtype),
            rho=_const((), 0.0, dtype),
            accepted=_const((), False, bool),
            stuck=_const((), False, bool),
            hyperparams=initial_hyperparams(values, params),
        )

    def update(grads, state, params=None, *, value_fn=None, value=None, grad=None, **extra):
        del grad
        if value_fn is None:
            raise missing_value_fn("newton")
        _check_params("newton", grads, params)
        x, g, f, unravel, back = _flat_problem(grads, params, value_fn)
        hp = {k: v.astype(x.dtype) for k, v in state.hyperparams.items()}
        h = _hessian(f, x, extra, unravel)
        radius, rho = state.radius.astype(x.dtype), jnp.zeros([], x.dtype)
        scale, stuck = state.scale, jnp.zeros([], bool)
        if line_search is None:
            change = tr.loss_change(f, x, extra, unravel, value)
            step, mu, radius, rho, moved, stuck, scale = _trust_region_update(
                f, x, g, h, state, hp, change, scaled=scaled
            )
            t = moved.astype(x.dtype)
        else:
            d, mu, ok = _levenberg_direction(
                h, g, hp["damping"], hp["damping_factor"], max_damping_steps
            )
            if not line_search:  # textbook when damping is 0: a plain solve, no safeguard
                # after the Cholesky, not beside it (linear_solve.after)
                plain = -jnp.linalg.solve(after(h, d), g)
                textbook = hp["damping"] == 0
                d = jnp.where(textbook, plain, d)
                ok = jnp.where(textbook, _finite(plain), ok)
                mu = jnp.where(textbook, 0.0, mu)
            d = jnp.where(ok, d, -g)
            sch = None if search is None else search._replace(shrink=hp["shrink"], c1=hp["c1"])
            step, t = _step_with_fallback(f, x, d, g, value, sch)
            moved = t > 0
        step = jnp.where(_finite(step), step, jnp.zeros_like(step))
        new_state = NewtonState(
            count=increment(state.count),
            damping=mu.astype(state.damping.dtype),
            step_size=t.astype(state.step_size.dtype),
            radius=radius.astype(state.radius.dtype),
            scale=scale.astype(state.scale.dtype),
            rho=rho.astype(state.rho.dtype),
            accepted=moved,
            stuck=stuck,
            hyperparams=state.hyperparams,
        )
        return back(step), new_state

    # the trust region stalls when no trial is made, the line search when it finds no step;
    # the textbook step always moves
    stalled = _stuck if line_search is None else no_step_taken if line_search else None
    return curvature_rule(init, update, stalled=stalled)


def _stuck(state) -> jax.Array:
    """The trust region's stall test: the last update made no trial
    (:func:`jaxdescent.optim.trust_region.no_trial`) and left the state as it was."""
    return (state.count > 0) & state.stuck


def _const(shape: tuple[int, ...], value, dtype) -> jax.Array:
    """A constant state leaf, made on the host (:func:`jaxdescent.optim._common.full_like`)."""
    return full_like(np.zeros(shape, dtype), value)


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
    checked = SADDLE_FREE_NEWTON.check(
        damping=damping, shrink=shrink, c1=c1, max_line_search_steps=max_line_search_steps
    )
    search = _check_search(line_search, shrink, c1, checked.static["max_line_search_steps"])
    # the line search's values are runtime state only where a search reads them
    values = {"damping": damping, **({"shrink": shrink, "c1": c1} if search else {})}

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
    static = NEWTON_CG.check(
        max_cg_steps=max_cg_steps, cg_tol=cg_tol, damping=damping, shrink=shrink, c1=c1,
        max_line_search_steps=max_line_search_steps,
    ).static  # fmt: skip
    max_cg_steps = static["max_cg_steps"]
    search = _check_search(line_search, shrink, c1, static["max_line_search_steps"])
    values = {"cg_tol": cg_tol, "damping": damping}
    values.update({"shrink": shrink, "c1": c1} if search else {})

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
        neg_g = jax.tree.map(jnp.negative, grads)
        sol = conjugate_gradient(
            lambda v: tree_axpy(hp["damping"], v, hvp(v)), neg_g, max_steps=max_cg_steps, tol=tol
        )
        # Steihaug: negative curvature on the first direction leaves the gradient step
        d = jax.tree.map(lambda a, b: jnp.where(sol.at_once, b, a), sol.x, neg_g)
        cg_steps = sol.iterations
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
