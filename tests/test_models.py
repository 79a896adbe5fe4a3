"""Models: shapes, initialisation statistics, determinism, argument checks."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdescent import models

rng = np.random.default_rng(0)
X = rng.normal(size=(7, 4)).astype(np.float32)

# One architecture shared by several tests, so its init compiles once.
MLP = models.mlp([4, 8, 6, 3], b_init=0.1)
MLP_INIT = jax.jit(MLP.init)
MLP_APPLY = jax.jit(MLP.apply)


def test_linear_shapes_single_and_batch():
    model = models.linear(4, 2)
    params = model.init(jax.random.key(0))
    assert params["w"].shape == (4, 2) and params["b"].shape == (2,)
    assert model.apply(params, X[0]).shape == (2,)
    out = model.apply(params, X)
    assert out.shape == (7, 2)
    # the batched map is the single-example map applied row by row
    np.testing.assert_allclose(out[:2], [model.apply(params, r) for r in X[:2]], rtol=1e-6)
    np.testing.assert_allclose(
        out, X @ np.asarray(params["w"]) + np.asarray(params["b"]), rtol=1e-5, atol=1e-7
    )


def test_mlp_shapes_and_forward_pass():
    params = MLP_INIT(jax.random.key(0))
    assert [(p["w"].shape, p["b"].shape) for p in params] == [
        ((4, 8), (8,)),
        ((8, 6), (6,)),
        ((6, 3), (3,)),
    ]
    out = MLP_APPLY(params, X)
    assert out.shape == (7, 3) and out.dtype == jnp.float32
    single = MLP_APPLY(params, X[0])
    assert single.shape == (3,)
    np.testing.assert_allclose(single, out[0], rtol=1e-5)

    # relu(x W + b) hidden layers and a linear output layer, by hand
    def by_hand(params, activation, final=lambda a: a):
        h = X.astype(np.float64)
        for layer in params[:-1]:
            h = activation(h @ np.asarray(layer["w"]) + np.asarray(layer["b"]))
        return final(h @ np.asarray(params[-1]["w"]) + np.asarray(params[-1]["b"]))

    np.testing.assert_allclose(
        out, by_hand(params, lambda a: np.maximum(a, 0)), rtol=1e-5, atol=1e-6
    )
    # another activation and a final one, on the same parameters
    other = models.mlp([4, 8, 6, 3], jnp.tanh, final_activation=jax.nn.sigmoid)
    np.testing.assert_allclose(
        jax.jit(other.apply)(params, X),
        by_hand(params, np.tanh, lambda a: 1 / (1 + np.exp(-a))),
        rtol=1e-5,
    )


def test_logistic_regression_outputs():
    key = jax.random.key(0)
    binary = models.logistic_regression(3)
    assert jax.eval_shape(binary.init, key)["w"].shape == (3, 1)
    multi = models.logistic_regression(3, num_classes=4)
    params = jax.eval_shape(multi.init, key)
    assert params["w"].shape == (3, 4)
    assert jax.eval_shape(multi.apply, params, jnp.ones((2, 3))).shape == (2, 4)


FAN_IN, FAN_OUT = 600, 1400  # 840,000 weights: relative s.e. of a variance ~ sqrt(2/n) = 0.15%


@pytest.mark.parametrize(
    ("scheme", "variance"),
    [
        ("he", 2.0 / FAN_IN),
        ("glorot", 2.0 / (FAN_IN + FAN_OUT)),
        ("small", 0.01**2),
    ],
)
def test_init_variance(scheme, variance):
    params = models.mlp([FAN_IN, FAN_OUT], w_init=scheme).init(jax.random.key(3))
    w = np.asarray(params[0]["w"], np.float64)
    n = w.size
    # 6 standard errors: a false alarm about once in a billion draws
    assert abs(w.var() / variance - 1.0) < 6 * np.sqrt(2.0 / n)
    assert abs(w.mean()) < 6 * np.sqrt(variance / n)
    np.testing.assert_array_equal(params[0]["b"], np.zeros(FAN_OUT))


def test_init_weights_schemes_directly():
    key = jax.random.key(0)
    assert np.all(np.asarray(models.init_weights(key, (3, 4), "zeros")) == 0)
    w = np.asarray(models.init_weights(key, (FAN_IN, FAN_OUT), "small", scale=0.5))
    assert abs(w.std() / 0.5 - 1) < 0.01
    custom = models.init_weights(key, (3, 4), jax.nn.initializers.ones)
    np.testing.assert_array_equal(custom, np.ones((3, 4)))
    assert models.init_weights(key, (3, 4), "he", dtype=jnp.bfloat16).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="w_init"):
        models.init_weights(key, (3, 4), "uniform")


def test_same_key_same_params_and_bias_constant():
    a = MLP_INIT(jax.random.key(7))
    b = MLP_INIT(jax.random.key(7))
    c = MLP_INIT(jax.random.key(8))
    chex.assert_trees_all_equal(a, b)
    assert not np.array_equal(a[0]["w"], c[0]["w"])
    for layer in a:
        np.testing.assert_array_equal(layer["b"], np.full(layer["b"].shape, 0.1, np.float32))
    # layers get independent keys: no layer's draw repeats another's
    assert not np.allclose(a[1]["w"][:4, :6], a[0]["w"][:4, :6])
    lin = jax.eval_shape(models.linear(3, 2, b_init=-0.5).init, jax.random.key(0))
    assert lin["b"].shape == (2,)
    np.testing.assert_array_equal(
        models.linear(3, 2, b_init=-0.5, w_init="zeros").init(jax.random.key(0))["b"], [-0.5, -0.5]
    )


def test_dtype_and_jit(x64):
    model = models.mlp([4, 8, 6, 3], dtype=jnp.float64)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(shapes))
    params = jax.tree.map(lambda s: jnp.full(s.shape, 0.5, s.dtype), shapes)
    out = jax.jit(model.apply)(params, jnp.ones((2, 4)))
    assert out.dtype == jnp.float64
    # the default stays float32 even with x64 enabled
    assert jax.eval_shape(MLP.init, jax.random.key(0))[0]["w"].dtype == jnp.float32


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: models.linear(0, 1), ValueError, "in_dim"),
        (lambda: models.linear(3, 0), ValueError, "out_dim"),
        (lambda: models.linear(2.5, 1), TypeError, "in_dim"),
        (lambda: models.linear(3, 1, w_init="uniform"), ValueError, "w_init"),
        (lambda: models.linear(3, 1, b_init="zero"), TypeError, "b_init"),
        (lambda: models.mlp([3]), ValueError, "sizes"),
        (lambda: models.mlp([3, 0, 1]), ValueError, r"sizes\[1\]"),
        (lambda: models.mlp([3, 4, 1], activation="relu"), TypeError, "activation"),
        (lambda: models.mlp([3, 4, 1], w_init="bad"), ValueError, "w_init"),
        (lambda: models.mlp([3, 1], b_init=float("nan")), ValueError, "b_init"),
        (lambda: models.logistic_regression(3, num_classes=1), ValueError, "num_classes"),
    ],
)
def test_bad_arguments_raise(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_model_is_a_namedtuple_of_pure_functions():
    init, apply = MLP
    assert isinstance(MLP, models.Model)
    params = MLP_INIT(jax.random.key(0))
    g = jax.jit(jax.grad(lambda p: jnp.sum(apply(p, X))))(params)
    assert jax.tree.structure(g) == jax.tree.structure(params)
    assert init is MLP.init
