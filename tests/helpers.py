"""The rules under test and the problems they run on: one catalogue for every test file.

:data:`RULES` maps a name to a :class:`Rule`, a factory call with settings for short runs on
small, well-scaled problems: from the start of the catalogue's ``quadratic`` every rule is
within a few hundredths of the minimum after a hundred steps. A test that runs "every rule" runs the names :func:`names` gives it, so a
rule added here is tested everywhere at once (as optax's ``_OPTIMIZERS_UNDER_TEST`` and
optimistix's ``tests/helpers.py``). A test that needs other settings (a long run down
Rosenbrock's valley, a stress case) overrides them by keyword,
``RULES["adam"](learning_rate=1e-3)``, and says why beside the override.

A name is the factory's name for its default form (``"momentum"`` is the EMA form,
``"newton"`` the trust region), with a suffix for another form (``"momentum-classical"``,
``"newton-line-search"``). Each rule says what its ``update`` needs (:data:`NEEDS`):

- ``"grads"``: the gradient only (first-order rules);
- ``"value_fn"``: the loss as a function of the params too (line searches, Newton's family;
  ``jd.fit`` and ``jd.solve`` pass it);
- ``"likelihood"``: a likelihood loss from ``jd.losses.nll`` (Gauss-Newton and
  Levenberg-Marquardt read its model, likelihood and targets).

The problems are :data:`jaxdescent.problems.CATALOGUE`'s: 2-D functions with their critical
points and a standard start. :data:`SMALL_PROBLEMS` are smooth, bounded below, and downhill
from their start lies a listed minimum, which a convergent rule (at rates that suit the
problem) reaches; :func:`start` and :func:`distance_to_minimum` read an entry.

To add a rule, add a line to :data:`RULES` (a new form of an existing rule too: the tests that
run every rule then cover it). To add a problem, add it to ``jaxdescent.problems.CATALOGUE``
with its critical points (``tests/test_problems.py`` checks them), and to
:data:`SMALL_PROBLEMS` if it is one of those (``tests/test_optim.py`` then runs every
first-order rule on it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdescent import optim
from jaxdescent.problems import CATALOGUE

NEEDS = ("grads", "value_fn", "likelihood")


@dataclasses.dataclass(frozen=True)
class Rule:
    """A rule under test: ``rule(**overrides)`` builds it from ``factory(**kwargs)``."""

    factory: Callable[..., optax.GradientTransformationExtraArgs]
    kwargs: dict[str, Any]
    needs: str = "grads"

    def __call__(self, **overrides: Any) -> optax.GradientTransformationExtraArgs:
        return self.factory(**{**self.kwargs, **overrides})


def _steepest_descent_with_backtracking(**kwargs):
    """The line search alone scales a descent direction; after ``sgd(1.0)`` it is steepest
    descent with an Armijo step (its docstring's own use)."""
    return optax.chain(optim.sgd(1.0), optim.backtracking_line_search(**kwargs))


RULES: dict[str, Rule] = {
    "sgd": Rule(optim.sgd, {"learning_rate": 0.5}),
    "momentum": Rule(optim.momentum, {"learning_rate": 0.5, "beta": 0.9}),  # form="ema"
    # the classical and Nesterov forms at the EMA form's scale: learning rate 0.5 (1 - beta)
    "momentum-classical": Rule(
        optim.momentum, {"learning_rate": 0.05, "beta": 0.9, "form": "classical"}
    ),
    "momentum-nesterov": Rule(
        optim.momentum, {"learning_rate": 0.05, "beta": 0.9, "form": "nesterov"}
    ),
    "adagrad": Rule(optim.adagrad, {"learning_rate": 0.5}),
    "rmsprop": Rule(optim.rmsprop, {"learning_rate": 0.05}),
    "rmsprop-centered-momentum": Rule(
        optim.rmsprop, {"learning_rate": 0.05, "centered": True, "momentum": 0.9}
    ),
    "rmsprop-centered-nesterov": Rule(
        optim.rmsprop,
        {"learning_rate": 0.05, "centered": True, "momentum": 0.9, "nesterov": True},
    ),
    "adam": Rule(optim.adam, {"learning_rate": 0.1}),
    "adamw": Rule(optim.adamw, {"learning_rate": 0.1}),
    "backtracking_line_search": Rule(_steepest_descent_with_backtracking, {}, "value_fn"),
    "newton": Rule(optim.newton, {}, "value_fn"),  # trust region
    "newton-line-search": Rule(optim.newton, {"line_search": True}, "value_fn"),
    # unguarded full steps: one step to a quadratic's minimum; elsewhere to whichever critical
    # point is near, a maximum or a saddle too
    "newton-textbook": Rule(optim.newton, {"damping": 0.0, "line_search": False}, "value_fn"),
    "saddle_free_newton": Rule(optim.saddle_free_newton, {}, "value_fn"),
    "newton_cg": Rule(optim.newton_cg, {}, "value_fn"),
    "gauss_newton": Rule(optim.gauss_newton, {}, "likelihood"),
    "levenberg_marquardt": Rule(optim.levenberg_marquardt, {}, "likelihood"),
}
"""Every rule under test by name; see the module's docstring."""


def names(*needs: str, exclude: tuple[str, ...] = ()) -> list[str]:
    """The names of the rules whose update needs one of ``needs`` (every rule if none is
    given), in :data:`RULES`' order, less those in ``exclude``."""
    unknown = set(needs) - set(NEEDS) or set(exclude) - set(RULES)
    if unknown:
        raise ValueError(f"unknown needs or rule names: {sorted(unknown)}")
    return [n for n, r in RULES.items() if (not needs or r.needs in needs) and n not in exclude]


# smooth, bounded below, and downhill from the standard start lies a listed minimum
SMALL_PROBLEMS = ("quadratic", "rosenbrock", "himmelblau")


def start(name: str, dtype: Any = jnp.float32) -> jax.Array:
    """The catalogue entry's standard start, as an array."""
    return jnp.asarray(CATALOGUE[name].start, dtype)


def distance_to_minimum(name: str, x: Any) -> float:
    """The largest coordinate difference between ``x`` and the nearest of the entry's minima."""
    minima = np.asarray([p for p, kind in CATALOGUE[name].critical_points if kind == "minimum"])
    return float(np.min(np.max(np.abs(minima - np.asarray(x, np.float64)), axis=-1)))
