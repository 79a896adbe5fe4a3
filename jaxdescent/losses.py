r"""Cost functions: negative log-likelihoods, and the named losses they reduce to.

:func:`nll` builds the training objective from a model and a likelihood:

.. math:: L(\theta) = -\frac1n \sum_{i=1}^n \log p(y_i \mid f_\theta(x_i))

The named losses take ``(predictions, targets)`` and, like PyTorch's, reduce with
``reduction='mean'`` (default), ``'sum'`` or ``'none'``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from jaxdescent._checks import check_callable, check_choice
from jaxdescent.likelihoods import Bernoulli, Categorical, Likelihood

__all__ = [
    "NLL",
    "binary_cross_entropy",
    "cross_entropy",
    "kl_divergence",
    "mae",
    "mse",
    "nll",
    "poisson_nll",
    "softmax_cross_entropy",
]

Loss = Callable[[Any, Any], jax.Array]


class NLL:
    r"""The mean negative log-likelihood of a batch ``(x, y)``: ``loss(params, batch)``.

    .. math:: L(\theta; x, y) = -\frac{1}{n}\sum_i \log p(y_i \mid \mathrm{apply}(\theta, x_i))

    Built by :func:`nll`. Besides being the loss, it tells update rules what the loss is made
    of: :attr:`apply` (the model) and :attr:`likelihood`, so a rule can ask for the model's
    outputs on the current batch and the likelihood's Fisher information in output space
    (Gauss-Newton, Fisher scoring, Levenberg-Marquardt), and :mod:`jaxdescent.inference`
    can compute standard errors. Equality and hashing are by identity, like a function's.
    """

    __slots__ = ("__weakref__", "apply", "likelihood")

    def __init__(self, apply: Callable[[Any, jax.Array], jax.Array], likelihood: Likelihood):
        self.apply = apply
        self.likelihood = likelihood

    def __call__(self, params: Any, batch: Any) -> jax.Array:
        x, y = batch
        log_p = self.likelihood.log_prob(self.apply(params, x), y)
        n = log_p.shape[0] if log_p.ndim else 1
        return -jnp.sum(log_p) / n

    def per_example(self, params: Any, batch: Any) -> jax.Array:
        """The negative log-likelihood of each example, shape ``(n,)``."""
        x, y = batch
        log_p = self.likelihood.log_prob(self.apply(params, x), y)
        return -log_p.reshape(log_p.shape[0], -1).sum(axis=1) if log_p.ndim else -log_p[None]

    def rule_extras(self, batch: Any) -> dict[str, Any]:
        """The extra optax arguments curvature rules use, for the batch ``(x, y)``.

        ``model_fn`` (params -> model outputs on this batch), ``likelihood`` and ``targets``:
        :func:`jaxdescent.fit` passes them to ``update`` next to ``value_fn``; a hand-written
        loop can pass ``**loss.rule_extras(batch)`` the same way.
        """
        x, y = batch
        apply = self.apply
        return {
            "model_fn": lambda params: apply(params, x),
            "likelihood": self.likelihood,
            "targets": y,
        }

    def __repr__(self) -> str:
        name = getattr(self.apply, "__name__", type(self.apply).__name__)
        return f"NLL(apply={name}, likelihood={self.likelihood!r})"


def nll(apply: Callable[[Any, jax.Array], jax.Array], likelihood: Likelihood) -> NLL:
    r"""The mean negative log-likelihood of a batch ``(x, y)`` under ``likelihood``.

    Returns an :class:`NLL`, called as ``loss(params, batch) -> scalar`` with

    .. math:: L(\theta; x, y) = -\frac{1}{n}\sum_i \log p(y_i \mid \mathrm{apply}(\theta, x_i)),

    where ``n`` is the batch's leading size and each example's log-probability is summed over
    its target elements. The object also exposes ``apply`` and ``likelihood``, which
    :func:`jaxdescent.optim.gauss_newton`, :func:`jaxdescent.optim.levenberg_marquardt` and
    :mod:`jaxdescent.inference` use.

    Example:
      >>> import jax, jax.numpy as jnp, jaxdescent as jd
      >>> model = jd.models.linear(1, 1)
      >>> loss = jd.losses.nll(model.apply, jd.likelihoods.Gaussian())
      >>> params = {"w": jnp.ones((1, 1)), "b": jnp.zeros(1)}
      >>> x, y = jnp.array([[1.0], [2.0]]), jnp.array([1.0, 2.0])
      >>> round(float(loss(params, (x, y))), 4)    # 0.5 log(2 pi): a perfect fit
      0.9189
    """
    check_callable("apply", apply)
    if not isinstance(likelihood, Likelihood):
        raise TypeError(
            "likelihood must be a jaxdescent.likelihoods.Likelihood such as Gaussian(); "
            f"got {likelihood!r}"
        )
    return NLL(apply, likelihood)


_REDUCTIONS = ("mean", "sum", "none")


def _reduce(values: jax.Array, reduction: str) -> jax.Array:
    check_choice("reduction", reduction, _REDUCTIONS)
    if reduction == "mean":
        return jnp.mean(values)
    if reduction == "sum":
        return jnp.sum(values)
    return values


def _check_same_shape(names: tuple[str, str], a, b) -> None:
    """Elementwise losses refuse to broadcast: ``(n, 1)`` against ``(n,)`` would give ``(n, n)``."""
    sa, sb = jnp.shape(a), jnp.shape(b)
    if sa != sb and sa != () and sb != ():
        raise ValueError(
            f"{names[1]} must have the shape of {names[0]}, {sa} (or be a scalar); got {sb}"
        )


def mse(predictions, targets, reduction: str = "mean") -> jax.Array:
    r"""Mean squared error ``(f - y)^2``: the Gaussian NLL up to scale and a constant.

    Its minimiser over a constant prediction is the sample mean.
    """
    _check_same_shape(("predictions", "targets"), predictions, targets)
    return _reduce(jnp.square(jnp.asarray(predictions) - targets), reduction)


def mae(predictions, targets, reduction: str = "mean") -> jax.Array:
    r"""Mean absolute error ``|f - y|``: the Laplace NLL up to scale and a constant.

    Its minimiser over a constant prediction is the sample median, which outliers barely move.
    """
    _check_same_shape(("predictions", "targets"), predictions, targets)
    return _reduce(jnp.abs(jnp.asarray(predictions) - targets), reduction)


def binary_cross_entropy(logits, labels, reduction: str = "mean") -> jax.Array:
    r"""Cross-entropy of labels in ``{0, 1}`` against ``sigmoid(logits)``, from the logits.

    .. math:: \ell(z, y) = \log(1 + e^{z}) - y z

    Never forms ``log(sigmoid(z))``, so it neither underflows nor saturates: the gradient
    wrt ``z`` is ``sigmoid(z) - y``, near 1 in size for a confidently wrong answer.
    """
    logits = jnp.asarray(logits)
    if not isinstance(labels, jax.core.Tracer):  # concrete labels: check their range
        Bernoulli().check_targets(labels)
    return _reduce(-Bernoulli().log_prob(logits, jnp.asarray(labels, logits.dtype)), reduction)


def softmax_cross_entropy(logits, labels, reduction: str = "mean") -> jax.Array:
    r"""Cross-entropy ``-log softmax(z)_y`` for integer labels or one-hot/probability targets.

    Concrete integer labels must lie in ``[0, classes)`` (a label of -1 would otherwise pick
    the last class silently).
    """
    logits = jnp.asarray(logits)
    if not isinstance(labels, jax.core.Tracer):
        Categorical().check_targets(labels, num_classes=logits.shape[-1] if logits.ndim else None)
    return _reduce(-Categorical().log_prob(logits, labels), reduction)


def poisson_nll(log_rate, counts, reduction: str = "mean", *, full: bool = False) -> jax.Array:
    r"""Poisson NLL from the log-rate ``eta``: ``e^eta - y eta`` (+ ``log y!`` if ``full``).

    Like PyTorch's ``PoissonNLLLoss(log_input=True)``, the constant ``log y!`` is left out
    unless ``full=True``; it does not change the gradient.
    """
    _check_same_shape(("log_rate", "counts"), log_rate, counts)
    log_rate = jnp.asarray(log_rate)
    counts = jnp.asarray(counts, log_rate.dtype)
    values = jnp.exp(log_rate) - counts * log_rate
    if full:
        values = values + gammaln(counts + 1.0)
    return _reduce(values, reduction)


def _xlogy_from_logs(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """``p log q`` with ``0 log q = 0`` even where ``log q = -inf``."""
    p = jnp.exp(log_p)
    safe = jnp.where(p > 0, log_q, 0.0)
    return jnp.where(p > 0, p * safe, 0.0)


def cross_entropy(log_p, log_q, reduction: str = "mean") -> jax.Array:
    r"""Cross-entropy ``H(p, q) = -sum_k p_k log q_k`` between distributions on the last axis.

    Both are given as log-probabilities (e.g. ``jax.nn.log_softmax`` outputs); entries with
    ``p_k = 0`` contribute nothing.
    """
    return _reduce(
        -jnp.sum(_xlogy_from_logs(jnp.asarray(log_p), jnp.asarray(log_q)), -1), reduction
    )


def kl_divergence(log_p, log_q, reduction: str = "mean") -> jax.Array:
    r"""Kullback-Leibler divergence ``KL(p || q) = sum_k p_k (log p_k - log q_k) >= 0``.

    Given log-probabilities on the last axis; ``H(p, q) = H(p) + KL(p || q)``.
    """
    log_p = jnp.asarray(log_p)
    log_q = jnp.asarray(log_q)
    values = jnp.sum(_xlogy_from_logs(log_p, log_p) - _xlogy_from_logs(log_p, log_q), axis=-1)
    return _reduce(values, reduction)
