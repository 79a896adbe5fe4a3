"""``jaxdescent compare``: several update rules on one test function, from one start.

:func:`run` minimises a function of two variables from :data:`jaxdescent.problems.CATALOGUE`
with each rule in turn (in 64-bit floats), prints steps, status, time of the compiled run and
final loss, and draws the paths over the contour lines and the losses per step.

The plain saddle ``x^2 - y^2`` is unbounded below, so every rule that leaves it runs off
towards minus infinity; ``compare`` shows ``saddle`` as ``saddle_quartic``,
``x^2 - y^2 + y^4 / 4``: the same saddle at the origin with two minima to arrive at, where
plain (textbook) Newton stops on the saddle and the other rules escape it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jaxdescent._terminal import print_table, shown, use_agg

__all__ = [
    "OPTIMIZER_NAMES",
    "SECOND_ORDER",
    "default_learning_rate",
    "default_optimizers",
    "problem_names",
    "run",
]

OPTIMIZER_NAMES = (
    "sgd",
    "momentum",
    "nesterov",
    "adagrad",
    "rmsprop",
    "adam",
    "newton",
    "plain_newton",
    "newton_cg",
    "saddle_free_newton",
)
SECOND_ORDER = frozenset({"newton", "plain_newton", "newton_cg", "saddle_free_newton"})
# Problems shown through another catalogue entry (see the module docstring).
ALIASES = {"saddle": "saddle_quartic"}
DEFAULT_OPTIMIZERS = ("sgd", "momentum", "adam", "newton")
_PROBLEM_OPTIMIZERS = {
    "saddle_quartic": ("sgd", "adam", "plain_newton", "newton", "saddle_free_newton"),
}

# Learning rates that work from each problem's standard start within about 1,000 steps
# (chosen from a sweep: stable, and close to the fastest stable rate). Newton-type rules
# need none.
_DEFAULT_LR: dict[str, float] = {
    "sgd": 1e-3,
    "momentum": 1e-3,
    "nesterov": 1e-4,
    "adagrad": 0.1,
    "rmsprop": 1e-3,
    "adam": 1e-2,
}
# fmt: off
_PROBLEM_LR: dict[str, dict[str, float]] = {
    "quadratic": {"sgd": 0.3, "momentum": 0.3, "nesterov": 0.1, "adagrad": 1.0,
                  "rmsprop": 0.1, "adam": 0.1},
    "rosenbrock": {"sgd": 2e-3, "momentum": 1e-2, "nesterov": 3e-4, "adagrad": 1.0,
                   "rmsprop": 1e-2, "adam": 0.1},
    "himmelblau": {"sgd": 1e-2, "momentum": 1e-2, "nesterov": 3e-3, "adagrad": 1.0,
                   "rmsprop": 0.1, "adam": 0.1},
    "saddle_quartic": {"sgd": 0.1, "momentum": 0.1, "nesterov": 0.03, "adagrad": 0.3,
                       "rmsprop": 0.03, "adam": 0.03},
    "monkey_saddle": {"sgd": 1e-3, "momentum": 1e-3, "nesterov": 1e-4, "adagrad": 0.03,
                      "rmsprop": 3e-3, "adam": 3e-3},
    "six_hump_camel": {"sgd": 0.03, "momentum": 0.03, "nesterov": 0.01, "adagrad": 0.3,
                       "rmsprop": 0.03, "adam": 0.03},
    "rastrigin": {"sgd": 1e-3, "momentum": 1e-3, "nesterov": 1e-3, "adagrad": 0.3,
                  "rmsprop": 0.01, "adam": 0.01},
    "beale": {"sgd": 0.01, "momentum": 0.03, "nesterov": 3e-3, "adagrad": 1.0,
              "rmsprop": 3e-3, "adam": 0.1},
}
# fmt: on


def optimizers() -> dict[str, Callable[[float | None], Any]]:
    """Name -> factory taking a learning rate (ignored by the second-order rules)."""
    import jaxdescent as jd

    return {
        "sgd": lambda lr: jd.optim.sgd(lr),
        "momentum": lambda lr: jd.optim.momentum(lr),
        "nesterov": lambda lr: jd.optim.momentum(lr, form="nesterov"),
        "adagrad": lambda lr: jd.optim.adagrad(lr),
        "rmsprop": lambda lr: jd.optim.rmsprop(lr),
        "adam": lambda lr: jd.optim.adam(lr),
        "newton": lambda lr: jd.optim.newton(line_search=True),
        # the textbook step theta - H^-1 g: no damping, no line search
        "plain_newton": lambda lr: jd.optim.newton(line_search=False),
        "newton_cg": lambda lr: jd.optim.newton_cg(),
        "saddle_free_newton": lambda lr: jd.optim.saddle_free_newton(),
    }


def problem_names() -> list[str]:
    """The problems ``compare`` accepts: the catalogue's names."""
    from jaxdescent import problems

    return list(problems.CATALOGUE)


def default_learning_rate(problem: str, optimizer: str) -> float | None:
    """The learning rate ``jaxdescent compare`` uses by default (None: the rule needs none)."""
    if optimizer in SECOND_ORDER:
        return None
    problem = ALIASES.get(problem, problem)
    return _PROBLEM_LR.get(problem, {}).get(optimizer, _DEFAULT_LR[optimizer])


def default_optimizers(problem: str) -> tuple[str, ...]:
    """The rules ``compare`` runs when none are named (the saddle adds plain Newton)."""
    return _PROBLEM_OPTIMIZERS.get(ALIASES.get(problem, problem), DEFAULT_OPTIMIZERS)


def run(
    problem: str = "rosenbrock",
    names: Sequence[str] | None = None,
    *,
    start: tuple[float, float] | None = None,
    steps: int = 2000,
    tol: float = 1e-6,
    lr: float | None = None,
    out: str | Path = "jaxdescent-output",
) -> list[dict[str, Any]]:
    """Run each rule in ``names`` on ``problem``; print the table, write the two pictures.

    Args:
      problem: a catalogue name (``saddle`` is shown as ``saddle_quartic``).
      names: rules from :data:`OPTIMIZER_NAMES` (default :func:`default_optimizers`).
      start: the starting point (default: the problem's standard start).
      steps: step budget per rule.
      tol: stop when the gradient norm falls below this.
      lr: learning rate of every first-order rule (default :func:`default_learning_rate`).
      out: folder for ``compare_<problem>_paths.png`` and ``compare_<problem>_losses.png``.

    Returns:
      One dict per rule: name, lr, steps, status, seconds, final loss, final point.
    """
    use_agg()
    import jax

    with jax.enable_x64(True):
        return _run_x64(problem, names, start, steps, tol, lr, Path(out))


def _run_x64(problem, names, start, steps, tol, lr, out):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxdescent as jd

    shown_as = ALIASES.get(problem, problem)
    fn = jd.problems.get(shown_as)
    start = tuple(start) if start is not None else fn.start
    x0 = jnp.asarray(start, dtype=jnp.float64)
    names = list(names) if names else list(default_optimizers(problem))
    factories = optimizers()
    if shown_as != problem:
        print(
            f"jaxdescent compare: {problem} is shown as {shown_as} (the same saddle, bounded "
            "below, so the rules that escape it have a minimum to arrive at)"
        )
    print(
        f"jaxdescent compare: {shown_as} from ({start[0]:g}, {start[1]:g}), at most "
        f"{steps} steps, stop when |gradient| < {tol:g} (float64)"
    )
    results, paths, curves = [], {}, {}
    for name in names:
        rate = None if name in SECOND_ORDER else lr or default_learning_rate(shown_as, name)
        opt = factories[name](rate)
        # The first call compiles; the second (cached) one is timed.
        jd.fit(fn, x0, opt, steps=steps, tol=tol)
        t0 = time.perf_counter()
        res = jd.fit(fn, x0, opt, steps=steps, tol=tol)
        jax.block_until_ready(res)
        seconds = time.perf_counter() - t0
        taken = int(res.steps_taken)
        label = name if rate is None else f"{name} (lr {rate:g})"
        # the points the run visited, recorded by fit itself (one chunk per step)
        paths[label] = np.asarray(jd.fit(fn, x0, opt, steps=steps, tol=tol, trace=1).trace)
        curves[label] = np.asarray(res.losses)
        end = np.asarray(res.params)
        results.append(
            {
                "optimizer": name,
                "lr": rate,
                "steps": taken,
                "status": jd.Status(int(res.status)).name.lower().replace("_", " "),
                "seconds": seconds,
                "final_loss": float(res.final_loss),
                "final_x": (float(end[0]), float(end[1])),
            }
        )
    print()
    print_table(
        ("optimizer", "lr", "steps", "status", "time (ms)", "final loss", "final x"),
        [
            (
                r["optimizer"],
                "-" if r["lr"] is None else f"{r['lr']:g}",
                str(r["steps"]),
                r["status"],
                f"{1e3 * r['seconds']:.1f}",
                f"{r['final_loss']:.3e}",
                f"({r['final_x'][0]:.5g}, {r['final_x'][1]:.5g})",
            )
            for r in results
        ],
    )

    from jaxdescent import plotting
    from jaxdescent._plotkit import pyplot

    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    where = f"from ({start[0]:g}, {start[1]:g})"
    figures = {
        f"compare_{problem}_paths.png": plotting.contour_paths(
            fn, paths, title=f"{shown_as}: paths {where}"
        ),
        f"compare_{problem}_losses.png": plotting.loss_curves(
            curves, title=f"{shown_as}: loss per step {where}"
        ),
    }
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
    print("\n(time: one compiled run, after a first call that compiled it)")
    print(f"wrote {', '.join(figures)} to {shown(out)}")
    return results
