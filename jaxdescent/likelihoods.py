r"""Conditional distributions p(y | model output), all evaluated in log space.

A likelihood turns a model's raw output into a distribution over the target. Each one has

- ``log_prob(output, y)``: the log-density (or log-mass) of every target element, shape of
  ``y`` (for :class:`Categorical`, of the labels); never ``log`` of a probability that has
  already under- or overflowed: logits go through ``log_sigmoid`` / ``log_softmax``, scales
  are handled through their logarithm;
- ``predict(output)``: a point prediction (Gaussian: the mean; Laplace: the median;
  Bernoulli and Categorical: the most likely class; Poisson: the mean rate);
- ``output_size(target_size)``: how many model outputs a target of that size needs.

The negative mean log-likelihood is the cost function (:func:`jaxdescent.losses.nll`):
a Gaussian with fixed scale gives mean squared error (the model learns the conditional mean),
a Laplace gives mean absolute error (the conditional median), Bernoulli and Categorical give
cross-entropy.

Shapes: for targets of shape ``(n,)`` a model may emit ``(n,)`` or ``(n, 1)``; with
``learn_scale=True`` it emits ``(n, 2)`` (location, log-scale), or ``(n, 2d)`` for
targets ``(n, d)`` (first half locations, second half log-scales).

References:
  Goodfellow, Bengio and Courville, *Deep Learning*, section 6.2, 2016.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from jaxdescent._checks import check_bool, check_positive

__all__ = ["Bernoulli", "Categorical", "Gaussian", "Laplace", "Likelihood", "Poisson"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _align(output: jax.Array, y: jax.Array, width: int) -> tuple[jax.Array, ...]:
    """Split ``output`` into ``width`` parameter arrays, each shaped like ``y``."""
    output = jnp.asarray(output)
    y = jnp.asarray(y)
    if width == 1:
        if output.shape == y.shape:
            return (output,)
        if output.shape == (*y.shape, 1):
            return (output[..., 0],)
    else:
        if output.shape == (*y.shape, width):
            return tuple(output[..., i] for i in range(width))
        if y.ndim >= 1 and output.shape == (*y.shape[:-1], width * y.shape[-1]):
            return tuple(jnp.split(output, width, axis=-1))
    expected = f"{y.shape}" if width == 1 else f"{(*y.shape, width)}"
    raise ValueError(
        f"model output has shape {output.shape}, which does not fit targets of shape "
        f"{y.shape}: expected {expected}" + (f" or {(*y.shape, 1)}" if width == 1 else "")
    )


class Likelihood:
    """Base class: a conditional distribution of the target given the model output."""

    # whether fisher_vp is elementwise (every likelihood here but Categorical)
    diagonal_fisher = True

    def log_prob(self, output: jax.Array, y: jax.Array) -> jax.Array:
        """``log p(y | output)`` of every target element (shaped like ``y``; for
        :class:`Categorical`, like the labels), computed in log space."""
        raise NotImplementedError

    def predict(self, output: jax.Array) -> jax.Array:
        """A point prediction from the model output: the mean (Gaussian, Poisson), the median
        (Laplace) or the most likely class (Bernoulli, Categorical)."""
        raise NotImplementedError

    def output_size(self, target_size: int = 1) -> int:
        """How many model outputs a target of ``target_size`` elements needs."""
        return target_size

    def check_targets(self, y) -> None:
        """Raise ``ValueError`` if concrete targets lie outside the support."""

    def log_prob_kernel(self, output: jax.Array, y: jax.Array) -> jax.Array:
        """``log_prob`` less the terms that do not depend on ``output`` (``log(2 pi)/2``, a
        fixed scale's log, ``log y!``): differences of it equal differences of ``log_prob``
        but keep full precision when the loss is close to such a constant."""
        return self.log_prob(output, y)

    def fisher_vp(self, output: jax.Array, v: jax.Array, y: jax.Array) -> jax.Array:
        r"""The Fisher information in output space times ``v``, example by example.

        ``F(output) = E_y[\nabla_o \log p \, \nabla_o \log p^\top]``, the curvature that
        Gauss-Newton and Fisher scoring use; ``v`` and the result have ``output``'s shape
        (``y`` only tells the output's layout).
        """
        raise NotImplementedError(f"{type(self).__name__} has no Fisher information")


def _standardised(residual: jax.Array, log_scale: jax.Array) -> jax.Array:
    """``residual * exp(-log_scale)`` as ``sign(r) exp(log|r| - log_scale)``: finite (and with
    finite gradients) when ``exp(-log_scale)`` alone would overflow, e.g. float32 with
    ``log_scale <= -89`` where ``0 * exp(89)`` gave NaN for an exactly fitted point."""
    zero = residual == 0
    safe = jnp.where(zero, 1.0, residual)
    scaled = jnp.sign(safe) * jnp.exp(jnp.log(jnp.abs(safe)) - jnp.where(zero, 0.0, log_scale))
    return jnp.where(zero, 0.0, scaled)


def _log_factorial(y: jax.Array) -> jax.Array:
    """``log y!`` exactly 0 at ``y = 0`` and ``1`` (float32 ``gammaln(1.0)`` is 4.8e-7)."""
    return jnp.where(y <= 1, 0.0, gammaln(jnp.maximum(y, 1.0) + 1.0))


@dataclasses.dataclass(frozen=True)
class _LocationScale(Likelihood):
    scale: float = 1.0
    learn_scale: bool = False

    def __post_init__(self):
        check_bool("learn_scale", self.learn_scale)
        if not self.learn_scale:
            check_positive("scale", self.scale)

    def _parts(self, output, y):
        """``(z, log_scale)``: the standardised residual ``(y - loc) / scale`` and the log
        scale (a Python float for a fixed scale, which then divides directly: the stable
        ``exp`` form is only needed for a learned log scale)."""
        if self.learn_scale:
            loc, log_scale = _align(output, y, 2)
            return _standardised(y - loc, log_scale), log_scale
        (loc,) = _align(output, y, 1)
        residual = y - loc
        z = residual if self.scale == 1.0 else residual / jnp.asarray(self.scale, residual.dtype)
        return z, math.log(self.scale)

    def predict(self, output):
        return output[..., : output.shape[-1] // 2] if self.learn_scale else output

    # Fisher information of (location, log-scale) per unit: (1/scale^2, _LOG_SCALE_INFO)
    _LOG_SCALE_INFO = 2.0

    def fisher_vp(self, output, v, y):
        if not self.learn_scale:
            return v / jnp.asarray(self.scale, v.dtype) ** 2
        _, log_scale = _align(output, y, 2)
        v_loc, v_scale = _align(v, y, 2)
        parts = (v_loc * jnp.exp(-2.0 * log_scale), self._LOG_SCALE_INFO * v_scale)
        if output.shape == (*jnp.shape(y), 2):
            return jnp.stack(parts, axis=-1)
        return jnp.concatenate(parts, axis=-1)

    def output_size(self, target_size: int = 1) -> int:
        return 2 * target_size if self.learn_scale else target_size


@dataclasses.dataclass(frozen=True)
class Gaussian(_LocationScale):
    r"""Normal ``N(y; mu, sigma^2)`` with mean ``mu`` = the model output.

    .. math:: \log p(y) = -\frac{(y - \mu)^2}{2\sigma^2} - \log\sigma - \tfrac12 \log 2\pi

    With a fixed ``scale`` the NLL is ``(y - mu)^2 / (2 sigma^2)`` plus a constant: mean squared
    error. With ``learn_scale=True`` the model also emits ``log sigma`` (heteroscedastic
    regression), and ``(y - mu) exp(-log sigma)`` is computed without dividing by a tiny sigma.
    """

    def log_prob(self, output, y):
        z, log_scale = self._parts(output, y)
        return -0.5 * z * z - log_scale - _HALF_LOG_2PI

    def log_prob_kernel(self, output, y):
        z, log_scale = self._parts(output, y)
        return -0.5 * z * z - (log_scale if self.learn_scale else 0.0)


@dataclasses.dataclass(frozen=True)
class Laplace(_LocationScale):
    r"""Laplace ``p(y) = exp(-|y - mu| / b) / (2 b)`` with location ``mu`` = the model output.

    .. math:: \log p(y) = -\frac{|y - \mu|}{b} - \log 2b

    With a fixed scale the NLL is mean absolute error, whose minimiser is the median.
    """

    _LOG_SCALE_INFO = 1.0

    def log_prob(self, output, y):
        z, log_scale = self._parts(output, y)
        return -jnp.abs(z) - log_scale - math.log(2.0)

    def log_prob_kernel(self, output, y):
        z, log_scale = self._parts(output, y)
        return -jnp.abs(z) - log_scale if self.learn_scale else -jnp.abs(z)


@dataclasses.dataclass(frozen=True)
class Bernoulli(Likelihood):
    r"""Bernoulli on a logit ``z``: ``p(y=1) = sigmoid(z)``, labels in ``{0, 1}``.

    .. math:: \log p(y) = y z - \log(1 + e^{z}) = y \log\sigma(z) + (1-y)\log\sigma(-z)

    computed as ``-(y softplus(-z) + (1 - y) softplus(z))``, so a confidently wrong logit
    (``z = -100``, ``y = 1``) gives a finite log-probability ``-100`` and a gradient near 1,
    instead of saturating, and a confidently right one (``z = 100``, ``y = 1``) gives
    ``-3.7e-44`` to full relative precision (``y z - softplus(z)`` would cancel to 0).
    Soft labels in ``[0, 1]`` are accepted.
    """

    def log_prob(self, output, y):
        (z,) = _align(output, y, 1)
        return -(y * jax.nn.softplus(-z) + (1 - y) * jax.nn.softplus(z))

    def predict(self, output):
        return (output > 0).astype(jnp.int32)

    def probs(self, output):
        """``P(y = 1) = sigmoid(z)`` for each logit."""
        return jax.nn.sigmoid(output)

    def fisher_vp(self, output, v, y):
        del y
        p = jax.nn.sigmoid(output)
        return p * (1.0 - p) * v

    def check_targets(self, y) -> None:
        import numpy as np

        y = np.asarray(y)
        if y.size and (np.any(y < 0) or np.any(y > 1)):
            bad = y[(y < 0) | (y > 1)].ravel()[0].item()
            raise ValueError(
                f"Bernoulli targets must be labels in {{0, 1}} (or probabilities in [0, 1]); "
                f"got a value {bad!r}"
            )


@dataclasses.dataclass(frozen=True)
class Categorical(Likelihood):
    r"""Categorical on logits ``z`` (last axis = classes): ``p(y=k) = softmax(z)_k``.

    .. math:: \log p(y = k) = z_k - \log\sum_j e^{z_j}

    Targets are integer labels (shape ``output.shape[:-1]``) or one-hot / probability vectors
    (shape ``output.shape``), for which the log-probability is ``sum_k y_k log softmax(z)_k``.
    """

    def log_prob(self, output, y):
        log_p = jax.nn.log_softmax(output, axis=-1)
        y = jnp.asarray(y)
        if jnp.issubdtype(y.dtype, jnp.integer):
            if y.shape != output.shape[:-1]:
                raise ValueError(
                    f"integer labels must have shape {output.shape[:-1]} for logits of shape "
                    f"{output.shape}; got {y.shape}"
                )
            return jnp.take_along_axis(log_p, y[..., None], axis=-1)[..., 0]
        if y.shape != output.shape:
            if y.shape == output.shape[:-1]:  # class indices given as floats
                raise TypeError(
                    f"Categorical class labels must be integers; got {y.dtype} labels of shape "
                    f"{y.shape}. Cast them (labels.astype(jnp.int32)), or pass one-hot / "
                    f"probability targets of the logits' shape {output.shape}"
                )
            raise ValueError(
                f"targets must be integer labels of shape {output.shape[:-1]} or one-hot / "
                f"probability vectors of the logits' shape {output.shape}; got {y.dtype} of "
                f"shape {y.shape}"
            )
        return jnp.sum(jnp.where(y == 0, 0.0, y * log_p), axis=-1)

    def predict(self, output):
        return jnp.argmax(output, axis=-1)

    def probs(self, output):
        """The class probabilities ``softmax(z)`` along the last axis."""
        return jax.nn.softmax(output, axis=-1)

    diagonal_fisher = False

    def fisher_vp(self, output, v, y):
        del y
        p = jax.nn.softmax(output, axis=-1)
        return p * v - p * jnp.sum(p * v, axis=-1, keepdims=True)

    def output_size(self, target_size: int = 1) -> int:
        return target_size

    def check_targets(self, y, num_classes: int | None = None) -> None:
        import numpy as np

        y = np.asarray(y)
        if np.issubdtype(y.dtype, np.integer) and y.size:
            if y.min() < 0 or (num_classes is not None and y.max() >= num_classes):
                bad = (y.min() if y.min() < 0 else y.max()).item()
                expected = f"in [0, {num_classes})" if num_classes is not None else ">= 0"
                raise ValueError(
                    f"Categorical labels must be integers {expected}, one per class of the "
                    f"model output; got a label {bad!r}"
                )


@dataclasses.dataclass(frozen=True)
class Poisson(Likelihood):
    r"""Poisson on a log-rate ``eta``: ``p(y) = lambda^y e^{-lambda} / y!`` with ``lambda = e^eta``.

    .. math:: \log p(y) = y \eta - e^{\eta} - \log \Gamma(y + 1)
    """

    def log_prob(self, output, y):
        (eta,) = _align(output, y, 1)
        return y * eta - jnp.exp(eta) - _log_factorial(y)

    def log_prob_kernel(self, output, y):
        (eta,) = _align(output, y, 1)
        return y * eta - jnp.exp(eta)

    def predict(self, output):
        return jnp.exp(output)

    def fisher_vp(self, output, v, y):
        del y
        return jnp.exp(output) * v

    def check_targets(self, y) -> None:
        import numpy as np

        y = np.asarray(y)
        if y.size and np.any(y < 0):
            raise ValueError(
                f"Poisson targets must be counts >= 0; got {y[y < 0].ravel()[0].item()!r}"
            )
