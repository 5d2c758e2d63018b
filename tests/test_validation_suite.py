"""memfit against every case of the tracer's validation suite (validation/traced.json).

The acceptance of the inference and training issues (issue 16's "Done when"): each case's
``peak_bytes`` within 1% of the traced peak, and the median |error| per mode within 0.1%. No
torch needed: the traces are stored; ``validation/generate.py`` regenerates them (and
``benchmarks/accuracy.py`` prints the table).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from accuracy import read_cases  # noqa: E402

from memfit.inference import infer  # noqa: E402
from memfit.training import train  # noqa: E402

CASES = list(read_cases(ROOT / "validation" / "traced.json"))
LIMIT = 0.01
MEDIAN_LIMIT = 0.001


def _error(case: dict) -> float:
    run = infer if case["mode"] == "infer" else train
    est = run(case["model"], **case["options"])
    return (est.peak_bytes - case["peak"]) / case["peak"]


def test_suite_covers_both_modes_and_the_distributed_and_adapter_cases() -> None:
    ids = [c["id"] for c in CASES]
    assert sum(c["mode"] == "infer" for c in CASES) >= 25
    assert sum(c["mode"] == "train" for c in CASES) >= 40
    for needle in ("fsdpfull", "fsdpgradop", "lora16", "qlora16", "fsdpfull-lora16"):
        assert any(needle in i for i in ids), needle


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case_within_one_percent(case: dict) -> None:
    err = _error(case)
    assert abs(err) <= LIMIT, f"{case['id']}: {err:+.3%}"


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_median_error_within_a_tenth_of_a_percent(mode: str) -> None:
    errs = [abs(_error(c)) for c in CASES if c["mode"] == mode]
    assert statistics.median(errs) <= MEDIAN_LIMIT
