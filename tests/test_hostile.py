"""A sample of ``benchmarks/hostile.py``'s hostile inputs, in every default run.

Files (GGUF, safetensors with its index, config.json), command lines and HTTP bodies built
to hurt: huge and float counts, metadata of the wrong type, nested arrays, giant declared
headers, overlapping offsets, 5,000-digit numbers, deep JSON. Each answer must be a result
or memfit's one-line refusal (exit 2, 413/422), within 2 s, the process under 500 MB.
``python benchmarks/hostile.py`` runs 2,400 of them and prints the table.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "hostile.py"


def _hostile() -> Any:
    spec = importlib.util.spec_from_file_location("memfit_hostile", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


hostile = _hostile()


def _web_available() -> bool:
    return bool(importlib.util.find_spec("fastapi")) and any(
        importlib.util.find_spec(m) for m in ("httpx2", "httpx"))


@pytest.mark.parametrize("door", ["gguf", "safetensors", "config", "cli", "http"])
def test_a_sample_of_hostile_inputs_is_bounded(door: str) -> None:
    if door == "http" and not _web_available():
        pytest.skip("the web extra (fastapi, httpx2) is not installed")
    # (no unknown model_type: memfit's generic path imports transformers, a cost of its own)
    stats = hostile.run_all(30, seed=7, doors=(door,), generic=False)[door]
    assert stats.cases == 30
    assert not stats.failures, "\n".join(stats.failures)
    assert stats.max_s < hostile.MAX_SECONDS, stats.slowest
    assert hostile.rss_bytes() < hostile.MAX_RSS_BYTES
    assert stats.refused > 0  # the sample reached the refusals it was built for


def test_the_runner_reports_tracebacks_and_overtime() -> None:
    """The harness itself: a traceback, a slow answer and a hang are all failures."""
    stats = hostile.DoorStats()

    def boom() -> str:
        raise KeyError("x")

    def slow() -> str:  # 0.3 s of CPU (the budget counts the process's own CPU time)
        import time

        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
        return "result"

    def hang() -> str:
        import time

        time.sleep(60)
        return "result"

    hostile.run_case(hostile.Case("t", "boom", boom), stats, max_seconds=0.1)
    hostile.run_case(hostile.Case("t", "slow", slow), stats, max_seconds=0.1)
    assert len(stats.failures) == 2
    assert "KeyError" in stats.failures[0] and "over 0.1 s" in stats.failures[1]
    hostile.run_case(hostile.Case("t", "hang", hang), stats, max_seconds=0.1)
    assert "still running" in stats.failures[2] and stats.cases == 3


def test_generated_files_are_what_they_claim() -> None:
    """The generators' baseline files are valid (so the hostile changes are what is refused)."""
    import json
    import random
    import struct

    raw = hostile.safetensors_bytes(random.Random(3))
    n = struct.unpack("<Q", raw[:8])[0]
    assert raw[:8] and n > 0
    assert json.loads(hostile.dumps({"a": hostile.Deep(5)})) == {"a": [[[[[1]]]]]}
    text = hostile.dumps([10**5000 - 1])
    assert set(text[1:-1]) == {"9"} and 4990 < len(text) < 5010
