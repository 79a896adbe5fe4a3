"""The ``jaxdescent`` command: ``demo``, ``compare`` and ``bench``.

``jaxdescent demo`` trains a small MLP classifier on two moons from many random starts at
once and writes plots; ``jaxdescent compare`` runs several update rules on a test function
and draws their paths; ``jaxdescent bench`` runs the benchmark suite of a source checkout.
Run any of them with ``--help``. ``python -m jaxdescent`` is the same command.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

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


# --- compare: the optimizer list --------------------------------------------------------


def _optimizer_list(text: str) -> list[str]:
    from jaxdescent.compare import OPTIMIZER_NAMES

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
    from jaxdescent.compare import problem_names

    return problem_names()


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
    from jaxdescent.compare import OPTIMIZER_NAMES

    demo = commands.add_parser(
        "demo",
        help="train an MLP on two moons from many random restarts at once; write plots",
        description="Train an MLP classifier (Bernoulli negative log-likelihood) on two "
        "moons, from RESTARTS random initialisations at once in one vmapped program, with "
        "Adam and a cyclic learning rate on mini-batches. Prints the best, median and worst "
        "final loss, the best restart's accuracy and the restarts that failed, and writes "
        "loss curves (stuck restarts in red), the best decision boundary and a histogram of "
        "final losses (with the 'stuck' threshold) to OUT. "
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
        "lines (gradient descent zig-zags along a valley, Newton's method cuts across) and "
        "the loss per step. Runs in 64-bit floats. The saddle x^2 - y^2 is unbounded below, so "
        "'saddle' is shown as saddle_quartic, x^2 - y^2 + y^4/4: plain Newton stops on the "
        "saddle, the other rules escape to its minima.",
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
        default=None,
        metavar="A,B,...",
        help="comma-separated (default sgd,momentum,adam,newton; for the saddle "
        "sgd,adam,plain_newton,newton,saddle_free_newton); from: " + ", ".join(OPTIMIZER_NAMES),
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
    if args.command != "bench":  # benchmarks measure compile time: keep their runs cold
        enable_compilation_cache()
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache for the command, so a second run of
    ``jaxdescent demo`` loads its programs instead of compiling them again.

    The folder is ``$JAXDESCENT_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxdescent/xla`` (default
    ``~/.cache/jaxdescent/xla``); ``JAXDESCENT_CACHE_DIR=""`` turns it off, and a cache the
    user configured already is left alone. Library users get the same with
    ``jax.config.update("jax_compilation_cache_dir", folder)``. Returns the folder used.
    """
    import jax

    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    folder = os.environ.get("JAXDESCENT_CACHE_DIR")
    if folder is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "jaxdescent", "xla")
    if not folder:
        return None
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return None  # an unwritable home: run without the cache
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return folder


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


# --- demo and compare: the work is in jaxdescent.demo and jaxdescent.compare ---------------


def _demo(args: argparse.Namespace) -> int:
    from jaxdescent import demo

    try:
        demo.run(
            restarts=args.restarts,
            steps=args.steps,
            seed=args.seed,
            hidden=args.hidden,
            batch_size=args.batch_size,
            points=args.points,
            out=args.out,
            progress=not args.no_progress,
        )
    except ImportError as err:
        if "matplotlib" not in str(err):
            raise
        print(f"jaxdescent demo: error: {err}", file=sys.stderr)
        return 1
    return 0


def _compare(args: argparse.Namespace) -> int:
    from jaxdescent import compare

    compare.run(
        args.problem,
        args.optimizers,
        start=args.start,
        steps=args.steps,
        tol=args.tol,
        lr=args.lr,
        out=args.out,
    )
    return 0


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
