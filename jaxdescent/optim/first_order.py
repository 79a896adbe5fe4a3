"""First-order update rules as optax transformations.

Each factory checks its hyperparameters when it is called and returns an
``optax.GradientTransformationExtraArgs``: ``init(params) -> state`` and
``update(grads, state, params=None, **extra) -> (updates, state)``. Updates are *added* to
the parameters (``optax.apply_updates``), so they already carry the minus sign and the
learning rate. Extra arguments (such as ``value_fn``, passed by :func:`jaxdescent.fit`)
are accepted and ignored. The learning rate is a float or a schedule ``count -> value``;
``count`` is the number of updates made before this one. Every rule keeps the dtype of the
parameters in its updates and state.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxdescent._checks import (
    check_choice,
    check_nonnegative,
    check_positive,
    check_unit_interval,
)
from jaxdescent.optim._common import (
    check_grads,
    checked_learning_rate,
    full_like,
    increment,
    learning_rate_at,
    scale_like,
    zeros_like,
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
    """State of :func:`sgd`: the number of updates made."""

    count: jax.Array


class MomentumState(NamedTuple):
    """State of :func:`momentum`: update count and velocity ``v`` (same tree as params)."""

    count: jax.Array
    velocity: Any


class AdagradState(NamedTuple):
    """State of :func:`adagrad`: update count and running sum of squared gradients."""

    count: jax.Array
    sum_of_squares: Any


class RmspropState(NamedTuple):
    """State of :func:`rmsprop`: count, EMA of g^2 (``nu``), of g (``mu``), momentum trace."""

    count: jax.Array
    nu: Any
    mu: Any
    trace: Any


class AdamState(NamedTuple):
    """State of :func:`adam` and :func:`adamw`: count, first and second moment EMAs."""

    count: jax.Array
    mu: Any
    nu: Any


def _count() -> jax.Array:
    return jnp.zeros([], jnp.int32)


def _c(value: Any, like: jax.Array) -> jax.Array:
    """A hyperparameter in the dtype of ``like``.

    A NumPy float64 scalar or a float64 array (e.g. injected by ``optax.inject_hyperparams``
    under x64) would otherwise promote float32 state to float64, changing the state's type
    between steps (a retrace, or a ``lax.scan`` carry error).
    """
    return jnp.asarray(value, dtype=like.dtype)


def sgd(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
    r"""Gradient descent: step against the gradient.

    .. math:: \theta_{t+1} = \theta_t - \alpha_t \nabla L(\theta_t)

    Full-batch gradient descent, stochastic gradient descent (one example per step) and
    mini-batch gradient descent are all this rule; what differs is the batch the gradient is
    computed on, which :func:`jaxdescent.fit` chooses with ``batch_size``.

    Args:
      learning_rate: step size ``alpha >= 0``, or a schedule ``count -> alpha``.

    Returns:
      An optax transformation with state :class:`SgdState`.

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
    checked_learning_rate(learning_rate)

    def init(params):
        del params
        return SgdState(count=_count())

    def update(grads, state, params=None, **extra):
        check_grads(grads, params)
        del params, extra
        lr = learning_rate_at(learning_rate, state.count)
        return scale_like(grads, -lr), SgdState(count=increment(state.count))

    return optax.GradientTransformationExtraArgs(init, update)


_MOMENTUM_FORMS = ("ema", "classical", "nesterov")


def momentum(
    learning_rate: optax.ScalarOrSchedule, beta: float = 0.9, form: str = "ema"
) -> optax.GradientTransformationExtraArgs:
    r"""Gradient descent with momentum, in three common forms.

    ``form='ema'`` (exponential moving average of gradients, as in Andrew Ng's course notes):

    .. math:: v_t = \beta v_{t-1} + (1 - \beta) g_t, \qquad \theta_{t+1} = \theta_t - \alpha v_t

    ``form='classical'`` (heavy ball; PyTorch's and ``optax.sgd(momentum=beta)``):

    .. math:: v_t = \beta v_{t-1} + g_t, \qquad \theta_{t+1} = \theta_t - \alpha v_t

    ``form='nesterov'`` (Sutskever et al.'s reformulation, ``optax.sgd(nesterov=True)``):

    .. math:: v_t = \beta v_{t-1} + g_t, \qquad \theta_{t+1} = \theta_t - \alpha (g_t + \beta v_t)

    ``v_0 = 0``. The EMA form has no bias correction: its first steps are shorter by a factor
    ``1 - beta^t``. With the same ``alpha`` the classical form takes steps about
    ``1 / (1 - beta)`` times longer than the EMA form.

    Args:
      learning_rate: step size ``alpha >= 0`` or a schedule.
      beta: momentum coefficient in ``[0, 1)``.
      form: ``'ema'``, ``'classical'`` or ``'nesterov'``.

    References:
      Polyak, *Some methods of speeding up the convergence of iteration methods*, 1964.
      Sutskever, Martens, Dahl and Hinton, *On the importance of initialization and momentum
      in deep learning*, ICML 2013.
    """
    checked_learning_rate(learning_rate)
    check_unit_interval("beta", beta)
    check_choice("form", form, _MOMENTUM_FORMS)

    def init(params):
        return MomentumState(count=_count(), velocity=zeros_like(params))

    def update(grads, state, params=None, **extra):
        check_grads(grads, params, state.velocity)
        del params, extra
        lr = learning_rate_at(learning_rate, state.count)
        if form == "ema":
            velocity = jax.tree.map(
                lambda v, g: _c(beta, v) * v + _c(1 - beta, g) * g, state.velocity, grads
            )
            direction = velocity
        else:
            velocity = jax.tree.map(lambda v, g: g + _c(beta, v) * v, state.velocity, grads)
            direction = velocity
            if form == "nesterov":
                direction = jax.tree.map(lambda v, g: g + _c(beta, v) * v, velocity, grads)
        updates = scale_like(direction, -lr)
        return updates, MomentumState(count=increment(state.count), velocity=velocity)

    return optax.GradientTransformationExtraArgs(init, update)


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
      initial_accumulator_value: ``s_0 >= 0``.
      eps: ``> 0``, keeps the division finite.

    References:
      Duchi, Hazan and Singer, *Adaptive subgradient methods for online learning and
      stochastic optimization*, JMLR 2011.
    """
    checked_learning_rate(learning_rate)
    check_nonnegative("initial_accumulator_value", initial_accumulator_value)
    check_positive("eps", eps)

    def init(params):
        return AdagradState(
            count=_count(), sum_of_squares=full_like(params, initial_accumulator_value)
        )

    def update(grads, state, params=None, **extra):
        check_grads(grads, params, state.sum_of_squares)
        del params, extra
        lr = learning_rate_at(learning_rate, state.count)
        sums = jax.tree.map(lambda s, g: s + g * g, state.sum_of_squares, grads)
        scaled = jax.tree.map(
            lambda s, g: jnp.where(s > 0, jax.lax.rsqrt(s + _c(eps, s)), 0.0).astype(g.dtype) * g,
            sums,
            grads,
        )
        return scale_like(scaled, -lr), AdagradState(
            count=increment(state.count), sum_of_squares=sums
        )

    return optax.GradientTransformationExtraArgs(init, update)


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
      momentum: ``None`` or a coefficient in ``[0, 1)``.
      nesterov: Nesterov form of the momentum trace.
      initial_scale: ``nu_0``.

    References:
      Tieleman and Hinton, *Lecture 6.5 - rmsprop*, COURSERA: Neural Networks, 2012.
      Graves, *Generating sequences with recurrent neural networks*, 2013 (centred form).
    """
    checked_learning_rate(learning_rate)
    check_unit_interval("decay", decay)
    check_positive("eps", eps)
    check_nonnegative("initial_scale", initial_scale)
    if momentum is not None:
        check_unit_interval("momentum", momentum)

    def init(params):
        zeros = zeros_like(params)
        return RmspropState(
            count=_count(),
            nu=full_like(params, initial_scale),
            mu=zeros if centered else None,
            trace=zeros if momentum is not None else None,
        )

    def update(grads, state, params=None, **extra):
        check_grads(grads, params, state.nu)
        del params, extra
        lr = learning_rate_at(learning_rate, state.count)
        nu = jax.tree.map(
            lambda n, g: _c(1 - decay, g) * (g * g) + _c(decay, n) * n, state.nu, grads
        )
        if centered:
            mu = jax.tree.map(
                lambda m, g: _c(1 - decay, g) * g + _c(decay, m) * m, state.mu, grads
            )
            scaled = jax.tree.map(
                lambda g, n, m: g * jax.lax.rsqrt(n - m * m + _c(eps, n)), grads, nu, mu
            )
        else:
            mu = None
            scaled = jax.tree.map(lambda g, n: g * jax.lax.rsqrt(n + _c(eps, n)), grads, nu)
        updates = scale_like(scaled, -lr)
        trace = None
        if momentum is not None:
            trace = jax.tree.map(lambda u, b: u + _c(momentum, b) * b, updates, state.trace)
            updates = (
                jax.tree.map(lambda u, b: u + _c(momentum, b) * b, updates, trace)
                if nesterov
                else trace
            )
        return updates, RmspropState(count=increment(state.count), nu=nu, mu=mu, trace=trace)

    return optax.GradientTransformationExtraArgs(init, update)


def _adam_direction(grads, state: AdamState, b1, b2, eps, eps_root):
    mu = jax.tree.map(lambda m, g: _c(1 - b1, g) * g + _c(b1, m) * m, state.mu, grads)
    nu = jax.tree.map(lambda v, g: _c(1 - b2, g) * (g * g) + _c(b2, v) * v, state.nu, grads)
    count = increment(state.count)
    # 1 - b^t as 1 - exp(t log b): the same value to rounding, and exp vectorises on CPU where
    # pow does not (with one count per restart under vmap, pow dominated the whole step)
    t = count.astype(jnp.result_type(float))
    correction1 = 1 - jnp.exp(t * jnp.log(b1))
    correction2 = 1 - jnp.exp(t * jnp.log(b2))
    direction = jax.tree.map(
        lambda m, v: (
            (m / correction1.astype(m.dtype))
            / (jnp.sqrt(v / correction2.astype(v.dtype) + _c(eps_root, v)) + _c(eps, v))
        ),
        mu,
        nu,
    )
    return direction, AdamState(count=count, mu=mu, nu=nu)


def _check_adam(learning_rate, b1, b2, eps, eps_root) -> None:
    checked_learning_rate(learning_rate)
    check_unit_interval("b1", b1)
    check_unit_interval("b2", b2)
    check_positive("eps", eps)
    check_nonnegative("eps_root", eps_root)


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

    References:
      Kingma and Ba, *Adam: A method for stochastic optimization*, ICLR 2015.
    """
    _check_adam(learning_rate, b1, b2, eps, eps_root)

    def init(params):
        return AdamState(count=_count(), mu=zeros_like(params), nu=zeros_like(params))

    def update(grads, state, params=None, **extra):
        check_grads(grads, params, state.mu)
        del params, extra
        lr = learning_rate_at(learning_rate, state.count)
        direction, new_state = _adam_direction(grads, state, b1, b2, eps, eps_root)
        return scale_like(direction, -lr), new_state

    return optax.GradientTransformationExtraArgs(init, update)


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

    References:
      Loshchilov and Hutter, *Decoupled weight decay regularization*, ICLR 2019.
    """
    _check_adam(learning_rate, b1, b2, eps, eps_root)
    check_nonnegative("weight_decay", weight_decay)

    def init(params):
        return AdamState(count=_count(), mu=zeros_like(params), nu=zeros_like(params))

    def update(grads, state, params=None, **extra):
        del extra
        if params is None:
            raise ValueError("adamw needs params in update(grads, state, params)")
        check_grads(grads, params)
        lr = learning_rate_at(learning_rate, state.count)
        direction, new_state = _adam_direction(grads, state, b1, b2, eps, eps_root)
        direction = jax.tree.map(lambda d, p: d + _c(weight_decay, p) * p, direction, params)
        return scale_like(direction, -lr), new_state

    return optax.GradientTransformationExtraArgs(init, update)
