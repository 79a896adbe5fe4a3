"""Smoke test: every benchmark case runs at a tiny size, so none rots (no timing asserted)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

import jaxdescent as jd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ sits beside the package, not inside it
    sys.path.insert(0, str(ROOT))

from benchmarks import run  # noqa: E402
from benchmarks.common import SIZES  # noqa: E402

TINY = SIZES["tiny"]


def _check_record(record: dict, number: int) -> None:
    assert "error" not in record, record.get("error")
    assert record["case"] == number
    assert record["rows"], "a case must report at least one row"
    for row in record["rows"]:
        if "skipped" in row:
            continue
        for key in ("median_s", "compile_s"):
            if key in row:
                assert math.isfinite(row[key]) and row[key] >= 0, (row["method"], key, row[key])
    _check_fresh(record)
    for t in record["targets"]:
        assert math.isfinite(t["ratio"]) and t["ratio"] > 0
        assert t["met"] == (
            t["ratio"] <= t["threshold"] if t["at_most"] else t["ratio"] >= t["threshold"]
        )


def _check_fresh(record: dict) -> None:
    """A case's fresh-optimizer figures: jaxdescent's calls with a new optimizer object
    compile nothing (cases 1-4: the fresh rows; cases 5, 6 and 8: the fresh-rule columns
    beside each jaxdescent row), while a hand-written loop jitted over a closure holding a
    new optax rule compiles again (cases 1-3)."""
    fresh = [row for row in record["rows"] if "a fresh" in row["method"]]
    if record["case"] in (1, 2, 3, 4):
        assert any(row["method"].startswith("jd.") for row in fresh), record["case"]
    for row in fresh:
        if row["method"].startswith("jd."):
            assert row["compile_s"] == 0.0, row
        else:
            assert row["compile_s"] > 0.0, row
    if record["case"] in (1, 2, 3):
        assert any(not row["method"].startswith("jd.") for row in fresh), record["case"]
    if record["case"] in (5, 6, 8):  # every jaxdescent row (case 8: "jd <rule>")
        key = "fresh_rules_" if record["case"] == 8 else "fresh_rule_"
        ours = [
            row for row in record["rows"] if record["case"] != 8 or row["method"].startswith("jd ")
        ]
        assert ours and all(math.isfinite(row[key + "median_s"]) for row in ours)
        assert all(row[key + "median_s"] > 0 and row[key + "compile_s"] == 0.0 for row in ours)


@pytest.mark.parametrize("number", [1, 3, 4, 5, 6, 7, 8, 9, 10])
def test_case_runs_at_tiny_size(number):
    if number == 8 and not jd.nist.names():
        pytest.skip("the NIST data folder (shared/data/nist-strd) is not here")
    record = run.case_function(number)(TINY)
    _check_record(record, number)
    if number == 5:  # Nocedal and Wright: Newton with line search, about 21 iterations
        newton = next(r for r in record["rows"] if r["method"].startswith("Newton ("))
        assert newton["iterations"] == 21 and newton["status"] == "CONVERGED"
    markdown = run.case_markdown(record)
    assert markdown.startswith(f"### Case {number}:")
    assert "| method |" in markdown


def test_main_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "r.json"
    md = tmp_path / "r.md"
    code = run.main(["--size", "tiny", "--cases", "2", "--json", str(out), "--markdown", str(md)])
    assert code == 0
    results = json.loads(out.read_text())
    assert results["size"] == "tiny"
    assert results["machine"]["versions"]["jax"]
    (record,) = results["cases"]
    _check_record(record, 2)
    printed = capsys.readouterr().out
    assert "### Case 2:" in printed and "| case | target | ratio | met |" in printed
    assert md.read_text().strip() == printed.strip()


@pytest.mark.parametrize("text", ["0", "99", "1,x", ","])
def test_bad_case_list_is_rejected(text):
    with pytest.raises(SystemExit, match="--cases"):
        run.parse_cases(text)


def test_case_list_parses():
    assert run.parse_cases("1, 2") == [1, 2]
    assert run.parse_cases(None) == list(run.CASE_NUMBERS)
