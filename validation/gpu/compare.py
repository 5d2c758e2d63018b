"""Compare the H100 measurements with memfit's tracer and estimator, case by case.

    python validation/gpu/compare.py [--data validation/gpu/h100-2026-11-26.json]
                                     [--out validation/gpu/comparison.json] [--no-trace]

For every measured case it rebuilds the same config and scenario, runs the tracer on fake CPU
tensors (unless --no-trace) and the estimator, and prints a Markdown table of
max_memory_allocated vs the tracer's peak and memfit's peak_bytes, and nvidia-smi's process
memory vs memfit's total_bytes, with signed % errors. The JSON it writes is what
``docs/gpu-measurements.md`` and ``tests/test_gpu_data.py`` read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from memfit.workload import InferenceOptions, TrainingOptions  # noqa: E402

MiB = 2**20


def case_config(case: dict[str, Any]) -> dict[str, Any]:
    """The config dict the GPU run built its model from."""
    s = case["scenario"]
    return dict(s["config_fields"], model_type=s["model_type"], torch_dtype=s["config_dtype"])


def case_options(case: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """("infer" | "train", memfit option kwargs) for the measured scenario."""
    s = case["scenario"]
    if s["kind"] == "infer":
        return "infer", dict(batch=s["batch"], prompt=s["prompt"], generate=s["generate"],
                             attn=s["attn"], logits=s["logits"], weights=s["dtype"])
    return "train", dict(batch=s["batch"], seq=s["seq"], precision=s["precision"],
                         optimizer=s["optimizer"], optimizer_impl=s["optimizer_impl"],
                         checkpointing=s["checkpointing"], attn=s["attn"])


def measured(case: dict[str, Any]) -> dict[str, int]:
    return {"max_memory_allocated": case["max_memory_allocated"],
            "max_memory_reserved": case["max_memory_reserved"],
            "nvml_process_bytes": case.get("nvml_process_bytes_at_peak")
            or case.get("nvml_sampler_max_process_bytes") or 0}


def estimate(mode: str, config: dict[str, Any], options: dict[str, Any]) -> dict[str, int] | None:
    try:
        if mode == "infer":
            from memfit.inference import infer as run
        else:
            from memfit.training import train as run
    except ImportError:
        return None
    est = run(config, **options)
    return {"peak_bytes": est.peak_bytes, "total_bytes": est.total_bytes}


def trace(mode: str, config: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    from memfit.trace import trace_inference, trace_training

    if mode == "infer":
        r = trace_inference(config, InferenceOptions(**options))
    else:
        r = trace_training(config, TrainingOptions(**options))
    return {"peak_bytes": r.peak_bytes, "peak_bytes_rounded": r.peak_bytes_rounded,
            "peak_phase": r.peak_phase, "components": dict(r.components)}


def pct(a: int, b: int) -> float:
    return 100.0 * (a - b) / b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT / "validation/gpu/h100-2026-11-26.json"))
    parser.add_argument("--out", default=str(ROOT / "validation/gpu/comparison.json"))
    parser.add_argument("--no-trace", action="store_true")
    args = parser.parse_args(argv)
    data = json.loads(Path(args.data).read_text())
    old = {}
    if args.no_trace and Path(args.out).exists():
        old = {r["id"]: r for r in json.loads(Path(args.out).read_text())["cases"]}
    rows = []
    for case in data["cases"]:
        if case["status"] != "ok":
            continue
        mode, options = case_options(case)
        config = case_config(case)
        row = {"id": case["id"], "mode": mode, "options": options, "config": config,
               "measured": measured(case)}
        row["trace"] = old.get(case["id"], {}).get("trace") if args.no_trace else \
            trace(mode, config, options)
        row["estimate"] = estimate(mode, config, options)
        rows.append(row)
        print(f"{case['id']}: done", file=sys.stderr, flush=True)
    out = {"source": Path(args.data).name, "gpu": data["provenance"].get("gpu_name"),
           "torch_gpu": data["provenance"].get("torch_full"),
           "transformers_gpu": data["provenance"].get("transformers"), "cases": rows}
    try:
        import torch
        import transformers
        out["torch_trace"] = torch.__version__
        out["transformers_trace"] = transformers.__version__
    except ImportError:
        pass
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(render(rows))
    return 0


def render(rows: list[dict[str, Any]]) -> str:
    """Markdown table: measured vs tracer vs estimate, in MiB and signed %."""
    head = ("| case | allocated MiB | tracer MiB | tracer % | memfit peak MiB | peak % "
            "| nvidia-smi MiB | memfit total MiB | total % |")
    lines = [head, "|" + "---|" * 9]
    errs: dict[str, list[float]] = {"tracer": [], "peak": [], "total": []}
    for r in rows:
        m = r["measured"]
        alloc, smi = m["max_memory_allocated"], m["nvml_process_bytes"]
        t = r.get("trace") or {}
        e = r.get("estimate") or {}
        cells = [r["id"], f"{alloc / MiB:,.0f}"]
        if t:
            errs["tracer"].append(pct(t["peak_bytes"], alloc))
            cells += [f"{t['peak_bytes'] / MiB:,.0f}", f"{errs['tracer'][-1]:+.1f}"]
        else:
            cells += ["-", "-"]
        if e:
            errs["peak"].append(pct(e["peak_bytes"], alloc))
            errs["total"].append(pct(e["total_bytes"], smi))
            cells += [f"{e['peak_bytes'] / MiB:,.0f}", f"{errs['peak'][-1]:+.1f}",
                      f"{smi / MiB:,.0f}", f"{e['total_bytes'] / MiB:,.0f}",
                      f"{errs['total'][-1]:+.1f}"]
        else:
            cells += ["-", "-", f"{smi / MiB:,.0f}", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name, values in errs.items():
        if values:
            lines.append(f"- {name}: median {statistics.median(values):+.2f}%, "
                         f"max |error| {max(abs(v) for v in values):.2f}% over {len(values)} cases")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
