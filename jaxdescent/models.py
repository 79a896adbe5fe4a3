r"""Model families as pairs of pure functions ``init(key) -> params``, ``apply(params, x)``.

Parameters are plain pytrees (dicts and lists of arrays), so any optax transformation and
any JAX transformation works on them. Inputs are rows: ``apply`` takes one example of shape
``(in_dim,)`` or a batch ``(n, in_dim)``; a layer computes ``x @ W + b`` (the same map as
``W^T x + b`` for a column vector).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxdescent._checks import check_callable, check_int, check_real

__all__ = ["Model", "init_weights", "linear", "logistic_regression", "mlp"]

Params = Any


class Model(NamedTuple):
    """A model family: ``init(key) -> params`` draws a member, ``apply(params, x)`` runs it."""

    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, jax.Array], jax.Array]


_SCHEMES = ("he", "glorot", "small", "zeros")


def init_weights(
    key: jax.Array,
    shape: tuple[int, int],
    scheme: str | Callable = "he",
    dtype: Any = jnp.float32,
    scale: float = 0.01,
) -> jax.Array:
    r"""Draw a weight matrix of ``shape = (fan_in, fan_out)``.

    - ``'he'``: normal with variance ``2 / fan_in`` (He et al. 2015; for ReLU layers);
    - ``'glorot'``: normal with variance ``2 / (fan_in + fan_out)`` (Glorot and Bengio 2010);
    - ``'small'``: normal with standard deviation ``scale`` (0.01);
    - ``'zeros'``: all zero (fine for linear and logistic regression, not for hidden layers);
    - a callable ``(key, shape, dtype) -> array``, e.g. any ``jax.nn.initializers`` one.
    """
    if callable(scheme):
        return scheme(key, shape, dtype)
    fan_in, fan_out = shape
    if scheme == "zeros":
        return jnp.zeros(shape, dtype)
    if scheme == "he":
        std = (2.0 / fan_in) ** 0.5
    elif scheme == "glorot":
        std = (2.0 / (fan_in + fan_out)) ** 0.5
    elif scheme == "small":
        std = scale
    else:
        raise ValueError(
            f"w_init must be one of {', '.join(map(repr, _SCHEMES))} or a callable; got {scheme!r}"
        )
    return std * jax.random.normal(key, shape, dtype)


def _check_scheme(scheme) -> None:
    if not callable(scheme) and scheme not in _SCHEMES:
        raise ValueError(
            f"w_init must be one of {', '.join(map(repr, _SCHEMES))} or a callable; got {scheme!r}"
        )


def _dense(layer, x: jax.Array) -> jax.Array:
    """``x @ W + b`` for one example ``(in,)`` or a batch ``(n, in)``.

    The bias is broadcast explicitly, so the layer also works under
    ``jax_numpy_rank_promotion='raise'``.
    """
    out = x @ layer["w"]
    return out + jnp.broadcast_to(layer["b"], out.shape)


def _dense_init(key, fan_in, fan_out, w_init, b_init, dtype):
    return {
        "w": init_weights(key, (fan_in, fan_out), w_init, dtype),
        "b": jnp.full((fan_out,), b_init, dtype),
    }


def linear(
    in_dim: int,
    out_dim: int = 1,
    *,
    w_init: str | Callable = "small",
    b_init: float = 0.0,
    dtype: Any = jnp.float32,
) -> Model:
    r"""Linear (affine) regression ``f(x) = x W + b``.

    With a Gaussian likelihood this is least squares; with a Bernoulli likelihood on its
    output (a logit) it is logistic regression.

    Example:
      >>> import jax, jaxdescent as jd
      >>> model = jd.models.linear(3, 2)
      >>> params = model.init(jax.random.key(0))
      >>> model.apply(params, jax.numpy.ones((5, 3))).shape
      (5, 2)
    """
    in_dim = check_int("in_dim", in_dim, minimum=1)
    out_dim = check_int("out_dim", out_dim, minimum=1)
    _check_scheme(w_init)
    check_real("b_init", b_init)

    def init(key):
        return _dense_init(key, in_dim, out_dim, w_init, b_init, dtype)

    def apply(params, x):
        return _dense(params, jnp.asarray(x))

    return Model(init, apply)


def logistic_regression(in_dim: int, num_classes: int = 2, **kwargs) -> Model:
    """Logistic regression: a linear model whose outputs are logits.

    Two classes give one logit (use :class:`~jaxdescent.likelihoods.Bernoulli`); more give one
    logit per class (use :class:`~jaxdescent.likelihoods.Categorical`).
    """
    num_classes = check_int("num_classes", num_classes, minimum=2)
    return linear(in_dim, 1 if num_classes == 2 else num_classes, **kwargs)


def mlp(
    sizes: Sequence[int],
    activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
    *,
    w_init: str | Callable = "he",
    b_init: float = 0.0,
    final_activation: Callable[[jax.Array], jax.Array] | None = None,
    dtype: Any = jnp.float32,
) -> Model:
    r"""Multi-layer perceptron: hidden layers ``h = activation(h W + b)``, a linear output.

    ``sizes = [in, hidden..., out]``. Weights start small and random (He scaling by default,
    suited to ReLU); biases start at ``b_init`` (0, or a small positive value such as 0.1 so
    that ReLU units start active). The output layer has no activation unless
    ``final_activation`` is given: a likelihood turns it into a distribution.

    Example:
      >>> import jax, jaxdescent as jd
      >>> model = jd.models.mlp([2, 16, 16, 1])
      >>> params = model.init(jax.random.key(0))
      >>> [layer["w"].shape for layer in params]
      [(2, 16), (16, 16), (16, 1)]
    """
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes must list at least an input and an output size; got {sizes}")
    for i, s in enumerate(sizes):
        check_int(f"sizes[{i}]", s, minimum=1)
    check_callable("activation", activation)
    _check_scheme(w_init)
    check_real("b_init", b_init)

    def init(key):
        keys = jax.random.split(key, len(sizes) - 1)
        return [
            _dense_init(k, fan_in, fan_out, w_init, b_init, dtype)
            for k, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:])
        ]

    def apply(params, x):
        h = jnp.asarray(x)
        for layer in params[:-1]:
            h = activation(_dense(layer, h))
        out = _dense(params[-1], h)
        return out if final_activation is None else final_activation(out)

    return Model(init, apply)
