"""A catalogue of bad input across the public API.

Each case asserts the error type, and that the message names the argument, says what was
expected and shows what was given. Every error must come from jaxdescent's own Python checks
(the raising frame is in the package) and before the training loop is compiled: the
``no_loop_compile`` fixture makes building the compiled loop fail the test.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxdescent as jd

PACKAGE = Path(jd.__file__).parent

X = jnp.linspace(-1.0, 1.0, 24).reshape(8, 3)
Y = jnp.linspace(0.0, 1.0, 8)
LABELS = jnp.array([0, 1, 1, 0, 1, 0, 0, 1], jnp.float32)
MODEL = jd.models.linear(3, 1)
PARAMS = MODEL.init(jax.random.key(0))
CLASSIFIER = jd.models.linear(3, 4)
GAUSS = jd.losses.nll(MODEL.apply, jd.likelihoods.Gaussian())
BERN = jd.losses.nll(MODEL.apply, jd.likelihoods.Bernoulli())
POIS = jd.losses.nll(MODEL.apply, jd.likelihoods.Poisson())
CAT = jd.losses.nll(CLASSIFIER.apply, jd.likelihoods.Categorical())
SGD = jd.optim.sgd(0.1)


def quad(x):
    return jnp.sum(x**2)


def fit(loss=quad, params=None, optimizer=SGD, **kwargs):
    kwargs.setdefault("steps", 3)
    return jd.fit(loss, jnp.ones(2) if params is None else params, optimizer, **kwargs)


def fit_data(loss=GAUSS, data=(X, Y), params=PARAMS, **kwargs):
    return fit(loss, params, data=data, **kwargs)


def multistart(**kwargs):
    args = {
        "init": MODEL.init,
        "loss": GAUSS,
        "optimizer": SGD,
        "key": jax.random.key(0),
        "restarts": 2,
        "data": (X, Y),
        "steps": 3,
    }
    args.update(kwargs)
    return jd.multistart(args.pop("init"), args.pop("loss"), args.pop("optimizer"), **args)


def update(opt, grads, params):
    return opt.update(grads, opt.init(params), params)


def write_bytes(tmp_path, content: bytes):
    path = tmp_path / "checkpoint.jdc"
    path.write_bytes(content)
    return path


def saved_checkpoint(tmp_path, state):
    return jd.checkpoint.save(tmp_path / "checkpoint.jdc", state, {"steps_done": 1})


TREE = {"a": jnp.ones(2), "b": jnp.ones(1)}
INJECTED = optax.inject_hyperparams(jd.optim.sgd)(learning_rate=0.1)

# (id, call, error type, fragments the message must contain: argument, expected, given)
CASES = [
    # --- jd.fit: parameters, budget, tolerances ---
    (
        "fit-int-params",
        lambda: fit(params=jnp.array([1, 2])),
        TypeError,
        ["params", "floating-point", "int32"],
    ),
    (
        "fit-int-leaf-in-tree",
        lambda: fit(params={"w": jnp.ones(2), "n": jnp.arange(2)}),
        TypeError,
        ["params", "['n']", "floating-point", "int32"],
    ),
    (
        "fit-params-none",
        lambda: fit(params={}),
        ValueError,
        ["params", "at least one array", "{}"],
    ),
    ("fit-steps-0", lambda: fit(steps=0), ValueError, ["steps", ">= 1", "got 0"]),
    ("fit-steps-float", lambda: fit(steps=2.5), TypeError, ["steps", "integer", "2.5"]),
    ("fit-negative-tol", lambda: fit(tol=-1e-3), ValueError, ["tol", ">= 0", "-0.001"]),
    ("fit-nan-tol", lambda: fit(tol=float("nan")), ValueError, ["tol", "finite", "nan"]),
    ("fit-chunk-0", lambda: fit(chunk_size=0), ValueError, ["chunk_size", ">= 1", "got 0"]),
    (
        "fit-checkpoint-every-0",
        lambda: fit(checkpoint_every=0),
        ValueError,
        ["checkpoint_every", ">= 1", "got 0"],
    ),
    ("fit-key-int", lambda: fit(key=0), TypeError, ["key", "PRNG key", "int 0"]),
    (
        "fit-key-batch",
        lambda: fit(key=jax.random.split(jax.random.key(0), 3)),
        ValueError,
        ["key", "single PRNG key", "(3,)"],
    ),
    ("fit-key-floats", lambda: fit(key=jnp.ones(2)), TypeError, ["key", "PRNG key", "1."]),
    (
        "fit-optimizer-name",
        lambda: fit(optimizer="adam"),
        TypeError,
        ["optimizer", "GradientTransformation", "'adam'", "jd.optim.adam("],
    ),
    (
        "fit-optimizer-unknown-name",
        lambda: fit(optimizer="adamm"),
        TypeError,
        ["optimizer", "'adamm' is not an update rule", "newton, newton_cg"],
    ),
    (
        "fit-problem-wrong-dimension",
        lambda: fit(jd.problems.saddle, jnp.ones(3)),
        ValueError,
        ["loss(params)", "saddle", "d = 2", "(3,)"],
    ),
    ("fit-loss-not-callable", lambda: fit(loss=3.0), TypeError, ["loss", "callable", "3.0"]),
    (
        "fit-loss-vector",
        lambda: fit(loss=lambda x: x**2),
        ValueError,
        ["loss", "scalar", "shape (2,)"],
    ),
    (
        "fit-loss-int",
        lambda: fit(loss=lambda x: jnp.sum(x > 0)),
        ValueError,
        ["loss", "floating-point scalar", "int32"],
    ),
    (
        "fit-loss-needs-batch",
        lambda: fit(loss=lambda p, batch: quad(p)),
        ValueError,
        ["loss(params)", "failed", "batch"],
    ),
    # --- jd.fit: data ---
    (
        "fit-empty-data",
        lambda: fit_data(data=(X[:0], Y[:0])),
        ValueError,
        ["data", "at least one example", "leading size of 0"],
    ),
    (
        "fit-data-no-arrays",
        lambda: fit_data(data=()),
        ValueError,
        ["data", "pytree of arrays", "()"],
    ),
    (
        "fit-data-lengths",
        lambda: fit_data(data=(X, Y[:5])),
        ValueError,
        ["leading size", "data[0]: 8", "data[1]: 5"],
    ),
    (
        "fit-data-scalar-leaf",
        lambda: fit_data(data=(X, jnp.float32(1.0))),
        ValueError,
        ["data[1]", "leading example axis", "shape ()"],
    ),
    (
        "fit-data-nan",
        lambda: fit_data(data=(X.at[2, 1].set(jnp.nan), Y)),
        ValueError,
        ["data[0]", "finite", "nan", "(2, 1)"],
    ),
    (
        "fit-data-inf",
        lambda: fit_data(data=(X, Y.at[3].set(-jnp.inf))),
        ValueError,
        ["data[1]", "finite", "-inf", "(3,)"],
    ),
    (
        "fit-data-nan-named-leaf",
        lambda: fit(
            lambda p, b: GAUSS(p, (b["x"], b["y"])),
            PARAMS,
            data={"x": X, "y": np.asarray(Y).copy() * np.array([1] * 7 + [np.nan], np.float32)},
        ),
        ValueError,
        ["data['y']", "finite", "nan", "(7,)"],
    ),
    ("fit-batch-0", lambda: fit_data(batch_size=0), ValueError, ["batch_size", ">= 1", "got 0"]),
    (
        "fit-batch-too-big",
        lambda: fit_data(batch_size=9),
        ValueError,
        ["batch_size", "at most the number of examples (8)", "got 9"],
    ),
    (
        "fit-batch-without-data",
        lambda: fit(batch_size=4),
        ValueError,
        ["batch_size", "needs data", "batch_size=4"],
    ),
    (
        "fit-x-wrong-width",
        lambda: fit_data(data=(jnp.ones((8, 4)), Y)),
        ValueError,
        ["loss(params, batch)", "(4,)", "(3,)"],
    ),
    (
        "fit-y-wrong-shape",
        lambda: fit_data(data=(X, jnp.ones((8, 2)))),
        ValueError,
        ["model output", "(8, 1)", "(8, 2)"],
    ),
    # --- jd.fit: targets outside the likelihood's support ---
    (
        "fit-bernoulli-label-2",
        lambda: fit_data(BERN, (X, LABELS.at[4].set(2.0))),
        ValueError,
        ["Bernoulli targets", "{0, 1}", "2.0"],
    ),
    (
        "fit-bernoulli-label-negative",
        lambda: fit_data(BERN, (X, LABELS.at[0].set(-1.0))),
        ValueError,
        ["Bernoulli targets", "{0, 1}", "-1.0"],
    ),
    (
        "fit-categorical-label-too-big",
        lambda: fit_data(CAT, (X, jnp.arange(8) % 5), CLASSIFIER.init(jax.random.key(0))),
        ValueError,
        ["Categorical labels", "[0, 4)", "4"],
    ),
    (
        "fit-categorical-label-negative",
        lambda: fit_data(CAT, (X, jnp.arange(8) % 4 - 1), CLASSIFIER.init(jax.random.key(0))),
        ValueError,
        ["Categorical labels", "[0, 4)", "-1"],
    ),
    (
        "fit-poisson-negative-count",
        lambda: fit_data(POIS, (X, Y - 0.5)),
        ValueError,
        ["Poisson targets", ">= 0", "-0.5"],
    ),
    # --- jd.multistart ---
    (
        "multistart-restarts-0",
        lambda: multistart(restarts=0),
        ValueError,
        ["restarts", ">= 1", "got 0"],
    ),
    (
        "multistart-restarts-float",
        lambda: multistart(restarts=4.0),
        TypeError,
        ["restarts", "integer", "4.0"],
    ),
    (
        "multistart-init-not-callable",
        lambda: multistart(init=PARAMS),
        TypeError,
        ["init", "callable", "'w'"],
    ),
    (
        "multistart-init-fails",
        lambda: multistart(init=lambda key: key + 1.0),
        ValueError,
        ["init(key)", "failed"],
    ),
    (
        "multistart-int-init",
        lambda: multistart(init=lambda k: jax.random.randint(k, (2,), 0, 3), loss=quad, data=None),
        TypeError,
        ["init(key)", "floating-point", "int32"],
    ),
    ("multistart-key-int", lambda: multistart(key=1), TypeError, ["key", "PRNG key", "1"]),
    ("multistart-steps-0", lambda: multistart(steps=0), ValueError, ["steps", ">= 1", "0"]),
    (
        "multistart-data-lengths",
        lambda: multistart(data=(X, Y[:3])),
        ValueError,
        ["leading size", "data[0]: 8", "data[1]: 3"],
    ),
    (
        "multistart-bernoulli-label",
        lambda: multistart(loss=BERN, data=(X, LABELS.at[1].set(0.5 + 1.0))),
        ValueError,
        ["Bernoulli targets", "{0, 1}", "1.5"],
    ),
    (
        "multistart-nan-data",
        lambda: multistart(data=(X, Y.at[5].set(jnp.nan))),
        ValueError,
        ["data[1]", "finite", "nan", "(5,)"],
    ),
    (
        "multistart-hyperparams-plain-optimizer",
        lambda: multistart(optimizer=optax.sgd(0.1), hyperparams={"learning_rate": jnp.ones(2)}),
        ValueError,
        ["hyperparams", "inject_hyperparams", "tuple"],
    ),
    (
        "multistart-hyperparams-unknown",
        lambda: multistart(optimizer=INJECTED, hyperparams={"lr": jnp.ones(2)}),
        ValueError,
        ["hyperparams['lr']", "runtime hyperparameter", "learning_rate"],
    ),
    (
        "multistart-hyperparams-shape",
        lambda: multistart(optimizer=INJECTED, hyperparams={"learning_rate": jnp.ones(3)}),
        ValueError,
        ["hyperparams['learning_rate']", "(2,)", "(3,)"],
    ),
    # --- jd.make_step ---
    (
        "make-step-optimizer",
        lambda: jd.make_step(quad, optax.adam),
        TypeError,
        ["optimizer", "GradientTransformation", "function"],
    ),
    (
        "make-step-loss",
        lambda: jd.make_step("quad", SGD),
        TypeError,
        ["loss", "callable", "'quad'"],
    ),
    # --- jd.optim factories and updates ---
    ("sgd-negative-lr", lambda: jd.optim.sgd(-0.1), ValueError, ["learning_rate", ">= 0", "-0.1"]),
    (
        "sgd-lr-string",
        lambda: jd.optim.sgd("fast"),
        TypeError,
        ["learning_rate", "real scalar", "'fast'"],
    ),
    (
        "adam-lr-inf",
        lambda: jd.optim.adam(float("inf")),
        ValueError,
        ["learning_rate", "finite", "inf"],
    ),
    (
        "momentum-beta-1",
        lambda: jd.optim.momentum(0.1, beta=1.0),
        ValueError,
        ["beta", "[0, 1)", "1.0"],
    ),
    (
        "momentum-form",
        lambda: jd.optim.momentum(0.1, form="heavy"),
        ValueError,
        ["form", "'nesterov'", "'heavy'"],
    ),
    ("adagrad-eps-0", lambda: jd.optim.adagrad(0.1, eps=0.0), ValueError, ["eps", "> 0", "0.0"]),
    (
        "adagrad-accumulator",
        lambda: jd.optim.adagrad(0.1, initial_accumulator_value=-1),
        ValueError,
        ["initial_accumulator_value", ">= 0", "-1"],
    ),
    (
        "rmsprop-decay",
        lambda: jd.optim.rmsprop(0.1, decay=-0.5),
        ValueError,
        ["decay", "[0, 1)", "-0.5"],
    ),
    (
        "rmsprop-momentum",
        lambda: jd.optim.rmsprop(0.1, momentum=1.5),
        ValueError,
        ["momentum", "[0, 1)", "1.5"],
    ),
    ("adam-b2-1", lambda: jd.optim.adam(0.1, b2=1.0), ValueError, ["b2", "[0, 1)", "1.0"]),
    (
        "adamw-weight-decay",
        lambda: jd.optim.adamw(0.1, weight_decay=-1e-4),
        ValueError,
        ["weight_decay", ">= 0", "-0.0001"],
    ),
    (
        "adam-update-tree-mismatch",
        lambda: update(jd.optim.adam(0.1), {"a": jnp.ones(2)}, TREE),
        ValueError,
        ["grads", "tree structure", "'b'"],
    ),
    (
        "sgd-update-tree-mismatch",
        lambda: update(jd.optim.sgd(0.1), [jnp.ones(2)], TREE),
        ValueError,
        ["grads", "tree structure", "PyTreeDef([*])"],
    ),
    (
        "momentum-update-shape",
        lambda: update(jd.optim.momentum(0.1), jnp.ones(3), jnp.ones(2)),
        ValueError,
        ["grads", "shape (2,)", "(3,)"],
    ),
    (
        "rmsprop-update-leaf-shape",
        lambda: update(jd.optim.rmsprop(0.1), {"a": jnp.ones(2), "b": jnp.ones(4)}, TREE),
        ValueError,
        ["grads['b']", "(1,)", "(4,)"],
    ),
    (
        "adamw-update-no-params",
        lambda: jd.optim.adamw(0.1).update(jnp.ones(2), jd.optim.adamw(0.1).init(jnp.ones(2))),
        ValueError,
        ["adamw", "params", "update(grads, state, params)"],
    ),
    (
        "newton-damping",
        lambda: jd.optim.newton(damping=-1.0),
        ValueError,
        ["damping", ">= 0", "-1.0"],
    ),
    (
        "newton-damping-factor",
        lambda: jd.optim.newton(damping_factor=1.0),
        ValueError,
        ["damping_factor", "> 1", "1.0"],
    ),
    (
        "newton-line-search-flag",
        lambda: jd.optim.newton(line_search="yes"),
        TypeError,
        ["line_search", "True or False", "'yes'"],
    ),
    (
        "newton-cg-tol",
        lambda: jd.optim.newton_cg(cg_tol=0.0),
        ValueError,
        ["cg_tol", "(0, 1]", "0.0"],
    ),
    (
        "saddle-free-damping",
        lambda: jd.optim.saddle_free_newton(damping=0.0),
        ValueError,
        ["damping", "> 0", "0.0"],
    ),
    (
        "line-search-c1",
        lambda: jd.optim.backtracking_line_search(c1=2.0),
        ValueError,
        ["c1", "(0, 1)", "2.0"],
    ),
    (
        "newton-update-no-value-fn",
        lambda: update(jd.optim.newton(), jnp.ones(2), jnp.ones(2)),
        ValueError,
        ["newton", "value_fn=loss", "update(grads, state, params"],
    ),
    (
        "newton-update-tree",
        lambda: jd.optim.newton().update(
            {"a": jnp.ones(2)}, jd.optim.newton().init(TREE), TREE, value_fn=quad
        ),
        ValueError,
        ["newton", "tree structure", "'b'"],
    ),
    (
        "newton-cg-update-shape",
        lambda: jd.optim.newton_cg().update(
            jnp.ones(3), jd.optim.newton_cg().init(jnp.ones(2)), jnp.ones(2), value_fn=quad
        ),
        ValueError,
        ["grads", "(2,)", "(3,)"],
    ),
    # --- jd.problems and jd.diagnostics ---
    (
        "problems-unknown-name",
        lambda: jd.problems.get("rosenbruck"),
        ValueError,
        ["unknown test function", "'rosenbruck'", "'rosenbrock'"],
    ),
    (
        "problems-point-dimension",
        lambda: jd.problems.himmelblau(jnp.ones(3)),
        ValueError,
        ["himmelblau", "d = 2", "(3,)"],
    ),
    (
        "problems-rosenbrock-1d",
        lambda: jd.problems.rosenbrock(jnp.ones(1)),
        ValueError,
        ["rosenbrock", "d >= 2", "(1,)"],
    ),
    (
        "problems-quadratic-b",
        lambda: jd.problems.make_quadratic(jnp.eye(2), jnp.ones(3)),
        ValueError,
        ["b", "(2,)", "(3,)"],
    ),
    (
        "problems-two-moons-n",
        lambda: jd.problems.two_moons(jax.random.key(0), n=0),
        ValueError,
        ["n", ">= 1", "0"],
    ),
    (
        "problems-outlier-fraction",
        lambda: jd.problems.regression_with_outliers(jax.random.key(0), outlier_fraction=2.0),
        ValueError,
        ["outlier_fraction", "[0, 1]", "2.0"],
    ),
    (
        "diagnostics-point-dimension",
        lambda: jd.diagnostics.classify_critical_point(jd.problems.saddle, jnp.zeros(3)),
        ValueError,
        ["saddle", "d = 2", "(3,)"],
    ),
    # --- jd.schedules ---
    (
        "constant-negative",
        lambda: jd.schedules.constant(-1.0),
        ValueError,
        ["value", ">= 0", "-1.0"],
    ),
    (
        "step-decay-rate-0",
        lambda: jd.schedules.step_decay(0.1, 10, 0.0),
        ValueError,
        ["decay_rate", "> 0", "0.0"],
    ),
    (
        "exponential-decay-steps",
        lambda: jd.schedules.exponential_decay(0.1, 0, 0.5),
        ValueError,
        ["transition_steps", ">= 1", "0"],
    ),
    (
        "cosine-alpha",
        lambda: jd.schedules.cosine_decay(0.1, 100, alpha=2.0),
        ValueError,
        ["alpha", "[0, 1]", "2.0"],
    ),
    (
        "cyclic-max-below-base",
        lambda: jd.schedules.cyclic(0.1, 0.01, 10),
        ValueError,
        ["max_value", ">= base_value", "0.01"],
    ),
    (
        "cyclic-mode",
        lambda: jd.schedules.cyclic(0.01, 0.1, 10, mode="sine"),
        ValueError,
        ["mode", "'triangular'", "'sine'"],
    ),
    (
        "warmup-negative-steps",
        lambda: jd.schedules.warmup(0.1, -5),
        ValueError,
        ["steps", ">= 0", "-5"],
    ),
    (
        "join-boundaries-order",
        lambda: jd.schedules.join([jd.schedules.constant(1.0)] * 3, [20, 10]),
        ValueError,
        ["boundaries", "increasing", "[20, 10]"],
    ),
    (
        "join-boundaries-count",
        lambda: jd.schedules.join([jd.schedules.constant(1.0)] * 3, [10]),
        ValueError,
        ["boundaries", "2", "got 1"],
    ),
    # --- jd.models ---
    ("linear-in-dim-0", lambda: jd.models.linear(0), ValueError, ["in_dim", ">= 1", "0"]),
    (
        "linear-in-dim-float",
        lambda: jd.models.linear(2.5),
        TypeError,
        ["in_dim", "integer", "2.5"],
    ),
    (
        "mlp-one-size",
        lambda: jd.models.mlp([2]),
        ValueError,
        ["sizes", "input and an output", "[2]"],
    ),
    (
        "mlp-zero-width",
        lambda: jd.models.mlp([2, 0, 1]),
        ValueError,
        ["sizes[1]", ">= 1", "got 0"],
    ),
    (
        "mlp-w-init",
        lambda: jd.models.mlp([2, 1], w_init="xavier"),
        ValueError,
        ["w_init", "'glorot'", "'xavier'"],
    ),
    (
        "logistic-one-class",
        lambda: jd.models.logistic_regression(3, num_classes=1),
        ValueError,
        ["num_classes", ">= 2", "1"],
    ),
    # --- jd.losses and jd.likelihoods ---
    (
        "mse-broadcast",
        lambda: jd.losses.mse(jnp.ones((4, 1)), jnp.ones(4)),
        ValueError,
        ["targets", "(4, 1)", "(4,)"],
    ),
    (
        "poisson-nll-shapes",
        lambda: jd.losses.poisson_nll(jnp.ones(3), jnp.ones(2)),
        ValueError,
        ["counts", "(3,)", "(2,)"],
    ),
    (
        "loss-reduction",
        lambda: jd.losses.mae(jnp.ones(2), jnp.ones(2), reduction="avg"),
        ValueError,
        ["reduction", "'mean'", "'avg'"],
    ),
    (
        "nll-likelihood-name",
        lambda: jd.losses.nll(MODEL.apply, "gaussian"),
        TypeError,
        ["likelihood", "Likelihood", "'gaussian'"],
    ),
    (
        "nll-apply",
        lambda: jd.losses.nll(None, jd.likelihoods.Gaussian()),
        TypeError,
        ["apply", "callable", "None"],
    ),
    (
        "gaussian-scale-0",
        lambda: jd.likelihoods.Gaussian(scale=0.0),
        ValueError,
        ["scale", "> 0", "0.0"],
    ),
    (
        "laplace-scale-negative",
        lambda: jd.likelihoods.Laplace(scale=-2.0),
        ValueError,
        ["scale", "> 0", "-2.0"],
    ),
    (
        "categorical-label-shape",
        lambda: jd.likelihoods.Categorical().log_prob(jnp.zeros((5, 3)), jnp.zeros((5, 1), int)),
        ValueError,
        ["integer labels", "(5,)", "(5, 1)"],
    ),
    # --- jd.distinct_minima ---
    (
        "distinct-minima-tol",
        lambda: jd.distinct_minima(jnp.ones((3, 2)), -1.0),
        ValueError,
        ["tol", ">= 0", "-1.0"],
    ),
    (
        "distinct-minima-losses",
        lambda: jd.distinct_minima(jnp.ones((3, 2)), 0.1, losses=jnp.ones(5)),
        ValueError,
        ["losses", "(3,)", "(5,)"],
    ),
    (
        "distinct-minima-unstacked",
        lambda: jd.distinct_minima({"a": jnp.ones((3, 2)), "b": jnp.ones(4)}, 0.1),
        ValueError,
        ["params", "leading restart axis", "(4,)"],
    ),
]

CHECKPOINT_CASES = [
    (
        "checkpoint-missing",
        lambda tmp: jd.checkpoint.load(tmp / "none.jdc", jnp.ones(2)),
        ["checkpoint", "none.jdc", "does not exist"],
    ),
    (
        "checkpoint-not-ours",
        lambda tmp: jd.checkpoint.load(write_bytes(tmp, b"PK\x03\x04 some zip file"), jnp.ones(2)),
        ["not a jaxdescent checkpoint", "18 bytes"],
    ),
    (
        "checkpoint-leaf-count",
        lambda tmp: jd.checkpoint.load(
            saved_checkpoint(tmp, (jnp.ones(2), jnp.ones(3))), [jnp.ones(2)] * 3
        ),
        ["holds 2 arrays", "has 3", "different model or optimizer"],
    ),
    (
        "checkpoint-leaf-shape",
        lambda tmp: jd.checkpoint.load(saved_checkpoint(tmp, jnp.ones(3)), jnp.ones(2)),
        ["leaf 0", "shape (3,)", "expects shape (2,)"],
    ),
    (
        "checkpoint-leaf-dtype",
        lambda tmp: jd.checkpoint.load(saved_checkpoint(tmp, jnp.ones(2, jnp.int32)), jnp.ones(2)),
        ["leaf 0", "dtype int32", "dtype float32"],
    ),
]


@pytest.fixture
def no_loop_compile(monkeypatch):
    """Fail if the compiled training loop is built: errors must come before that."""

    def refuse(*args, **kwargs):
        raise AssertionError("the training loop was compiled before the bad input was caught")

    monkeypatch.setattr("jaxdescent._engine.programs.loop", refuse)


def assert_clear(excinfo, fragments):
    message = str(excinfo.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from the message: {message}"
    raised_in = Path(excinfo.traceback[-1].path).resolve()
    assert PACKAGE in raised_in.parents, f"raised outside jaxdescent, in {raised_in}"


@pytest.mark.parametrize(
    ("call", "error", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input(no_loop_compile, call, error, fragments):
    with pytest.raises(error) as excinfo:
        call()
    assert type(excinfo.value) is error or issubclass(type(excinfo.value), error)
    assert_clear(excinfo, fragments)


@pytest.mark.parametrize(
    ("call", "fragments"), [c[1:] for c in CHECKPOINT_CASES], ids=[c[0] for c in CHECKPOINT_CASES]
)
def test_bad_checkpoint(tmp_path, call, fragments):
    with pytest.raises(jd.checkpoint.CheckpointError) as excinfo:
        call(tmp_path)
    assert_clear(excinfo, fragments)


def test_catalogue_size():
    assert len(CASES) + len(CHECKPOINT_CASES) >= 30
    assert len({c[0] for c in CASES}) == len(CASES)


def test_good_input_gets_past_every_check(no_loop_compile):
    """The same helpers with good input pass every check and reach the compiled loop (which
    the fixture refuses): the catalogue's failures come from the bad parts alone."""
    good_calls = [
        lambda: fit_data(batch_size=4),
        lambda: fit_data(BERN, (X, LABELS)),
        lambda: fit_data(POIS, (X, jnp.round(4 * Y))),
        lambda: fit_data(CAT, (X, jnp.arange(8) % 4), CLASSIFIER.init(jax.random.key(0))),
        lambda: fit(jd.problems.saddle, jnp.ones(2), jd.optim.newton()),
        lambda: multistart(optimizer=INJECTED, hyperparams={"learning_rate": jnp.ones(2)}),
    ]
    for call in good_calls:
        with pytest.raises(AssertionError, match="training loop was compiled"):
            call()


# --- first-order rules' options, the decays and runtime hyperparameters ---------------------

RULE_OPTION_CASES = [
    (
        "rmsprop-nesterov-without-momentum",
        lambda: jd.optim.rmsprop(0.1, nesterov=True),
        ValueError,
        ["nesterov=True needs momentum", "[0, 1)", "momentum=None"],
    ),
    (
        "rmsprop-centered-not-bool",
        lambda: jd.optim.rmsprop(0.1, centered="no"),
        TypeError,
        ["centered", "True or False", "'no'"],
    ),
    (
        "rmsprop-nesterov-not-bool",
        lambda: jd.optim.rmsprop(0.1, momentum=0.9, nesterov="no"),
        TypeError,
        ["nesterov", "True or False", "'no'"],
    ),
    (
        "exponential-decay-grows",
        lambda: jd.schedules.exponential_decay(0.01, 1000, 2.0),
        ValueError,
        ["decay_rate", "<= 1", "2.0", "(init_value, transition_steps, decay_rate)"],
    ),
    (
        "step-decay-grows",
        lambda: jd.schedules.step_decay(0.01, 10, 3.0),
        ValueError,
        ["decay_rate", "<= 1", "3.0", "allow_growth=True"],
    ),
    (
        "exponential-decay-staircase-not-bool",
        lambda: jd.schedules.exponential_decay(0.1, 10, 0.5, staircase="no"),
        TypeError,
        ["staircase", "True or False", "'no'"],
    ),
    (
        "check-hyperparam-b1",
        lambda: _check_sweep("ADAM", "b1", 1.5),
        ValueError,
        ["hyperparams['b1']", "in [0, 1)", "1.5"],
    ),
    (
        "check-hyperparam-learning-rate-entry",
        lambda: _check_sweep("SGD", "learning_rate", jnp.array([0.1, -1.0])),
        ValueError,
        ["hyperparams['learning_rate']", ">= 0", "-1.0", "index 1"],
    ),
    (
        "check-hyperparam-not-a-number",
        lambda: _check_sweep("ADAM", "eps", "1e-8"),
        TypeError,
        ["hyperparams['eps']", "real number", "'1e-8'"],
    ),
    (
        "check-hyperparam-newton-eta",
        lambda: _check_sweep("NEWTON", "eta", np.array([0.1, 0.5])),
        ValueError,
        ["hyperparams['eta']", "in [0, 0.25)", "0.5", "index 1"],
    ),
    (
        "rule-integer-option-traced",
        lambda: jax.jit(lambda n: jd.optim.newton_cg(max_cg_steps=n).init(jnp.ones(2)))(3),
        TypeError,
        ["max_cg_steps", "concrete integer", "static_args=('max_cg_steps',)"],
    ),
]


def _check_sweep(table, name, value):
    from jaxdescent.optim import hyperparams

    return hyperparams.check_sweep(getattr(hyperparams, table), name, value)


@pytest.mark.parametrize(
    ("call", "error", "fragments"),
    [c[1:] for c in RULE_OPTION_CASES],
    ids=[c[0] for c in RULE_OPTION_CASES],
)
def test_bad_rule_options_and_hyperparameters(no_loop_compile, call, error, fragments):
    with pytest.raises(error) as excinfo:
        call()
    assert_clear(excinfo, fragments)


# --- engine options: flags are booleans, options that cannot apply are errors --------------

ENGINE_OPTION_CASES = [
    ("fit-progress-string", lambda: fit(progress="no"), TypeError, ["progress", "'no'"]),
    ("fit-has-aux-string", lambda: fit(has_aux="yes"), TypeError, ["has_aux", "'yes'"]),
    ("fit-shard-data-int", lambda: fit(shard_data=1), TypeError, ["shard_data", "True or False"]),
    ("multistart-shard-string", lambda: multistart(shard="no"), TypeError, ["shard", "'no'"]),
    (
        "multistart-progress-string",
        lambda: multistart(progress="no"),
        TypeError,
        ["progress", "True or False"],
    ),
    (
        "fit-resume-without-dir",
        lambda: fit(resume=True),
        ValueError,
        ["resume=True", "no checkpoint_dir", "resume='path/to/run'"],
    ),
    (
        "fit-resume-not-a-path",
        lambda: fit(resume=3),
        TypeError,
        ["resume", "folder", "3"],
    ),
    (
        "fit-checkpoint-every-without-dir",
        lambda: fit(checkpoint_every=5),
        ValueError,
        ["checkpoint_every=5", "needs a checkpoint_dir"],
    ),
    (
        "fit-checkpoint-dir-empty",
        lambda: fit(checkpoint_dir=""),
        ValueError,
        ["checkpoint_dir", "empty string"],
    ),
    (
        "fit-checkpoint-dir-is-a-file",
        lambda: fit(checkpoint_dir=PACKAGE / "__init__.py"),
        ValueError,
        ["checkpoint_dir", "__init__.py", "not a folder"],
    ),
    (
        "fit-checkpoint-dir-not-writable",
        lambda: fit(checkpoint_dir="/proc/jaxdescent-run"),
        ValueError,
        ["checkpoint_dir", "/proc/jaxdescent-run"],
    ),
    ("fit-record-every-0", lambda: fit(record_every=0), ValueError, ["record_every", ">= 1"]),
    ("fit-trace-0", lambda: fit(trace=0), ValueError, ["trace", ">= 1", "got 0"]),
    (
        "fit-trace-and-chunk",
        lambda: fit(steps=20, trace=5, chunk_size=4),
        ValueError,
        ["trace=5", "chunk_size=4"],
    ),
    ("fit-callback-not-callable", lambda: fit(callback=3), TypeError, ["callback", "callable"]),
    (
        "multistart-hyperparams-list",
        lambda: multistart(hyperparams=[("learning_rate", jnp.ones(2))]),
        TypeError,
        ["hyperparams must be a dict", "list"],
    ),
    (
        "multistart-hyperparams-b1-out-of-range",
        lambda: multistart(
            optimizer=jd.optim.adam(0.1), hyperparams={"b1": jnp.array([0.5, 1.5])}
        ),
        ValueError,
        ["hyperparams['b1']", "[0, 1)", "1.5"],
    ),
    (
        "multistart-hyperparams-nan",
        lambda: multistart(hyperparams={"learning_rate": jnp.array([0.1, jnp.nan])}),
        ValueError,
        ["hyperparams['learning_rate']", "nan"],
    ),
    (
        "multistart-hyperparams-schedule-in-jd-rule",
        lambda: multistart(
            optimizer=jd.optim.sgd(jd.schedules.cosine_decay(0.1, 10)),
            hyperparams={"learning_rate": jnp.ones(2)},
        ),
        ValueError,
        ["hyperparams['learning_rate']", "schedule", "cannot be swept"],
    ),
    (
        "multistart-hyperparams-ambiguous",
        lambda: multistart(
            optimizer=optax.chain(jd.optim.sgd(0.1), jd.optim.momentum(0.1)),
            hyperparams={"learning_rate": jnp.ones(2)},
        ),
        ValueError,
        ["hyperparams['learning_rate']", "ambiguous", "at ['0', '1']", "e.g. '0/learning_rate'"],
    ),
    (
        "multistart-hyperparams-static-option",
        lambda: multistart(
            optimizer=optax.inject_hyperparams(jd.optim.rmsprop)(learning_rate=0.1),
            hyperparams={"initial_scale": jnp.ones(2)},
        ),
        ValueError,
        ["hyperparams['initial_scale']", "static option of rmsprop", "cannot be swept"],
    ),
    (
        "multistart-hyperparams-newton-eta",
        lambda: multistart(
            optimizer=jd.optim.newton(), hyperparams={"eta": jnp.array([0.1, 0.5])}
        ),
        ValueError,
        ["hyperparams['eta']", "in [0, 0.25)", "0.5"],
    ),
    (
        "multistart-hyperparams-schedule-injected",
        lambda: multistart(
            optimizer=optax.inject_hyperparams(optax.sgd)(
                learning_rate=optax.cosine_decay_schedule(0.1, 10)
            ),
            hyperparams={"learning_rate": jnp.ones(2)},
        ),
        ValueError,
        ["hyperparams['learning_rate']", "is a schedule", "would be ignored"],
    ),
    (
        "restart-keys-negative",
        lambda: jd.restart_keys(jax.random.key(0), -1),
        ValueError,
        ["restarts", ">= 1", "-1"],
    ),
    (
        "restart-keys-zero",
        lambda: jd.restart_keys(jax.random.key(0), 0),
        ValueError,
        ["restarts", ">= 1", "got 0"],
    ),
    (
        "fit-params-function-leaf",
        lambda: fit(params={"w": jnp.ones(2), "act": jax.nn.relu}),
        TypeError,
        ["['act']", "eqx.partition", "nnx.split"],
    ),
    (
        "fit-params-counter-leaf",
        lambda: fit(params={"w": jnp.ones(2), "count": jnp.zeros((), jnp.int32)}),
        TypeError,
        ["['count']", "int32", "filter it out"],
    ),
]


def test_checkpoint_save_refuses_a_string_leaf(tmp_path):
    with pytest.raises(TypeError, match=r"leaf \['name'\] is str"):
        jd.checkpoint.save(tmp_path / "c.jdc", {"w": jnp.ones(2), "name": "run-1"})


# --- numerics, labels and messages outside the engine -----------------------------------------

DATA_CASES = [
    (
        "softmax-ce-label-minus-one",
        lambda: jd.losses.softmax_cross_entropy(jnp.zeros((3, 4)), jnp.array([0, 1, -1])),
        ValueError,
        ["labels must be integers in [0, 4)", "-1"],
    ),
    (
        "softmax-ce-label-too-large",
        lambda: jd.losses.softmax_cross_entropy(jnp.zeros((3, 4)), jnp.array([0, 1, 4])),
        ValueError,
        ["[0, 4)", "got a label 4"],
    ),
    (
        "binary-ce-label-two",
        lambda: jd.losses.binary_cross_entropy(jnp.zeros(3), jnp.array([0.0, 1.0, 2.0])),
        ValueError,
        ["{0, 1}", "2.0"],
    ),
    (
        "categorical-float-labels",
        lambda: fit_data(
            CAT,
            data=(X, jnp.array([0.0, 1, 2, 3, 0, 1, 2, 3])),
            params=CLASSIFIER.init(jax.random.key(0)),
        ),
        ValueError,
        ["labels must be integers", "astype(jnp.int32)"],
    ),
    (
        "gaussian-learn-scale-string",
        lambda: jd.likelihoods.Gaussian(learn_scale="no"),
        TypeError,
        ["learn_scale", "True or False", "'no'"],
    ),
    (
        "laplace-learn-scale-int",
        lambda: jd.likelihoods.Laplace(learn_scale=1),
        TypeError,
        ["learn_scale", "True or False"],
    ),
    (
        "diagnostics-vector-loss",
        lambda: jd.diagnostics.hessian_spectrum(lambda x: x**2, jnp.ones(3)),
        ValueError,
        ["scalar", "shape (3,)"],
    ),
    (
        "diagnostics-lanczos-iterations-too-many",
        lambda: jd.diagnostics.hessian_spectrum(quad, jnp.ones(2), method="lanczos", iterations=5),
        ValueError,
        ["iterations", "at most", "(2)", "5"],
    ),
    (
        "batch-at-too-large",
        lambda: jd.data.batch_at((X, Y), jax.random.key(0), 0, 9),
        ValueError,
        ["batch_size", "at most", "(8)", "9"],
    ),
    (
        "batch-at-negative-step",
        lambda: jd.data.batch_at((X, Y), jax.random.key(0), -1, 2),
        ValueError,
        ["step", ">= 0", "-1"],
    ),
    (
        "two-moons-zero",
        lambda: jd.problems.two_moons(jax.random.key(0), 0),
        ValueError,
        ["n", ">= 1", "0"],
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "fragments"),
    [c[1:] for c in ENGINE_OPTION_CASES + DATA_CASES],
    ids=[c[0] for c in ENGINE_OPTION_CASES + DATA_CASES],
)
def test_bad_engine_options_data_labels_and_diagnostics_input(
    no_loop_compile, call, error, fragments
):
    with pytest.raises(error) as excinfo:
        call()
    assert_clear(excinfo, fragments)
