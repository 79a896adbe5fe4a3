"""Learning-rate schedules: pure functions ``count -> value``, safe under jit and vmap.

``count`` is the number of updates made so far (0 for the first). Arguments are checked
when a schedule is built; the returned function only does array arithmetic with
``jnp.where``, so it can be traced with an abstract ``count``.

The decays take their arguments in optax's order, ``(init_value, steps, decay_rate)``
(``optax.exponential_decay(init_value, transition_steps, decay_rate)``, PyTorch's
``StepLR(step_size, gamma)``), and refuse a ``decay_rate`` that would make the learning rate
grow unless ``allow_growth=True``: such a rate almost always means arguments swapped.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxdescent._checks import (
    check_choice,
    check_int,
    check_nonnegative,
    check_positive,
    check_unit_interval,
)
from jaxdescent.optim._common import check_flag

Schedule = Callable[[jax.typing.ArrayLike], jax.Array]
"""A learning-rate schedule: ``count -> value``, a pure function of the number of updates
made so far, as optax's ``ScalarOrSchedule`` accepts."""

__all__ = [
    "Schedule",
    "constant",
    "cosine_decay",
    "cyclic",
    "exponential_decay",
    "inverse_time_decay",
    "join",
    "step_decay",
    "warmup",
]


def _float(count: jax.typing.ArrayLike) -> jax.Array:
    return jnp.asarray(count, dtype=jnp.result_type(float))


def constant(value: float) -> Schedule:
    """``alpha_t = value``."""
    check_nonnegative("value", value)
    return lambda count: jnp.full(jnp.shape(count), value, dtype=jnp.result_type(float))


def _check_growth(name: str, rate: float, allow_growth: bool, order: str) -> None:
    """A decay whose ``rate`` exceeds 1 grows the learning rate without bound: almost always
    arguments given in another library's order. Refuse it unless asked for."""
    grows = not isinstance(rate, jax.core.Tracer) and float(rate) > 1.0
    if not check_flag("allow_growth", allow_growth) and grows:
        raise ValueError(
            f"{name} must be <= 1 for a decay (a rate > 1 grows the learning rate every "
            f"period); got {name}={rate!r}. The arguments are {order}; pass "
            "allow_growth=True if a growing rate is what you want"
        )


def step_decay(
    init_value: float, step_size: int, decay_rate: float, *, allow_growth: bool = False
) -> Schedule:
    r"""Piecewise-constant decay: multiply by ``decay_rate`` every ``step_size`` updates.

    .. math:: \alpha_t = \alpha_0 \, r^{\lfloor t / s \rfloor}

    PyTorch's ``StepLR(step_size, gamma=decay_rate)``, and
    ``optax.exponential_decay(init_value, step_size, decay_rate, staircase=True)``, with
    the arguments in the same order.

    Args:
      init_value: ``alpha_0 >= 0``.
      step_size: updates per period, an integer ``>= 1``.
      decay_rate: ``r`` in ``(0, 1]``; above 1 only with ``allow_growth=True``.
      allow_growth: accept ``decay_rate > 1`` (a rate that grows).

    Returns:
      The schedule ``count -> alpha_count``.
    """
    check_nonnegative("init_value", init_value)
    step_size = check_int("step_size", step_size, minimum=1)
    check_positive("decay_rate", decay_rate)
    _check_growth("decay_rate", decay_rate, allow_growth, "(init_value, step_size, decay_rate)")
    return lambda count: init_value * decay_rate ** jnp.floor(_float(count) / step_size)


def exponential_decay(
    init_value: float,
    transition_steps: int,
    decay_rate: float,
    *,
    staircase: bool = False,
    allow_growth: bool = False,
) -> Schedule:
    r"""Exponential decay, with ``optax.exponential_decay``'s arguments and values.

    .. math:: \alpha_t = \alpha_0 \, r^{t / T}

    (``r^{\lfloor t / T \rfloor}`` with ``staircase=True``.) With ``transition_steps=1``
    this is PyTorch's ``ExponentialLR(gamma=decay_rate)``; equivalently
    ``alpha_0 exp(-k t)`` with ``k = -log(r) / T``.

    Args:
      init_value: ``alpha_0 >= 0``.
      transition_steps: ``T``, the updates over which the rate is multiplied by ``r``, an
        integer ``>= 1``.
      decay_rate: ``r`` in ``(0, 1]``; above 1 only with ``allow_growth=True``.
      staircase: decay in discrete steps every ``T`` updates (then :func:`step_decay`).
      allow_growth: accept ``decay_rate > 1`` (a rate that grows).

    Returns:
      The schedule ``count -> alpha_count``.

    Example:
      >>> import jaxdescent as jd
      >>> schedule = jd.schedules.exponential_decay(0.1, 1000, 0.5)   # halves every 1000
      >>> [round(float(schedule(t)), 4) for t in (0, 1000, 2000)]
      [0.1, 0.05, 0.025]
    """
    check_nonnegative("init_value", init_value)
    transition_steps = check_int("transition_steps", transition_steps, minimum=1)
    check_positive("decay_rate", decay_rate)
    staircase = check_flag("staircase", staircase)
    _check_growth(
        "decay_rate", decay_rate, allow_growth, "(init_value, transition_steps, decay_rate)"
    )

    def schedule(count):
        periods = _float(count) / transition_steps
        return init_value * decay_rate ** (jnp.floor(periods) if staircase else periods)

    return schedule


def inverse_time_decay(init_value: float, decay_steps: int, decay_rate: float) -> Schedule:
    r"""Inverse-time (``1/t``) decay, the classical Robbins-Monro rate.

    .. math:: \alpha_t = \frac{\alpha_0}{1 + k \, t / T}

    With ``T = decay_steps`` and ``k = decay_rate``, in the order of Keras'
    ``InverseTimeDecay(initial_learning_rate, decay_steps, decay_rate)``.

    Args:
      init_value: ``alpha_0 >= 0``.
      decay_steps: ``T``, an integer ``>= 1``.
      decay_rate: ``k >= 0`` (a negative ``k`` would make the rate grow, then blow up).

    Returns:
      The schedule ``count -> alpha_count``.
    """
    check_nonnegative("init_value", init_value)
    decay_steps = check_int("decay_steps", decay_steps, minimum=1)
    check_nonnegative("decay_rate", decay_rate)
    return lambda count: init_value / (1.0 + decay_rate * _float(count) / decay_steps)


def cosine_decay(init_value: float, decay_steps: int, alpha: float = 0.0) -> Schedule:
    r"""Cosine annealing from ``init_value`` to ``alpha * init_value`` over ``decay_steps``.

    .. math:: \alpha_t = \alpha_0 \left[(1 - a) \tfrac12 \left(1 + \cos \frac{\pi \min(t, T)}{T}\right) + a\right]

    References:
      Loshchilov and Hutter, *SGDR: Stochastic gradient descent with warm restarts*, 2017.
    """
    check_nonnegative("init_value", init_value)
    decay_steps = check_int("decay_steps", decay_steps, minimum=1)
    check_unit_interval("alpha", alpha, closed_right=True)

    def schedule(count):
        t = jnp.minimum(_float(count), decay_steps)
        cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * t / decay_steps))
        return init_value * ((1.0 - alpha) * cosine + alpha)

    return schedule


_CYCLIC_MODES = ("triangular", "triangular2", "exp_range")


def cyclic(
    base_value: float,
    max_value: float,
    step_size: int,
    mode: str = "triangular",
    gamma: float = 1.0,
    *,
    step_size_down: int | None = None,
) -> Schedule:
    r"""Cyclical learning rate (Smith 2017), the same values as PyTorch's ``CyclicLR``.

    The rate climbs linearly from ``base_value`` to ``max_value`` in ``step_size`` updates
    and falls back in ``step_size_down`` (default: the same), then repeats. With cycle
    number ``c = floor(1 + t / (up + down))`` and position ``x`` in the cycle,

    .. math:: \alpha_t = b + (m - b) \, h(x) \, \sigma

    where ``h`` is the triangle wave in ``[0, 1]`` and the amplitude scale ``sigma`` is 1
    (``'triangular'``), ``2^{-(c-1)}`` (``'triangular2'``, halved every cycle) or
    ``gamma^t`` (``'exp_range'``).

    References:
      Smith, *Cyclical learning rates for training neural networks*, WACV 2017.
    """
    check_nonnegative("base_value", base_value)
    check_nonnegative("max_value", max_value)
    if max_value < base_value:
        raise ValueError(
            f"max_value must be >= base_value; got max_value={max_value!r}, "
            f"base_value={base_value!r}"
        )
    up = check_int("step_size", step_size, minimum=1)
    down = up if step_size_down is None else check_int("step_size_down", step_size_down, minimum=1)
    check_choice("mode", mode, _CYCLIC_MODES)
    check_unit_interval("gamma", gamma, closed_right=True)
    if gamma == 0.0 and mode == "exp_range":
        raise ValueError("gamma must be in (0, 1] for mode='exp_range'; got 0.0")
    total = up + down
    ratio = up / total

    def schedule(count):
        t = _float(count)
        cycle = jnp.floor(1.0 + t / total)
        x = 1.0 + t / total - cycle
        height = jnp.where(x <= ratio, x / ratio, (x - 1.0) / (ratio - 1.0))
        if mode == "triangular":
            scale = 1.0
        elif mode == "triangular2":
            scale = 1.0 / (2.0 ** (cycle - 1.0))
        else:
            scale = gamma**t
        return base_value + (max_value - base_value) * height * scale

    return schedule


def warmup(schedule: Schedule | float, steps: int, init_value: float = 0.0) -> Schedule:
    r"""Linear warm-up over ``steps`` updates, then ``schedule`` (started from its count 0).

    .. math::
       \alpha_t = \begin{cases}
         a_0 + (s(0) - a_0)\, t / W & t < W \\ s(t - W) & t \ge W \end{cases}

    References:
      Goyal et al., *Accurate, large minibatch SGD: training ImageNet in 1 hour*, 2017.
    """
    steps = check_int("steps", steps, minimum=0)
    check_nonnegative("init_value", init_value)
    after = schedule if callable(schedule) else constant(schedule)
    if steps == 0:
        return after

    def warm(count):
        t = _float(count)
        # s(0) is evaluated here rather than when the schedule is built, so it is computed
        # in the precision in force at call time (float64 under x64) and never on the host
        target = after(jnp.zeros_like(t))
        ramp = init_value + (target - init_value) * t / steps
        return jnp.where(t < steps, ramp, after(jnp.maximum(t - steps, 0.0)))

    return warm


def join(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Run ``schedules[i]`` from ``boundaries[i-1]`` to ``boundaries[i]``, each from count 0.

    ``len(boundaries)`` must be ``len(schedules) - 1`` and increasing (``optax.join_schedules``).
    """
    schedules = list(schedules)
    boundaries = [check_int("boundaries", b, minimum=0) for b in boundaries]
    if not schedules:
        raise ValueError("schedules must hold at least one schedule; got an empty sequence")
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"boundaries must have len(schedules) - 1 = {len(schedules) - 1} entries; "
            f"got {len(boundaries)}"
        )
    if any(b2 <= b1 for b1, b2 in itertools.pairwise(boundaries)):
        raise ValueError(f"boundaries must be strictly increasing; got {boundaries}")
    for i, s in enumerate(schedules):
        if not callable(s):
            raise TypeError(f"schedules[{i}] must be callable; got {s!r}")

    def joined(count):
        t = _float(count)
        value = schedules[0](t)
        for boundary, s in zip(boundaries, schedules[1:]):
            value = jnp.where(t < boundary, value, s(t - boundary))
        return value

    return joined
