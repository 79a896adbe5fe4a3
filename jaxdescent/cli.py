"""The ``jaxdescent`` command: ``demo``, ``compare`` and ``bench``.

``jaxdescent demo`` trains a small MLP classifier on two moons from many random starts at
once and writes plots; ``jaxdescent compare`` runs several update rules on a test function
and draws their paths; ``jaxdescent bench`` runs the benchmark suite of a source checkout.
Run any of them with ``--help``. ``python -m jaxdescent`` is the same command.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["main"]

DEFAULT_OUT = "jaxdescent-output"


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line on stderr (no usage block) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# --- argument types: each raises ArgumentTypeError with the expected form ------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _point(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 2 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(
            f"expected two numbers separated by a comma such as -1.2,1, got {text!r}"
        )
    return values


def _hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(p) for p in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(
            f"expected positive layer widths separated by commas such as 16,16, got {text!r}"
        )
    return sizes


# --- compare: optimizers and their default learning rates ----------------------------------


def _optimizers() -> dict[str, Callable[[float | None], Any]]:
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
        "newton_cg": lambda lr: jd.optim.newton_cg(),
        "saddle_free_newton": lambda lr: jd.optim.saddle_free_newton(),
    }


OPTIMIZER_NAMES = (
    "sgd",
    "momentum",
    "nesterov",
    "adagrad",
    "rmsprop",
    "adam",
    "newton",
    "newton_cg",
    "saddle_free_newton",
)
SECOND_ORDER = frozenset({"newton", "newton_cg", "saddle_free_newton"})

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
    "saddle": {"sgd": 0.1, "momentum": 0.1, "nesterov": 0.01, "adagrad": 0.1,
               "rmsprop": 0.01, "adam": 0.01},
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


def default_learning_rate(problem: str, optimizer: str) -> float | None:
    """The learning rate ``jaxdescent compare`` uses by default (None: the rule needs none)."""
    if optimizer in SECOND_ORDER:
        return None
    return _PROBLEM_LR.get(problem, {}).get(optimizer, _DEFAULT_LR[optimizer])


def _optimizer_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(
            f"expected optimizer names separated by commas; choose from {', '.join(OPTIMIZER_NAMES)}"
        )
    for name in names:
        if name not in OPTIMIZER_NAMES:
            raise argparse.ArgumentTypeError(
                f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZER_NAMES)}"
            )
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"an optimizer is listed twice in {text!r}")
    return names


def _problem_names() -> list[str]:
    from jaxdescent import problems

    return list(problems.CATALOGUE)


# --- the parser ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jaxdescent",
        description="Gradient-based optimisation in JAX: run the demo, compare update rules "
        "on test functions, or run the benchmarks.",
        epilog="Run 'jaxdescent COMMAND --help' for each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = commands.add_parser(
        "demo",
        help="train an MLP on two moons from many random restarts at once; write plots",
        description="Train an MLP classifier (Bernoulli negative log-likelihood) on two "
        "moons, from RESTARTS random initialisations at once in one vmapped program, with "
        "Adam and a cyclic learning rate on mini-batches. Prints the best, median and worst "
        "final loss, the best restart's accuracy and the restarts that failed, and writes "
        "loss curves, the best decision boundary and a histogram of final losses to OUT. "
        "The data are generated: nothing is downloaded.",
    )
    demo.add_argument(
        "--restarts",
        type=_positive_int,
        default=256,
        help="random restarts, all trained at once (default 256)",
    )
    demo.add_argument(
        "--steps",
        type=_positive_int,
        default=2000,
        help="optimisation steps per restart (default 2000)",
    )
    demo.add_argument(
        "--seed",
        type=_nonnegative_int,
        default=0,
        help="seed for the data, initialisations and batches (default 0)",
    )
    demo.add_argument(
        "--hidden",
        type=_hidden,
        default=(8,),
        help="hidden layer widths, comma-separated (default 8: one layer of 8 "
        "ReLU units, small enough that some restarts get stuck)",
    )
    demo.add_argument(
        "--batch-size", type=_positive_int, default=32, help="mini-batch size (default 32)"
    )
    demo.add_argument(
        "--points",
        type=_positive_int,
        default=512,
        help="training points, and as many held-out test points (default 512)",
    )
    demo.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"folder for the plots and summary.json (default ./{DEFAULT_OUT})",
    )
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    demo.set_defaults(run=_demo)

    compare = commands.add_parser(
        "compare",
        help="run several update rules on a test function; table and contour plot",
        description="Minimise a test function of two variables with each optimizer from the "
        "same start; print steps, time and final loss, and draw the paths over the contour "
        "lines (gradient descent zig-zags along a valley, Newton's method cuts across). "
        "Runs in 64-bit floats.",
    )
    compare.add_argument(
        "--problem",
        default="rosenbrock",
        metavar="NAME",
        help="test function (default rosenbrock); one of: " + ", ".join(_problem_names()),
    )
    compare.add_argument(
        "--optimizers",
        type=_optimizer_list,
        default=["sgd", "momentum", "adam", "newton"],
        metavar="A,B,...",
        help="comma-separated (default sgd,momentum,adam,newton); from: "
        + ", ".join(OPTIMIZER_NAMES),
    )
    compare.add_argument(
        "--start",
        type=_point,
        default=None,
        metavar="X,Y",
        help="starting point (default: the problem's standard start); write "
        "a negative first value as --start=-1.2,1 or --start -1.2,1",
    )
    compare.add_argument(
        "--steps",
        type=_positive_int,
        default=2000,
        help="step budget per optimizer (default 2000)",
    )
    compare.add_argument(
        "--tol",
        type=_positive_float,
        default=1e-6,
        help="stop when the gradient norm falls below this (default 1e-6)",
    )
    compare.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help="learning rate for every first-order rule (default: a tuned "
        "value per optimizer and problem); Newton-type rules need none",
    )
    compare.add_argument(
        "--out", default=DEFAULT_OUT, help=f"folder for the plots (default ./{DEFAULT_OUT})"
    )
    compare.set_defaults(run=_compare)

    bench = commands.add_parser(
        "bench",
        help="run the benchmark suite (python -m benchmarks) from a source checkout",
        description="Run the benchmark suite against hand-written loops and peer libraries "
        "(the benchmarks/ folder of a source checkout; see benchmarks/RESULTS.md). Options "
        "after --quick are passed on to 'python -m benchmarks' (e.g. --cases 1,2).",
    )
    bench.add_argument("--quick", action="store_true", help="smaller sweeps, fewer repeats")
    bench.set_defaults(run=_bench)
    return parser


def _version() -> str:
    try:
        from jaxdescent import __version__
    except Exception:  # pragma: no cover - a broken install
        return "unknown"
    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``jaxdescent`` command with ``argv`` (default ``sys.argv[1:]``); the exit code."""
    parser = build_parser()
    argv = _join_negative_points(list(sys.argv[1:] if argv is None else argv))
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "bench":
            sub = f"jaxdescent {args.command}" if args.command else "jaxdescent"
            _Parser(prog=sub).error(f"unrecognized arguments: {' '.join(extra)}")
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        if args.command == "compare" and args.problem not in _problem_names():
            _Parser(prog="jaxdescent compare").error(
                f"unknown problem {args.problem!r}; choose from {', '.join(_problem_names())}"
            )
    except SystemExit as exit_:
        return _code(exit_)
    args.extra = extra
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _join_negative_points(argv: list[str]) -> list[str]:
    """Let ``--start -1.2,1`` through: argparse would read ``-1.2,1`` as an option."""
    joined: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--start" and i + 1 < len(argv) and re.match(r"-\.?\d", argv[i + 1]):
            joined.append(f"--start={argv[i + 1]}")
            i += 2
        else:
            joined.append(argv[i])
            i += 1
    return joined


def _code(exit_: SystemExit) -> int:
    if exit_.code is None:
        return 0
    return exit_.code if isinstance(exit_.code, int) else 1


# --- demo ----------------------------------------------------------------------------------


def _use_agg() -> None:
    """Draw to files only: no window, no display needed."""
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")


def _demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    _use_agg()
    try:
        from jaxdescent import plotting

        plotting._pyplot()
    except ImportError as err:
        print(f"jaxdescent demo: error: {err}", file=sys.stderr)
        return 1
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxdescent as jd

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    noise = 0.2

    @jax.jit
    def make_data(seed):
        # One compiled program instead of many small eager operations.
        k_train, k_test, k_run = jax.random.split(jax.random.key(seed), 3)
        train = jd.problems.two_moons(k_train, n=args.points, noise=noise)
        test = jd.problems.two_moons(k_test, n=args.points, noise=noise)
        return train, test, k_run

    (x, y), (x_test, y_test), k_run = make_data(args.seed)
    batch_size = min(args.batch_size, args.points)
    sizes = [2, *args.hidden, 1]
    model = jd.models.mlp(sizes)
    loss = jd.losses.nll(model.apply, jd.likelihoods.Bernoulli())
    period = max(1, min(250, args.steps // 8))
    low, high = 1e-3, 3e-2
    opt = jd.optim.adam(jd.schedules.cyclic(low, high, step_size=period))

    print(
        f"jaxdescent demo: {args.restarts} random restarts of an MLP {sizes} on two moons "
        f"({args.points} training and {args.points} test points, noise {noise})\n"
        f"  Bernoulli negative log-likelihood, Adam with a cyclic learning rate {low:g} to "
        f"{high:g} (period {2 * period} steps), mini-batches of {batch_size}, "
        f"{args.steps} steps; one vmapped program",
        flush=True,
    )
    t0 = time.perf_counter()
    res = jd.multistart(
        model.init,
        loss,
        opt,
        data=(x, y),
        restarts=args.restarts,
        steps=args.steps,
        batch_size=batch_size,
        key=k_run,
        progress=not args.no_progress,
    )
    final = np.asarray(res.final_losses, dtype=float)
    seconds = time.perf_counter() - t0

    def accuracy(params, xs, ys):
        return jnp.mean(jd.likelihoods.Bernoulli().predict(model.apply(params, xs)[:, 0]) == ys)

    train_acc = np.asarray(jax.jit(jax.vmap(accuracy, in_axes=(0, None, None)))(res.params, x, y))
    status = np.asarray(res.status)
    nonfinite = (status == jd.Status.NONFINITE) | ~np.isfinite(final)
    ok = ~nonfinite
    best = res.best_index
    best_loss = final[best]
    stuck = ok & (final > 2.0 * best_loss + 0.01)
    best_params = jax.jit(lambda p, i: jax.tree.map(lambda a: a[i], p))(res.params, best)
    test_acc = float(jax.jit(accuracy)(best_params, x_test, y_test))
    rows = [
        ("best final loss", f"{best_loss:.4f}", f"restart {best}"),
        ("median final loss", f"{np.median(final[ok]):.4f}" if ok.any() else "-", ""),
        ("worst final loss", f"{np.max(final[ok]):.4f}" if ok.any() else "-", ""),
        (
            "accuracy of the best",
            f"{100 * train_acc[best]:.1f}%",
            f"train; {100 * test_acc:.1f}% on held-out points",
        ),
        (
            "restarts that failed",
            f"{int(nonfinite.sum() + stuck.sum())} of {args.restarts}",
            f"{int(nonfinite.sum())} non-finite, {int(stuck.sum())} stuck above 2 x best + 0.01",
        ),
        (
            "time",
            f"{seconds:.1f} s",
            f"compile and run; {args.restarts * args.steps / seconds:,.0f} restart-steps/s",
        ),
    ]
    print()
    _print_table(("", "value", "note"), rows)

    plt = plotting._pyplot()
    files = {
        "loss_curves.png": plotting.loss_curves(
            np.asarray(res.losses),
            best=best,
            smooth=min(25, args.steps),
            title=f"{args.restarts} restarts: mini-batch loss (moving average of 25 steps)",
            ylabel="Bernoulli NLL",
        ),
        "decision_boundary.png": plotting.decision_boundary(
            model.apply,
            best_params,
            x,
            y,
            title=f"best restart ({best}): train {100 * train_acc[best]:.1f}%, "
            f"test {100 * test_acc:.1f}%",
        ),
        "final_losses.png": plotting.restart_histogram(
            final, title=f"final training loss of {args.restarts} restarts"
        ),
    }
    for name, fig in files.items():
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
    summary = {
        "restarts": args.restarts,
        "steps": args.steps,
        "seed": args.seed,
        "sizes": sizes,
        "best_index": best,
        "final_loss": {
            "best": float(best_loss),
            "median": float(np.median(final[ok])) if ok.any() else None,
            "worst": float(np.max(final[ok])) if ok.any() else None,
        },
        "best_accuracy": {"train": float(train_acc[best]), "test": test_acc},
        "failed": {"nonfinite": int(nonfinite.sum()), "stuck": int(stuck.sum())},
        "seconds": {"train": seconds, "total": time.perf_counter() - start},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {', '.join(files)} and summary.json to {_shown(out)}")
    return 0


def _shown(path: Path) -> str:
    text = os.path.relpath(path) if not path.is_absolute() else str(path)
    return text if text.startswith((".", "/")) else f"./{text}"


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)).rstrip())
    print(line)
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


# --- compare -------------------------------------------------------------------------------


def _compare(args: argparse.Namespace) -> int:
    _use_agg()
    import jax

    with jax.enable_x64(True):
        return _compare_x64(args)


def _compare_x64(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxdescent as jd

    problem = jd.problems.get(args.problem)
    start = args.start if args.start is not None else problem.start
    x0 = jnp.asarray(start, dtype=jnp.float64)
    factories = _optimizers()
    print(
        f"jaxdescent compare: {args.problem} from ({start[0]:g}, {start[1]:g}), at most "
        f"{args.steps} steps, stop when |gradient| < {args.tol:g} (float64)"
    )
    rows, paths, curves = [], {}, {}
    for name in args.optimizers:
        lr = args.lr if args.lr is not None else default_learning_rate(args.problem, name)
        if name in SECOND_ORDER:
            lr = None
        opt = factories[name](lr)
        # The first call compiles; the second (cached) one is timed.
        jd.fit(problem.fn, x0, opt, steps=args.steps, tol=args.tol)
        t0 = time.perf_counter()
        res = jd.fit(problem.fn, x0, opt, steps=args.steps, tol=args.tol)
        jax.block_until_ready(res)
        seconds = time.perf_counter() - t0
        taken = int(res.steps_taken)
        path = _path(problem.fn, x0, opt, taken)
        label = name if lr is None else f"{name} (lr {lr:g})"
        paths[label] = path
        curves[label] = np.asarray(res.losses)
        status = jd.Status(int(res.status)).name.lower().replace("_", " ")
        end = np.asarray(res.params)
        rows.append(
            (
                name,
                "-" if lr is None else f"{lr:g}",
                str(taken),
                status,
                f"{1e3 * seconds:.1f}",
                f"{float(res.final_loss):.3e}",
                f"({end[0]:.5g}, {end[1]:.5g})",
            )
        )
    print()
    _print_table(
        ("optimizer", "lr", "steps", "status", "time (ms)", "final loss", "final x"), rows
    )

    from jaxdescent import plotting

    plt = plotting._pyplot()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig_paths = plotting.contour_paths(
        problem, paths, title=f"{args.problem}: paths from ({start[0]:g}, {start[1]:g})"
    )
    fig_losses = plotting.loss_curves(curves, title=f"{args.problem}: loss per step")
    written = [f"compare_{args.problem}_paths.png", f"compare_{args.problem}_losses.png"]
    for name, fig in zip(written, (fig_paths, fig_losses)):
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
    print("\n(time: one compiled run, after a first call that compiled it)")
    print(f"wrote {', '.join(written)} to {_shown(out)}")
    return 0


def _path(fn: Callable, x0: Any, opt: Any, steps: int):
    """The iterates ``x_0 .. x_steps`` of ``opt`` on ``fn`` (the points ``fit`` visits)."""
    import jax
    import numpy as np

    import jaxdescent as jd

    step = jd.make_step(fn, opt)

    def body(carry, _):
        x, state = carry
        x, state, _, _ = step(x, state)
        return (x, state), x

    if steps == 0:
        return np.asarray(x0)[None]
    _, xs = jax.jit(lambda x: jax.lax.scan(body, (x, opt.init(x)), length=steps))(x0)
    return np.concatenate([np.asarray(x0)[None], np.asarray(xs)])


# --- bench ---------------------------------------------------------------------------------


def _find_benchmarks() -> Path | None:
    """The folder holding ``benchmarks/``: the working directory or the source checkout."""
    import jaxdescent

    candidates = [Path.cwd(), Path(jaxdescent.__file__).resolve().parent.parent]
    for root in candidates:
        if (root / "benchmarks" / "run.py").is_file():
            return root
    return None


def _bench(args: argparse.Namespace) -> int:
    root = _find_benchmarks()
    if root is None:
        print(
            "jaxdescent bench: error: the benchmark suite was not found; it lives in the "
            "benchmarks/ folder of the source repository: run this command (or "
            "'python -m benchmarks') from a clone",
            file=sys.stderr,
        )
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    run = importlib.import_module("benchmarks.run")
    argv = (["--quick"] if args.quick else []) + list(args.extra)
    try:
        code = run.main(argv)
    except SystemExit as exit_:
        return _code(exit_)
    return 0 if code is None else int(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
