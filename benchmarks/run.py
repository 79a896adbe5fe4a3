"""Run the benchmark cases, print a markdown table and write JSON.

Usage, from the repository root::

    python -m benchmarks                 # every case at the issue's sizes
    python -m benchmarks --quick         # smaller curve sweeps, fewer repeats
    python -m benchmarks --cases 1,2 --json results.json

Each timed figure is the median of several runs after a warm-up call; compile time is
reported separately (see :mod:`benchmarks.common`). Ratios are taken within the same run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import SIZES, Size, machine_info, missing_peers

DEFAULT_JSON = Path("benchmarks") / "results" / "latest.json"


_CASE_FUNCTIONS = {
    1: ("first_order", "case1"),
    2: ("first_order", "case2"),
    3: ("restarts", "case3"),
    4: ("second_order", "case4"),
    5: ("second_order", "case5"),
    6: ("second_order", "case6"),
    7: ("first_order", "case7"),
    8: ("nist", "case8"),
    9: ("batch", "case9"),
    10: ("small_fits", "case10"),
}


def case_function(number: int) -> Callable[[Size], dict]:
    """The function running case ``number`` (imported on demand)."""
    module, name = _CASE_FUNCTIONS[number]
    return getattr(importlib.import_module(f"benchmarks.{module}"), name)


CASE_NUMBERS = tuple(_CASE_FUNCTIONS)


def parse_cases(text: str | None) -> list[int]:
    if not text:
        return list(CASE_NUMBERS)
    try:
        chosen = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(
            f"--cases takes comma-separated case numbers {CASE_NUMBERS}; got {text!r}"
        ) from None
    bad = [c for c in chosen if c not in CASE_NUMBERS]
    if bad or not chosen:
        raise SystemExit(f"--cases takes case numbers from {CASE_NUMBERS}; got {text!r}")
    return chosen


def run_cases(numbers: list[int], size: Size, log=print) -> dict:
    """Run the chosen cases; a case that fails is recorded with its error, not fatal, and a
    case whose peer library is not installed (``common.needs``) is recorded as skipped."""
    import jax

    results = []
    for number in numbers:
        log(f"case {number} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        function = case_function(number)
        reason = missing_peers(*getattr(function, "peers", ()))
        try:
            if reason:
                title = (function.__doc__ or f"case {number}").strip().splitlines()[0]
                record = {"case": number, "title": title, "skipped": reason, "rows": []}
                log(f"case {number} skipped: {reason}", file=sys.stderr, flush=True)
            else:
                record = function(size)
        except Exception as err:  # report and go on: one broken case should not hide the rest
            record = {"case": number, "title": f"case {number}", "error": repr(err), "rows": []}
        record["wall_s"] = time.perf_counter() - t0
        results.append(record)
        jax.clear_caches()
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "size": size.name,
        "repeats": size.repeats,
        "machine": machine_info(),
        "cases": results,
    }


# --- markdown -----------------------------------------------------------------------------


def _fmt_time(seconds) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.2e}"
    return str(value)


_TIME_KEYS = ("median_s", "compile_s", "first_call_s")
_SKIP_KEYS = {"method", "runs_s", "compile_runs_s", *_TIME_KEYS}


def case_markdown(record: dict) -> str:
    lines = [f"### Case {record['case']}: {record['title']}", ""]
    if "error" in record:
        return "\n".join([*lines, f"**failed**: `{record['error']}`", ""])
    if "skipped" in record:
        return "\n".join([*lines, f"**skipped**: {record['skipped']}", ""])
    rows = record["rows"]
    extra = []
    for row in rows:
        for k in row:
            if k not in _SKIP_KEYS and k not in extra:
                extra.append(k)
    header = ["method", "median", "compile", "first call", *extra]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row in rows:
        cells = [row["method"], *(_fmt_time(row.get(k)) for k in _TIME_KEYS)]
        cells += [_fmt_time(row.get(k)) if k.endswith("_s") else _fmt(row.get(k)) for k in extra]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if record.get("curve"):
        keys = list(record["curve"][0])
        lines.append("| " + " | ".join(keys) + " |")
        lines.append("|" + "---|" * len(keys))
        for point in record["curve"]:
            cells = [_fmt_time(point[k]) if k.endswith("_s") else _fmt(point[k]) for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    for t in record.get("targets", []):
        mark = "met" if t["met"] else "**not met**"
        lines.append(f"- target {t['target']}: ratio {t['ratio']:.3g}, {mark}")
    if record.get("notes"):
        lines.append(f"- {record['notes']}")
    lines.append(f"- case wall time: {record.get('wall_s', float('nan')):.1f} s")
    lines.append("")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    head = [
        f"Benchmarks ({results['size']} size, median of {results['repeats']} timed runs "
        f"after a warm-up), {results['created']}",
        "",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, {m['platform']}, Python {m['python']}, "
        f"JAX backend {m['jax_backend']}.",
        f"Versions: {versions}.",
        "",
    ]
    summary = ["| case | target | ratio | met |", "|---|---|---|---|"]
    for record in results["cases"]:
        for t in record.get("targets", []):
            summary.append(
                f"| {record['case']} | {t['target']} | {t['ratio']:.3g} | "
                f"{'yes' if t['met'] else 'no'} |"
            )
    body = [case_markdown(r) for r in results["cases"]]
    return "\n".join([*head, *summary, "", *body])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="jaxdescent benchmarks against hand-written loops and peer libraries.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sweeps, fewer repeats")
    parser.add_argument(
        "--size", choices=sorted(SIZES), default=None, help="full, quick or tiny (tests)"
    )
    parser.add_argument("--cases", default=None, help="comma-separated case numbers, e.g. 1,2")
    parser.add_argument(
        "--json", default=str(DEFAULT_JSON), help=f"where to write JSON (default {DEFAULT_JSON})"
    )
    parser.add_argument("--markdown", default=None, help="also write the markdown table here")
    args = parser.parse_args(argv)
    size = SIZES[args.size or ("quick" if args.quick else "full")]
    numbers = parse_cases(args.cases)
    results = run_cases(numbers, size)
    text = markdown(results)
    print(text)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1, default=_json_default) + "\n")
        print(f"JSON written to {path}", file=sys.stderr)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    failed = [r["case"] for r in results["cases"] if "error" in r]
    return 1 if failed else 0


def _json_default(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


if __name__ == "__main__":
    sys.exit(main())
