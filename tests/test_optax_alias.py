"""optax's own conformance suite (``optax._src.alias_test.AliasTest``) run on jaxdescent's
first-order rules.

optax ships the tests its own optimizers must pass: convergence on a parabola and on
Rosenbrock's function in float32 and complex64 with no recompile on the second step,
``tree_map_params`` on the state, extra arguments accepted, the same updates and state when
wrapped in ``optax.inject_hyperparams``, the updates' dtype kept, a state whose shapes and
dtypes are stable across a ``lax.cond``, and ``optax.MultiSteps``. Each test method is taken
from optax's module as written, with its optimizer lookup pointed at ``jaxdescent.optim``,
and run on every rule configuration below crossed with optax's own grid of dtypes and
targets, so a change in optax's suite reaches these rules too.
"""

from __future__ import annotations

import types

import jax.numpy as jnp
import pytest

import jaxdescent as jd

alias_test = pytest.importorskip("optax._src.alias_test")

# (id, rule name in jaxdescent.optim, keyword arguments): the settings follow optax's own list
# (_OPTIMIZERS_UNDER_TEST); each converges within the 10,000 steps of test_optimization on
# both targets in both dtypes (but one case, SKIPPED_CASES)
CONFIGS = [
    ("sgd", "sgd", {"learning_rate": 2e-3}),
    ("momentum-ema", "momentum", {"learning_rate": 1e-2, "beta": 0.9}),
    ("momentum-classical", "momentum", {"learning_rate": 1e-3, "beta": 0.9, "form": "classical"}),
    ("momentum-nesterov", "momentum", {"learning_rate": 5e-4, "beta": 0.9, "form": "nesterov"}),
    ("adagrad", "adagrad", {"learning_rate": 1.0}),
    ("rmsprop", "rmsprop", {"learning_rate": 5e-3}),
    (
        "rmsprop-centered-nesterov",
        "rmsprop",
        {"learning_rate": 5e-3, "centered": True, "momentum": 0.9, "nesterov": True},
    ),
    ("adam", "adam", {"learning_rate": 1e-1}),
    ("adamw", "adamw", {"learning_rate": 1e-1}),
]

# single cases left out, with the reason
SKIPPED_CASES = {
    ("test_optimization", "sgd", "rosenbrock-complex64"): (
        "plain gradient descent needs more than the 10,000 steps this test allots on the "
        "complex Rosenbrock function (optax.sgd(lr) ends as far away as jd.optim.sgd(lr), "
        "for lr from 1e-3 to 4e-3: 0.1 to 1.7); optax's own list has sgd with momentum only"
    ),
}

# optax tests that do not apply to jaxdescent's rules, with the reason
NOT_APPLICABLE = {
    "test_explicit_dtype": (
        "tests optax's accumulator_dtype / mu_dtype options; jaxdescent's rules keep their "
        "state in the params' dtype and have no such option"
    ),
}


def _get_opt(self, opt_name):
    """optax's ``_get_opt`` for this module: the rule of that name in ``jaxdescent.optim``."""
    del self
    return getattr(jd.optim, opt_name)


def _optax_tests() -> dict[str, tuple[types.FunctionType, list[dict]]]:
    """optax's test methods by name, each with its grid of parameters other than the
    optimizer (targets, dtypes), read from the cases ``absl.parameterized`` generated."""
    tests: dict[str, tuple[types.FunctionType, list[dict]]] = {}
    for attr, member in vars(alias_test.AliasTest).items():
        original = getattr(member, "__wrapped__", None)
        if not attr.startswith("test_") or original is None:
            continue
        cells = dict(zip(member.__code__.co_freevars, member.__closure__ or ()))
        params = dict(cells["testcase_params"].cell_contents)
        rest = {k: v for k, v in params.items() if k not in ("opt_name", "opt_kwargs")}
        _, grid = tests.setdefault(original.__name__, (original, []))
        if rest not in grid:
            grid.append(rest)
    return tests


OPTAX_TESTS = _optax_tests()


def _with_jaxdescent_rules(test: types.FunctionType) -> types.FunctionType:
    """``test`` with the module-level names it reads rebound: ``_get_opt`` finds
    jaxdescent's rules. optax's module itself is left as it is."""
    names = {**test.__globals__, "_get_opt": _get_opt}
    return types.FunctionType(
        test.__code__, names, test.__name__, test.__defaults__, test.__closure__
    )


def _grid_id(params: dict) -> list[str]:
    parts = []
    for value in params.values():
        name = getattr(value, "__name__", None) or str(jnp.dtype(value))
        parts.append(name.removeprefix("_setup_"))
    return parts


CASES = [
    pytest.param(
        test_name,
        opt_name,
        kwargs,
        grid,
        id="-".join([test_name.removeprefix("test_"), config, *_grid_id(grid)]),
        marks=[
            pytest.mark.skip(reason=reason)
            for (skipped, name, grid_id), reason in SKIPPED_CASES.items()
            if (skipped, name, grid_id) == (test_name, config, "-".join(_grid_id(grid)))
        ],
    )
    for test_name, (_, grids) in sorted(OPTAX_TESTS.items())
    if test_name not in NOT_APPLICABLE
    for config, opt_name, kwargs in CONFIGS
    for grid in grids
]


def test_optax_suite_was_found():
    """The harness found optax's tests (a renamed module or decorator would otherwise leave
    nothing to run and this file would pass vacuously)."""
    expected = {
        "test_optimization",
        "test_optimizers_accept_extra_args",
        "test_optimizers_can_be_wrapped_in_inject_hyperparams",
        "test_preserve_dtype",
        "test_state_shape_dtype_shard_stability",
        "test_gradient_accumulation",
    }
    assert expected <= set(OPTAX_TESTS), sorted(OPTAX_TESTS)
    assert len(CASES) >= len(expected) * len(CONFIGS)
    skipped = [case for case in CASES if case.marks]
    assert len(skipped) == len(SKIPPED_CASES)  # each skip names a case that exists


@pytest.mark.parametrize(("test_name", "opt_name", "opt_kwargs", "grid"), CASES)
def test_optax_alias_suite(test_name, opt_name, opt_kwargs, grid):
    test, _ = OPTAX_TESTS[test_name]
    host = alias_test.AliasTest()  # for self.subTest, self.assertEmpty, ...
    _with_jaxdescent_rules(test)(host, opt_name=opt_name, opt_kwargs=opt_kwargs, **grid)


@pytest.mark.parametrize("test_name", sorted(NOT_APPLICABLE))
def test_optax_alias_suite_not_applicable(test_name):
    assert test_name in OPTAX_TESTS  # still in optax's suite: the reason below still matters
    pytest.skip(NOT_APPLICABLE[test_name])
