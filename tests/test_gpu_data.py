"""memfit against what an H100 really allocated (validation/gpu/h100-2026-11-26.json).

The measurements were taken once on a real GPU (torch 2.11, CUDA 13.0, driver 580.159); these
tests recompute memfit's estimate for each measured scenario and hold it to stated tolerances:
- peak_bytes + the cuBLAS workspace term vs torch.cuda.max_memory_allocated(): within 0.5%,
  except GPT-2 (within 4.5%: CUDA allocates up to 640 MiB more than the CPU-traced model code
  in its training step, a gap not yet explained; see docs/gpu-measurements.md);
- total_bytes vs nvidia-smi's process memory: median within 2%, every case within 40% (the
  caching allocator's reserve varies from 0.6% to 82% of the peak; memfit uses the median);
- the CUDA context term vs nvidia-smi minus max_memory_reserved: within 3%.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

import memfit

ROOT = Path(__file__).resolve().parents[1]
DATA = json.loads((ROOT / "validation/gpu/h100-2026-11-26.json").read_text())
sys.path.insert(0, str(ROOT / "validation/gpu"))
from compare import case_config, case_options  # noqa: E402

CASES = [c for c in DATA["cases"] if c["status"] == "ok"]


def _estimate(case):
    mode, options = case_options(case)
    run = memfit.infer if mode == "infer" else memfit.train
    return run(case_config(case), **options)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_peak_matches_max_memory_allocated(case) -> None:
    est = _estimate(case)
    measured = case["max_memory_allocated"]
    predicted = est.peak_bytes + est.overheads.get("cublas_workspace", 0)
    tolerance = 0.045 if case["scenario"]["model"] == "gpt2" else 0.005
    assert abs(predicted - measured) / measured <= tolerance, (predicted, measured)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_context_term_matches_non_allocator_memory(case) -> None:
    est = _estimate(case)
    outside = case["nvml_process_bytes_at_peak"] - case["max_memory_reserved"]
    assert abs(est.overheads["cuda_context"] - outside) / outside <= 0.03


def test_total_matches_nvidia_smi() -> None:
    errors = []
    for case in CASES:
        est = _estimate(case)
        smi = case["nvml_process_bytes_at_peak"]
        errors.append((est.total_bytes - smi) / smi)
    assert abs(statistics.median(errors)) <= 0.02
    assert max(abs(e) for e in errors) <= 0.40


def test_data_has_provenance() -> None:
    p = DATA["provenance"]
    assert p["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert p["torch"] and p["transformers"] and p["driver_version"] and p["date_utc"]
    assert len(CASES) >= 20
