"""The program cache never runs a stale program: what a program read while it was traced
(attributes of the loss's object, globals, captured arrays, a schedule object's fields)
keys it; jaxdescent's own rules and equal fresh optax rules still reuse their programs; an
entry keeps no user data alive."""

from __future__ import annotations

import gc
import types
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxdescent as jd
from jaxdescent._engine import cache

X = jnp.linspace(-1.0, 1.0, 16)


class Target:
    """A problem object whose method is the loss (its attribute is read while tracing)."""

    def __init__(self, target):
        self.target = target
        self.data = np.zeros(100, np.float32)

    def loss(self, w):
        return jnp.sum((w - self.target) ** 2) + 0.0 * jnp.sum(jnp.asarray(self.data))

    __call__ = loss


def _fit(loss, opt=None, steps=60):
    opt = jd.optim.sgd(0.25) if opt is None else opt
    return jd.fit(loss, jnp.zeros(2), opt, steps=steps, tol=1e-6)


def test_a_bound_method_whose_object_changed_is_traced_again():
    p = Target(1.0)
    np.testing.assert_allclose(_fit(p.loss).params, 1.0, atol=1e-5)
    p.target = 5.0
    np.testing.assert_allclose(_fit(p.loss).params, 5.0, atol=1e-5)
    p.target = 1.0  # back to a value seen before: its program again, and right
    np.testing.assert_allclose(_fit(p.loss).params, 1.0, atol=1e-5)
    # the same for the object itself as the loss, and for solve
    q = Target(2.0)
    np.testing.assert_allclose(_fit(q).params, 2.0, atol=1e-5)
    q.target = -3.0
    np.testing.assert_allclose(_fit(q).params, -3.0, atol=1e-5)
    q.target = 7.0
    sol = jd.solve(q, jnp.zeros(2), jd.optim.sgd(0.25), steps=60, tol=1e-6)
    np.testing.assert_allclose(sol.params, 7.0, atol=1e-5)


def test_data_stored_on_the_object_is_not_stale():
    class Regression:
        def __init__(self, y):
            self.y = y

        def loss(self, w):
            return jnp.mean((w[0] * X + w[1] - self.y) ** 2)

    r = Regression(2.0 * X + 1.0)
    np.testing.assert_allclose(_fit(r.loss, steps=400).params, [2.0, 1.0], atol=1e-3)
    r.y = -1.0 * X + 3.0  # a new array on the same object
    np.testing.assert_allclose(_fit(r.loss, steps=400).params, [-1.0, 3.0], atol=1e-3)


def _notebook_cell(lr: float) -> types.SimpleNamespace:
    """Runs the source of a notebook cell that defines a rule reading a global ``LR``, in a
    fresh module namespace, as a re-run cell does."""
    namespace = {"__name__": "__main__", "jax": jax}
    source = f"""
LR = {lr!r}

def init(params):
    return ()

def update(grads, state, params=None, **extra):
    return jax.tree.map(lambda g: -LR * g, grads), state
"""
    exec(compile(source, "<notebook cell>", "exec"), namespace)
    return types.SimpleNamespace(namespace=namespace, opt=optax.GradientTransformation(
        namespace["init"], namespace["update"]))  # fmt: skip


def half_square(x):
    return 0.5 * x**2


def _one_step(opt):
    """The first step's update from 1.0 on f(x) = x^2 / 2 (the gradient is 1): ``-lr``. The
    loss is the same object every time: only the optimizer differs."""
    res = jd.fit(half_square, jnp.array(1.0), opt, steps=1)
    return float(res.params) - 1.0


def test_an_optimizer_reading_a_global_is_traced_again_when_it_changes():
    cell = _notebook_cell(0.1)
    assert _one_step(cell.opt) == pytest.approx(-0.1)
    again = _notebook_cell(0.3)  # the cell re-run with a new LR: same code, new functions
    assert _one_step(again.opt) == pytest.approx(-0.3)
    again.namespace["LR"] = 0.05  # only the global changed, the same rule object
    assert _one_step(again.opt) == pytest.approx(-0.05)


def test_an_optimizer_reading_an_attribute_of_a_captured_object():
    class Settings:
        lr = 0.1

        def __init__(self):
            self.lr = 0.1

    settings = Settings()

    def update(grads, state, params=None, **extra):
        return jax.tree.map(lambda g: -settings.lr * g, grads), state

    opt = optax.GradientTransformation(lambda p: (), update)
    assert _one_step(opt) == pytest.approx(-0.1)
    settings.lr = 0.4
    assert _one_step(opt) == pytest.approx(-0.4)


def test_a_schedule_object_whose_attribute_changed():
    class Constant:
        def __init__(self, value):
            self.value = value

        def __call__(self, count):
            return self.value

    schedule = Constant(0.1)
    opt = jd.optim.sgd(schedule)
    assert _one_step(opt) == pytest.approx(-0.1)
    schedule.value = 0.2
    assert _one_step(opt) == pytest.approx(-0.2)
    assert _one_step(optax.sgd(schedule)) == pytest.approx(-0.2)


def test_a_captured_numpy_array_changed_in_place():
    weights = np.ones(200, np.float32)  # more elements than are compared by value

    def loss(x):
        return 0.5 * jnp.sum(jnp.asarray(weights)) * x**2 / 200.0

    assert _one_step_loss(loss) == pytest.approx(-0.25)
    weights[:] = 2.0
    assert _one_step_loss(loss) == pytest.approx(-0.5)

    scale = np.ones(100, np.float32)

    def update(grads, state, params=None, **extra):
        return jax.tree.map(lambda g: -0.1 * jnp.mean(jnp.asarray(scale)) * g, grads), state

    opt = optax.GradientTransformation(lambda p: (), update)
    assert _one_step(opt) == pytest.approx(-0.1)
    scale *= 3.0
    assert _one_step(opt) == pytest.approx(-0.3)


def _one_step_loss(loss):
    res = jd.fit(loss, jnp.array(1.0), jd.optim.sgd(0.25), steps=1)
    return float(res.params) - 1.0


def test_equal_fresh_rules_and_sweeps_still_reuse_their_program():
    from tests.test_engine import Compiles

    f = jd.problems.rosenbrock
    x0 = jnp.array([-1.2, 1.0])
    jd.fit(f, x0, jd.optim.adam(1e-3), steps=5)
    jd.fit(f, x0, optax.adam(3e-3), steps=5)
    with Compiles() as c:
        jd.fit(f, x0, jd.optim.adam(7e-3), steps=5)
        jd.fit(f, x0, optax.adam(3e-3), steps=5)
        for _ in range(2):  # a fresh lambda each time, as a loop in a script makes
            jd.fit(lambda x: jd.problems.rosenbrock(x), x0, jd.optim.adam(2e-3), steps=5)
    # the fresh lambdas have the same code and read the same globals: one program
    assert c.count == 1, c.count


def test_an_optimizer_capturing_a_large_array_does_not_keep_it_alive():
    before = cache.size()
    alive = []
    loss = jd.problems.quadratic
    for i in range(4):
        big = np.full(1_000_000, 1.0 + i, np.float32)  # 4 MB each
        alive.append(weakref.ref(big))

        def update(grads, state, params=None, big=big, **extra):
            return jax.tree.map(lambda g: -0.01 * big[:1] * g, grads), state

        jd.fit(loss, jnp.ones(2), optax.GradientTransformation(lambda p: (), update), steps=2)
        del big, update
    gc.collect()
    assert all(ref() is None for ref in alive), "the cache kept a captured array alive"
    assert cache.size() <= before + 1


def test_tokens_see_values_not_objects():
    token = lambda obj: cache.token(obj)[0]  # noqa: E731

    def fresh():
        return lambda x: x + 1.0

    assert token(fresh()) == token(fresh())
    assert token((1.0, np.float32(2.0), "a")) == token((1.0, np.float32(2.0), "a"))
    assert token(float("nan")) == token(float("nan"))
    assert token(0.0) != token(-0.0)
    assert token({"a": [1, 2]}) != token({"a": [1, 3]})
    assert token(np.arange(3.0)) == token(np.arange(3.0))
    with pytest.raises(cache.Traced):
        jax.jit(lambda x: token(lambda y: y + x))(1.0)
