"""First-order update rules as optax transformations.

Each factory checks its hyperparameters when it is called and returns an
``optax.GradientTransformationExtraArgs``: ``init(params) -> state`` and
``update(grads, state, params=None, **extra) -> (updates, state)``. Updates are *added* to
the parameters (``optax.apply_updates``), so they already carry the minus sign and the
learning rate. Extra arguments (such as ``value_fn``, passed by :func:`jaxdescent.fit`)
are accepted and ignored. The learning rate is a float or a schedule ``count -> value``;
``count`` is the number of updates made before this one. Every rule keeps the dtype of the
parameters in its updates and state.

**Hyperparameters are runtime values.** The numeric hyperparameters (the learning rate,
``b1``, ``b2``, ``eps``, ``beta``, ``decay``, ``weight_decay``, ...) live in the last field of
the state, ``state.hyperparams``, a dict of scalar arrays
(:func:`~jaxdescent.optim.hyperparams.hyperparam_dtype`), and ``update`` reads them from
there. ``update`` itself closes over static choices only (a form, a flag, a learning-rate
schedule), so ``adam(1e-3).update`` and ``adam(3e-2).update`` trace to the same program: a
loop over learning rates compiles once, and states with different values can be stacked and
vmapped. Two kinds of value stay fixed in ``update``: a learning rate that is a schedule,
and values given as JAX arrays (which is how ``optax.inject_hyperparams`` passes its current
values on every update); the state holds a copy of the latter, so that the inner state of
``optax.inject_hyperparams(rule)(...)`` equals that of ``rule(...)``. Values used only by
``init`` (``initial_accumulator_value``, ``initial_scale``) shape the initial state and are not
kept. Each rule's values are checked by its table in :mod:`jaxdescent.optim.hyperparams`.

**Complex parameters** are handled as optax handles them: the second moments accumulate
``|g|^2 = conj(g) g`` (real, kept in the params' complex dtype), the first moments ``g``
itself, so every rule takes optax's steps. For a real loss of complex params ``jax.grad``
returns the conjugate of the steepest-ascent direction: pass ``jnp.conj`` of it, as optax's
own tests do.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxdescent._checks import check_choice
from jaxdescent.optim._common import (
    check_flag,
    check_grads,
    full_like,
    increment,
    scale_like,
    shape_only,
    zero_count,
    zeros_like,
)
from jaxdescent.optim.hyperparams import (
    ADAGRAD,
    ADAM,
    ADAMW,
    MOMENTUM,
    RMSPROP,
    SGD,
    Checked,
    Fixed,
)

__all__ = [
    "AdagradState",
    "AdamState",
    "MomentumState",
    "RmspropState",
    "SgdState",
    "adagrad",
    "adam",
    "adamw",
    "momentum",
    "rmsprop",
    "sgd",
]


class SgdState(NamedTuple):
    """State of :func:`sgd`: the number of updates made and the runtime hyperparameters."""

    count: jax.Array
    hyperparams: dict[str, jax.Array]


class MomentumState(NamedTuple):
    """State of :func:`momentum`: update count, velocity ``v`` (same tree as params) and the
    runtime hyperparameters."""

    count: jax.Array
    velocity: Any
    hyperparams: dict[str, jax.Array]


class AdagradState(NamedTuple):
    """State of :func:`adagrad`: update count, running sum of squared gradients and the
    runtime hyperparameters."""

    count: jax.Array
    sum_of_squares: Any
    hyperparams: dict[str, jax.Array]


class RmspropState(NamedTuple):
    """State of :func:`rmsprop`: count, EMA of g^2 (``nu``), of g (``mu``), momentum trace,
    and the runtime hyperparameters."""

    count: jax.Array
    nu: Any
    mu: Any
    trace: Any
    hyperparams: dict[str, jax.Array]


class AdamState(NamedTuple):
    """State of :func:`adam` and :func:`adamw`: count, first and second moment EMAs, and the
    runtime hyperparameters."""

    count: jax.Array
    mu: Any
    nu: Any
    hyperparams: dict[str, jax.Array]


def _count() -> jax.Array:
    return zero_count()


def _c(value: Any, like: jax.Array) -> jax.Array:
    """A hyperparameter in the dtype of ``like``.

    A float64 value (a NumPy scalar, or an array injected by ``optax.inject_hyperparams``
    under x64) would otherwise promote float32 state to float64, changing the state's type
    between steps (a retrace, or a ``lax.scan`` carry error).
    """
    return jnp.asarray(value, dtype=like.dtype)


def _abs_sq(g: jax.Array) -> jax.Array:
    """``|g|^2``: ``g * g`` for real ``g``, ``(conj(g) g).real`` for complex (optax's
    ``abs_sq``; ``g * g`` would be ``g^2``, a complex number of the wrong phase)."""
    if jnp.iscomplexobj(g):
        return (g.conj() * g).real
    return g * g


def sgd(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
    r"""Gradient descent: step against the gradient.

    .. math:: \theta_{t+1} = \theta_t - \alpha_t \nabla L(\theta_t)

    Full-batch gradient descent, stochastic gradient descent (one example per step) and
    mini-batch gradient descent are all this rule; what differs is the batch the gradient is
    computed on, which :func:`jaxdescent.fit` chooses with ``batch_size``.

    Args:
      learning_rate: step size ``alpha >= 0``, or a schedule ``count -> alpha``.

    Returns:
      An optax transformation with state :class:`SgdState`; ``state.hyperparams`` holds
      ``learning_rate`` unless it is a schedule.

    Example:
      >>> import jax, jax.numpy as jnp, jaxdescent as jd
      >>> f = lambda x: x ** 2                     # f'(x) = 2x
      >>> opt = jd.optim.sgd(0.25)
      >>> x = jnp.array(2.3)
      >>> updates, _ = opt.update(jax.grad(f)(x), opt.init(x), x)
      >>> print(f"{float(x + updates):.2f}")       # 2.3 - 0.25 * 4.6
      1.15

    References:
      Cauchy, *Méthode générale pour la résolution des systèmes d'équations simultanées*, 1847.
      Robbins and Monro, *A stochastic approximation method*, 1951.
    """
    checked = SGD.check(learning_rate=learning_rate)
    fixed = checked.fixed

    @shape_only
    def init(params):
        return SgdState(count=_count(), hyperparams=checked.init(params))

    def update(grads, state, params=None, **extra):
        check_grads(grads, params)
        del params, extra
        hp = fixed.values(state.hyperparams, state.count)
        new_state = SgdState(
            count=increment(state.count), hyperparams=fixed.carry(state.hyperparams)
        )
        return scale_like(grads, -hp["learning_rate"]), new_state

    return optax.GradientTransformationExtraArgs(init, fixed.mark(update))


_MOMENTUM_FORMS = ("ema", "classical", "nesterov")


def momentum(
    learning_rate: optax.ScalarOrSchedule, beta: float = 0.9, form: str = "ema"
) -> optax.GradientTransformationExtraArgs:
    r"""Gradient descent with momentum. **The default form is the moving average**
    ``v = beta v + (1 - beta) g``, not PyTorch's and optax's heavy ball ``v = beta v + g``:
    ``momentum(lr / (1 - beta), beta)`` takes the same steps as
    ``momentum(lr, beta, form="classical")`` (and as ``optax.sgd(lr, momentum=beta)``).

    ``form='ema'`` (exponential moving average of gradients, as in Andrew Ng's course notes):

    .. math:: v_t = \beta v_{t-1} + (1 - \beta) g_t, \qquad \theta_{t+1} = \theta_t - \alpha v_t

    ``form='classical'`` (heavy ball; PyTorch's and ``optax.sgd(momentum=beta)``):

    .. math:: v_t = \beta v_{t-1} + g_t, \qquad \theta_{t+1} = \theta_t - \alpha v_t

    ``form='nesterov'`` (Sutskever et al.'s reformulation, ``optax.sgd(nesterov=True)``):

    .. math:: v_t = \beta v_{t-1} + g_t, \qquad \theta_{t+1} = \theta_t - \alpha (g_t + \beta v_t)

    ``v_0 = 0``. By induction the EMA velocity is ``(1 - beta)`` times the classical one, so
    the EMA form with learning rate ``alpha / (1 - beta)`` is the classical form with
    ``alpha``, step for step; with the *same* ``alpha`` the classical form's steps are about
    ``1 / (1 - beta)`` times longer (10 times for ``beta = 0.9``). The EMA form has no bias
    correction: its first steps are shorter by a factor ``1 - beta^t``.

    Args:
      learning_rate: step size ``alpha >= 0`` or a schedule.
      beta: momentum coefficient in ``[0, 1)``.
      form: ``'ema'`` (default), ``'classical'`` or ``'nesterov'``.

    Returns:
      An optax transformation with state :class:`MomentumState`; ``state.hyperparams``
      holds ``beta`` and ``learning_rate`` (unless it is a schedule).

    Example:
      >>> import jax, jax.numpy as jnp, jaxdescent as jd
      >>> grad = jax.grad(lambda x: x ** 2)
      >>> def run(opt, x=jnp.array(1.0)):
      ...     state = opt.init(x)
      ...     for _ in range(3):
      ...         updates, state = opt.update(grad(x), state, x)
      ...         x = x + updates
      ...     return float(x)
      >>> print(f"{run(jd.optim.momentum(0.1, beta=0.9)):.4f}")   # v_1 = 0.1 * 2, ...
      0.8897
      >>> classical = jd.optim.momentum(0.01, beta=0.9, form="classical")
      >>> print(f"{run(classical):.4f}")                          # 0.01 = 0.1 * (1 - 0.9)
      0.8897

    References:
      Polyak, *Some methods of speeding up the convergence of iteration methods*, 1964.
      Sutskever, Martens, Dahl and Hinton, *On the importance of initialization and momentum
      in deep learning*, ICML 2013.
    """
    checked = MOMENTUM.check(learning_rate=learning_rate, beta=beta)
    check_choice("form", form, _MOMENTUM_FORMS)
    fixed = checked.fixed

    @shape_only
    def init(params):
        return MomentumState(
            count=_count(), velocity=zeros_like(params), hyperparams=checked.init(params)
        )

    def update(grads, state, params=None, **extra):
        check_grads(grads, params, state.velocity)
        del params, extra
        hp = fixed.values(state.hyperparams, state.count)
        b = hp["beta"]
        if form == "ema":
            velocity = jax.tree.map(
                lambda v, g: _c(b, v) * v + _c(1 - b, g) * g, state.velocity, grads
            )
            direction = velocity
        else:
            velocity = jax.tree.map(lambda v, g: g + _c(b, v) * v, state.velocity, grads)
            direction = velocity
            if form == "nesterov":
                direction = jax.tree.map(lambda v, g: g + _c(b, v) * v, velocity, grads)
        updates = scale_like(direction, -hp["learning_rate"])
        new_state = MomentumState(
            count=increment(state.count),
            velocity=velocity,
            hyperparams=fixed.carry(state.hyperparams),
        )
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init, fixed.mark(update))


def adagrad(
    learning_rate: optax.ScalarOrSchedule,
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
) -> optax.GradientTransformationExtraArgs:
    r"""Adagrad: per-parameter steps shrinking with the accumulated squared gradient.

    .. math::
       s_t = s_{t-1} + g_t^2, \qquad
       \theta_{t+1} = \theta_t - \alpha \frac{g_t}{\sqrt{s_t + \epsilon}}

    with ``s_0 = initial_accumulator_value``. ``eps`` sits inside the square root, as in
    optax (PyTorch adds it outside, ``g / (sqrt(s) + eps)``, with ``s_0 = 0``).

    Args:
      learning_rate: step size or schedule.
      initial_accumulator_value: ``s_0 >= 0`` (used by ``init`` only).
      eps: ``> 0``, keeps the division finite.

    Returns:
      An optax transformation with state :class:`AdagradState`; ``state.hyperparams``
      holds ``eps`` and ``learning_rate`` (unless it is a schedule).

    Example:
      >>> import jax, jax.numpy as jnp, jaxdescent as jd
      >>> opt = jd.optim.adagrad(0.5)
      >>> x = jnp.array([1.0, -100.0])        # gradients 2 and -200
      >>> updates, state = opt.update(jax.grad(lambda x: jnp.sum(x ** 2))(x), opt.init(x))
      >>> [round(float(u), 3) for u in updates]   # -0.5 g / sqrt(0.1 + g^2): about -0.5 sign(g)
      [-0.494, 0.5]

    References:
      Duchi, Hazan and Singer, *Adaptive subgradient methods for online learning and
      stochastic optimization*, JMLR 2011.
    """
    checked = ADAGRAD.check(
        learning_rate=learning_rate, initial_accumulator_value=initial_accumulator_value, eps=eps
    )
    fixed, initial = checked.fixed, checked.static["initial_accumulator_value"]

    @shape_only
    def init(params):
        return AdagradState(
            count=_count(),
            sum_of_squares=full_like(params, initial),
            hyperparams=checked.init(params),
        )

    def update(grads, state, params=None, **extra):
        check_grads(grads, params, state.sum_of_squares)
        del params, extra
        hp = fixed.values(state.hyperparams, state.count)
        sums = jax.tree.map(lambda s, g: s + _abs_sq(g), state.sum_of_squares, grads)
        scaled = jax.tree.map(
            lambda s, g: (
                jnp.where(s > 0, jax.lax.rsqrt(s + _c(hp["eps"], s)), 0.0).astype(g.dtype) * g
            ),
            sums,
            grads,
        )
        new_state = AdagradState(
            count=increment(state.count),
            sum_of_squares=sums,
            hyperparams=fixed.carry(state.hyperparams),
        )
        return scale_like(scaled, -hp["learning_rate"]), new_state

    return optax.GradientTransformationExtraArgs(init, fixed.mark(update))


def rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    *,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
    initial_scale: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""RMSprop: divide the gradient by a running root mean square of recent gradients.

    .. math::
       \nu_t = \rho \nu_{t-1} + (1 - \rho) g_t^2, \qquad
       u_t = -\alpha \frac{g_t}{\sqrt{\nu_t + \epsilon}}

    ``centered=True`` also tracks ``mu_t = rho mu_{t-1} + (1 - rho) g_t`` and divides by
    ``sqrt(nu_t - mu_t^2 + eps)``, an estimate of the gradient's standard deviation. With
    ``momentum=m`` the scaled updates feed a trace ``b_t = m b_{t-1} + u_t`` (Nesterov form
    with ``nesterov=True``), exactly as ``optax.rmsprop``. ``eps`` is inside the square
    root as in optax; PyTorch puts it outside.

    Args:
      learning_rate: step size or schedule.
      decay: ``rho`` in ``[0, 1)``.
      eps: ``> 0``.
      centered: normalise by the centred second moment.
      momentum: ``None`` (no trace) or a coefficient in ``[0, 1)``.
      nesterov: Nesterov form of the momentum trace; needs ``momentum``.
      initial_scale: ``nu_0 >= 0`` (used by ``init`` only).

    Returns:
      An optax transformation with state :class:`RmspropState` (``mu`` is ``None`` unless
      ``centered``, ``trace`` is ``None`` without ``momentum``); ``state.hyperparams`` holds
      ``decay``, ``eps``, ``momentum`` when given and ``learning_rate`` (unless it is a
      schedule).

    Raises:
      ValueError: ``nesterov=True`` without ``momentum`` (there is no trace to apply it to).
      TypeError: ``centered`` or ``nesterov`` is not a bool.

    Example:
      >>> import jax, jax.numpy as jnp, jaxdescent as jd
      >>> opt = jd.optim.rmsprop(0.01)
      >>> x = jnp.array([1.0, -100.0])        # gradients 2 and -200
      >>> updates, state = opt.update(jax.grad(lambda x: jnp.sum(x ** 2))(x), opt.init(x))
      >>> [round(float(u), 4) for u in updates]   # -0.01 g / sqrt(0.1 g^2) = -0.01 sqrt(10) sign(g)
      [-0.0316, 0.0316]

    References:
      Tieleman and Hinton, *Lecture 6.5 - rmsprop*, COURSERA: Neural Networks, 2012.
      Graves, *Generating sequences with recurrent neural networks*, 2013 (centred form).
    """
    checked = RMSPROP.check(
        learning_rate=learning_rate,
        decay=decay,
        eps=eps,
        momentum=momentum,
        initial_scale=initial_scale,
    )
    centered = check_flag("centered", centered)
    nesterov = check_flag("nesterov", nesterov)
    has_momentum = momentum is not None
    if nesterov and not has_momentum:
        raise ValueError(
            "nesterov=True needs momentum, a coefficient in [0, 1) (e.g. momentum=0.9): "
            "without a momentum trace there is nothing to apply Nesterov's form to; "
            "got momentum=None"
        )
    fixed, initial = checked.fixed, checked.static["initial_scale"]

    @shape_only
    def init(params):
        zeros = zeros_like(params)
        return RmspropState(
            count=_count(),
            nu=full_like(params, initial),
            mu=zeros if centered else None,
            trace=zeros if has_momentum else None,
            hyperparams=checked.init(params),
        )

    def update(grads, state, params=None, **extra):
        check_grads(grads, params, state.nu)
        del params, extra
        hp = fixed.values(state.hyperparams, state.count)
        rho, eps_ = hp["decay"], hp["eps"]
        nu = jax.tree.map(
            lambda n, g: _c(1 - rho, g) * _abs_sq(g) + _c(rho, n) * n, state.nu, grads
        )
        if centered:
            mu = jax.tree.map(lambda m, g: _c(1 - rho, g) * g + _c(rho, m) * m, state.mu, grads)
            scaled = jax.tree.map(
                lambda g, n, m: g * jax.lax.rsqrt(n - _abs_sq(m) + _c(eps_, n)), grads, nu, mu
            )
        else:
            mu = None
            scaled = jax.tree.map(lambda g, n: g * jax.lax.rsqrt(n + _c(eps_, n)), grads, nu)
        updates = scale_like(scaled, -hp["learning_rate"])
        trace = None
        if has_momentum:
            m = hp["momentum"]
            trace = jax.tree.map(lambda u, b: u + _c(m, b) * b, updates, state.trace)
            updates = (
                jax.tree.map(lambda u, b: u + _c(m, b) * b, updates, trace) if nesterov else trace
            )
        new_state = RmspropState(
            count=increment(state.count),
            nu=nu,
            mu=mu,
            trace=trace,
            hyperparams=fixed.carry(state.hyperparams),
        )
        return updates, new_state

    return optax.GradientTransformationExtraArgs(init, fixed.mark(update))


def _adam_direction(grads, state: AdamState, hp: dict[str, jax.Array], fixed: Fixed):
    b1, b2 = hp["b1"], hp["b2"]
    mu = jax.tree.map(lambda m, g: _c(1 - b1, g) * g + _c(b1, m) * m, state.mu, grads)
    nu = jax.tree.map(lambda v, g: _c(1 - b2, g) * _abs_sq(g) + _c(b2, v) * v, state.nu, grads)
    count = increment(state.count)
    # 1 - b^t as 1 - exp(t log b): the same value to rounding, and exp vectorises on CPU where
    # pow does not (with one count per restart under vmap, pow dominated the whole step)
    t = count.astype(jnp.result_type(float))
    correction1 = 1 - jnp.exp(t * jnp.log(b1))
    correction2 = 1 - jnp.exp(t * jnp.log(b2))
    direction = jax.tree.map(
        lambda m, v: (
            (m / correction1.astype(m.dtype))
            / (
                jnp.sqrt(v / correction2.astype(v.dtype) + _c(hp["eps_root"], v))
                + _c(hp["eps"], v)
            )
        ),
        mu,
        nu,
    )
    new_state = AdamState(count=count, mu=mu, nu=nu, hyperparams=fixed.carry(state.hyperparams))
    return direction, new_state


def _adam_init(checked: Checked):
    @shape_only
    def init(params):
        return AdamState(
            count=_count(),
            mu=zeros_like(params),
            nu=zeros_like(params),
            hyperparams=checked.init(params),
        )

    return init


def adam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam: momentum on the gradient, RMS scaling, both bias-corrected.

    .. math::
       m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
       v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
       \hat m_t = \frac{m_t}{1-\beta_1^t}, \quad \hat v_t = \frac{v_t}{1-\beta_2^t},

    .. math:: \theta_{t+1} = \theta_t - \alpha_t \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}

    Args:
      learning_rate: step size or schedule.
      b1, b2: decay rates in ``[0, 1)``.
      eps: ``> 0``, added outside the square root (as in the paper, optax and PyTorch).
      eps_root: ``>= 0``, added inside it (useful when differentiating through the update).

    Returns:
      An optax transformation with state :class:`AdamState`; ``state.hyperparams`` holds
      ``b1``, ``b2``, ``eps``, ``eps_root`` and ``learning_rate`` (unless it is a schedule).

    Example:
      The first step has length ``alpha`` in every coordinate, whatever the gradient's
      scale (``m_1 / sqrt(v_1) = g / |g|``):

      >>> import jax, jax.numpy as jnp, jaxdescent as jd
      >>> opt = jd.optim.adam(0.1)
      >>> x = jnp.array([1.0, -100.0])        # gradients 2 and -200
      >>> updates, state = opt.update(jax.grad(lambda x: jnp.sum(x ** 2))(x), opt.init(x))
      >>> [round(float(u), 4) for u in updates]
      [-0.1, 0.1]

    References:
      Kingma and Ba, *Adam: A method for stochastic optimization*, ICLR 2015.
    """
    checked = ADAM.check(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root)
    fixed = checked.fixed

    def update(grads, state, params=None, **extra):
        check_grads(grads, params, state.mu)
        del params, extra
        hp = fixed.values(state.hyperparams, state.count)
        direction, new_state = _adam_direction(grads, state, hp, fixed)
        return scale_like(direction, -hp["learning_rate"]), new_state

    return optax.GradientTransformationExtraArgs(_adam_init(checked), fixed.mark(update))


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 1e-4,
) -> optax.GradientTransformationExtraArgs:
    r"""AdamW: Adam with decoupled weight decay.

    .. math:: \theta_{t+1} = \theta_t - \alpha_t \left(\frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}}
       + \epsilon} + \lambda \theta_t\right)

    The decay ``lambda`` (``weight_decay``) is applied to the parameters directly rather than
    added to the gradient, so it is not rescaled by the adaptive denominator. As in optax
    (and unlike PyTorch, whose default is 0.01) the default is ``1e-4``.

    Args:
      learning_rate: step size or schedule.
      b1, b2, eps, eps_root: as in :func:`adam`.
      weight_decay: ``lambda >= 0``.

    Returns:
      An optax transformation with state :class:`AdamState`; ``state.hyperparams`` holds
      :func:`adam`'s values and ``weight_decay``. ``update`` needs ``params``.

    Example:
      With a zero gradient only the decay acts: ``-alpha lambda theta``.

      >>> import jax.numpy as jnp, jaxdescent as jd
      >>> opt = jd.optim.adamw(0.1, weight_decay=0.5)
      >>> x = jnp.array([2.0, -4.0])
      >>> updates, state = opt.update(jnp.zeros(2), opt.init(x), x)
      >>> [round(float(u), 4) for u in updates]
      [-0.1, 0.2]

    References:
      Loshchilov and Hutter, *Decoupled weight decay regularization*, ICLR 2019.
    """
    checked = ADAMW.check(
        learning_rate=learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        weight_decay=weight_decay,
    )
    fixed = checked.fixed

    def update(grads, state, params=None, **extra):
        del extra
        if params is None:
            raise ValueError("adamw needs params in update(grads, state, params)")
        check_grads(grads, params)
        hp = fixed.values(state.hyperparams, state.count)
        direction, new_state = _adam_direction(grads, state, hp, fixed)
        wd = hp["weight_decay"]
        direction = jax.tree.map(lambda d, p: d + _c(wd, p) * p, direction, params)
        return scale_like(direction, -hp["learning_rate"]), new_state

    return optax.GradientTransformationExtraArgs(_adam_init(checked), fixed.mark(update))
