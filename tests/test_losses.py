"""Losses: minimisers (mean, median), saturation, NumPy/SciPy references, reductions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

import jaxdescent as jd
from jaxdescent import losses

RTOL = 1e-10

rng = np.random.default_rng(1)

# 21 points: a tight cluster plus outliers that drag the mean far from the median.
DATA = np.concatenate([rng.normal(size=17), [40.0, 55.0, 70.0, -3.0]])


@pytest.mark.parametrize(
    ("loss", "statistic", "schedule"),
    [
        (losses.mse, np.mean, jd.schedules.constant(0.4)),
        # the MAE gradient is a sign, so the step must shrink to settle on the median
        (losses.mae, np.median, jd.schedules.cosine_decay(2.0, 1_500)),
    ],
    ids=["mse-mean", "mae-median"],
)
def test_constant_prediction_minimiser(x64, loss, statistic, schedule):
    y = jnp.asarray(DATA)
    res = jd.fit(
        lambda c: loss(jnp.broadcast_to(c, y.shape), y),
        jnp.array(0.0),
        jd.optim.sgd(schedule),
        steps=1_500,
    )
    assert abs(np.mean(DATA) - np.median(DATA)) > 5.0
    np.testing.assert_allclose(res.params, statistic(DATA), atol=1e-3)


def test_saturation_cross_entropy_vs_mse_on_probability():
    """Goodfellow et al. 6.2: log-loss undoes the sigmoid's exp; squared error saturates."""
    z, label = jnp.array(-20.0), jnp.array(1.0)
    g_ce = jax.grad(losses.binary_cross_entropy)(z, label)
    g_mse = jax.grad(lambda z: losses.mse(jax.nn.sigmoid(z), label))(z)
    np.testing.assert_allclose(g_ce, -1.0, rtol=1e-6)  # sigmoid(z) - y
    assert abs(g_mse) < 1e-6
    # the same through the likelihood route
    g_nll = jax.grad(lambda z: -jd.likelihoods.Bernoulli().log_prob(z, label))(z)
    np.testing.assert_allclose(g_nll, g_ce, rtol=1e-6)


def test_mse_mae_values():
    f, y = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    np.testing.assert_allclose(losses.mse(f, y), np.mean((f - y) ** 2), rtol=1e-6)
    np.testing.assert_allclose(losses.mae(f, y), np.mean(np.abs(f - y)), rtol=1e-6)


def test_binary_cross_entropy_matches_reference(x64):
    z = np.array([-100.0, -20.0, -2.0, -0.1, 0.0, 0.7, 3.0, 20.0, 100.0])
    for y in (np.zeros_like(z), np.ones_like(z), np.linspace(0, 1, z.size)):
        want = -(y * special.log_expit(z) + (1 - y) * special.log_expit(-z))
        got = losses.binary_cross_entropy(z, y, reduction="none")
        np.testing.assert_allclose(got, want, rtol=RTOL)
        # the textbook formula where it is representable
        p = special.expit(z)
        ok = np.abs(z) < 5
        with np.errstate(divide="ignore", invalid="ignore"):
            textbook = -(special.xlogy(y, p) + special.xlogy(1 - y, 1 - p))
        np.testing.assert_allclose(got[ok], textbook[ok], rtol=1e-8)
    # integer labels are accepted
    np.testing.assert_allclose(
        losses.binary_cross_entropy(z, np.ones(z.size, np.int32)),
        np.mean(-special.log_expit(z)),
        rtol=RTOL,
    )


def test_softmax_cross_entropy_matches_reference(x64):
    logits = rng.normal(size=(5, 4)) * 3
    logits[0] = [100.0, -100.0, 0.0, 1.0]
    labels = np.array([1, 0, 3, 2, 1])
    want = -special.log_softmax(logits, axis=-1)[np.arange(5), labels]
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, labels, reduction="none"), want, rtol=RTOL
    )
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, np.eye(4)[labels], reduction="none"), want, rtol=RTOL
    )
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, labels), want.mean(), rtol=RTOL
    )


def test_poisson_nll_matches_reference(x64):
    log_rate = np.array([-30.0, -2.0, 0.0, 0.5, 3.0, 10.0])
    counts = np.array([0.0, 1.0, 2.0, 0.0, 25.0, 22000.0])
    np.testing.assert_allclose(
        losses.poisson_nll(log_rate, counts, reduction="none"),
        np.exp(log_rate) - counts * log_rate,
        rtol=RTOL,
    )
    np.testing.assert_allclose(
        losses.poisson_nll(log_rate, counts, reduction="sum", full=True),
        -np.sum(stats.poisson.logpmf(counts, np.exp(log_rate))),
        rtol=RTOL,
    )


def _distributions(shape, zeros=True):
    p = rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])
    q = rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])
    if zeros:
        p[0, 1] = 0.0  # 0 log 0 = 0
        p[0] /= p[0].sum()
    return p, q


def test_kl_and_cross_entropy_match_scipy(x64):
    p, q = _distributions((6, 5))
    with np.errstate(divide="ignore"):
        log_p, log_q = np.log(p), np.log(q)
    kl = losses.kl_divergence(log_p, log_q, reduction="none")
    ce = losses.cross_entropy(log_p, log_q, reduction="none")
    np.testing.assert_allclose(kl, special.rel_entr(p, q).sum(-1), rtol=RTOL)
    np.testing.assert_allclose(kl, stats.entropy(p, q, axis=-1), rtol=RTOL)
    np.testing.assert_allclose(ce, -np.sum(special.xlogy(p, q), -1), rtol=RTOL)
    # H(p, q) = H(p) + KL(p || q), and KL >= 0 with KL(p || p) = 0
    np.testing.assert_allclose(ce, stats.entropy(p, axis=-1) + kl, rtol=RTOL)
    np.testing.assert_allclose(
        losses.cross_entropy(log_p, log_p, reduction="none"), stats.entropy(p, axis=-1), rtol=RTOL
    )
    assert np.all(np.asarray(kl) >= 0)
    np.testing.assert_allclose(losses.kl_divergence(log_p, log_p, reduction="none"), 0, atol=1e-15)
    # finite gradients despite log p = -inf where p = 0
    g = jax.grad(lambda a, b: losses.kl_divergence(a, b), argnums=(0, 1))(log_p, log_q)
    assert all(np.all(np.isfinite(x)) for x in g)
    # q = 0 where p > 0: infinite divergence, as in SciPy
    log_q0 = log_q.copy()
    log_q0[1, 2] = -np.inf
    assert np.isinf(losses.kl_divergence(log_p, log_q0, reduction="none")[1])


def test_kl_nonnegative_on_random_logits():
    """Gibbs' inequality on many random pairs, from log_softmax outputs (float32)."""
    a, b = rng.normal(size=(2, 500, 7)).astype(np.float32) * 4
    kl = losses.kl_divergence(
        special.log_softmax(a, axis=-1), special.log_softmax(b, axis=-1), reduction="none"
    )
    assert kl.shape == (500,)
    assert np.all(np.asarray(kl) >= -1e-6)


@pytest.mark.parametrize(
    ("fn", "args"),
    [
        (losses.mse, (np.arange(6.0).reshape(2, 3), np.ones((2, 3)))),
        (losses.mae, (np.arange(6.0).reshape(2, 3), np.ones((2, 3)))),
        (losses.binary_cross_entropy, (np.linspace(-3, 3, 6), np.ones(6))),
        (losses.softmax_cross_entropy, (np.arange(12.0).reshape(3, 4), np.array([0, 1, 3]))),
        (losses.poisson_nll, (np.linspace(-1, 1, 5), np.arange(5.0))),
        (
            losses.cross_entropy,
            (np.log(np.full((3, 4), 0.25)), np.log(np.eye(4)[:3] * 0.5 + 0.125)),
        ),
        (
            losses.kl_divergence,
            (np.log(np.full((3, 4), 0.25)), np.log(np.eye(4)[:3] * 0.5 + 0.125)),
        ),
    ],
    ids=["mse", "mae", "bce", "softmax_ce", "poisson", "cross_entropy", "kl"],
)
def test_reductions(fn, args):
    values = np.asarray(fn(*args, reduction="none"))
    np.testing.assert_allclose(fn(*args, reduction="sum"), values.sum(), rtol=1e-6)
    np.testing.assert_allclose(fn(*args, reduction="mean"), values.mean(), rtol=1e-6)
    np.testing.assert_allclose(fn(*args), values.mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        fn(*args, reduction="average")


def test_nll_mean_over_examples_and_bad_arguments():
    model = jd.models.linear(2, 3)
    params = model.init(jax.random.key(0))
    x = jnp.ones((4, 2))
    y = jnp.zeros((4, 3))
    loss = jd.losses.nll(model.apply, jd.likelihoods.Gaussian())
    out = model.apply(params, x)
    # per example: summed over the 3 target elements; then averaged over the 4 examples
    want = -np.sum(np.asarray(jd.likelihoods.Gaussian().log_prob(out, y))) / 4
    np.testing.assert_allclose(loss(params, (x, y)), want, rtol=1e-6)
    assert loss.likelihood == jd.likelihoods.Gaussian()
    with pytest.raises(TypeError, match="likelihood"):
        jd.losses.nll(model.apply, "gaussian")
    with pytest.raises(TypeError, match="apply"):
        jd.losses.nll(None, jd.likelihoods.Gaussian())
