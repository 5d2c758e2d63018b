#!/usr/bin/env python3
"""memfit's estimates against the tracer: one row per validation case, signed % errors.

Reads ``validation/traced.json`` (the tracer's results on the validation suite), runs
``memfit.infer`` for every inference case and, when ``memfit.training.train`` can be imported,
``memfit.train`` for every training case, and prints estimate vs trace with the signed error
of the peak (and of each component the trace splits out), then the median and the largest
|error| per mode.

    python benchmarks/accuracy.py                       # validation/traced.json
    python benchmarks/accuracy.py --traced other.json --components
    python benchmarks/accuracy.py --live                # no file: trace a default set now
    python benchmarks/accuracy.py --gpu validation/gpu/h100-2026-11-26.json
    python benchmarks/accuracy.py --train-grid 207     # trace a random training grid now
    python benchmarks/accuracy.py --variant-grid 60    # LoRA / QLoRA / FSDP2 grid

``--gpu`` compares with real CUDA runs instead (``max_memory_allocated``, which also counts
PyTorch's cuBLAS workspace, ~32 MiB on Hopper, that the tracer and ``peak_bytes`` leave out;
the GPU script resets the peak after loading, so the load phase is excluded there).

The case reader accepts a list of cases or ``{"cases": [...]}``; each case gives its mode
(``mode``/``workload``/``kind``, or ``scenario.workload``), its model (``model`` name or
``config`` dict, at the top or in ``scenario``), its options (``options`` or the option fields
of ``scenario``) and the traced peak (``peak_bytes`` at the top, or in ``trace``/``result``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from memfit.errors import MemfitError  # noqa: E402
from memfit.inference import infer  # noqa: E402
from memfit.workload import InferenceOptions, TrainingOptions  # noqa: E402

try:  # the training estimator may not exist yet
    from memfit.training import train  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the tree
    train = None

INFER_FIELDS = {f.name for f in fields(InferenceOptions)}
TRAIN_FIELDS = {f.name for f in fields(TrainingOptions)}
# A stored case lists every option, defaults included; passing a default back would count as
# "given" (engine-specific options are refused with another engine), so defaults are dropped.
DEFAULTS = {"infer": {f.name: f.default for f in fields(InferenceOptions)},
            "train": {f.name: f.default for f in fields(TrainingOptions)}}

# Cases traced on the fly with --live (the validation suite's shapes).
LIVE_CASES: list[dict[str, Any]] = [
    {"model": "llama-3.2-1b", "batch": 32, "prompt": 4096, "generate": 32},
    {"model": "mistral-7b-v0.1", "batch": 8, "prompt": 4096, "generate": 64},
    {"model": "qwen2.5-0.5b", "batch": 16, "prompt": 2048, "generate": 16},
    {"model": "qwen2.5-0.5b", "batch": 4, "prompt": 2048, "generate": 16, "attn": "eager",
     "logits": "all"},
    {"model": "llama-3.2-3b", "batch": 8, "prompt": 8192, "generate": 32},
    {"model": "llama-3.2-1b", "batch": 1, "prompt": 32768, "generate": 8},
    {"model": "llama-3.1-8b", "batch": 1, "prompt": 8192, "generate": 32},
    {"model": "mistral-7b-v0.1", "batch": 1, "prompt": 16384, "generate": 16},
    {"model": "gpt2", "batch": 8, "prompt": 992, "generate": 32},
    {"model": "gemma-2-2b", "batch": 2, "prompt": 1024, "generate": 4},
    {"model": "mixtral-8x7b", "batch": 4, "prompt": 2048, "generate": 2},
    {"model": "deepseek-v2-lite", "batch": 1, "prompt": 4096, "generate": 2},
    {"model": "gpt-oss-20b", "batch": 2, "prompt": 1024, "generate": 4, "weights": "bf16"},
    {"model": "qwen3-30b-a3b", "batch": 2, "prompt": 1024, "generate": 4},
]


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def read_cases(path: Path) -> Iterator[dict[str, Any]]:
    """Normalised cases: {"id", "mode", "model", "options", "peak", "components", "phases"}."""
    data = json.loads(path.read_text(encoding="utf-8"))
    cases = data.get("cases", data.get("results", data)) if isinstance(data, dict) else data
    if isinstance(cases, dict):
        cases = [dict(v, id=k) if isinstance(v, dict) else v for k, v in cases.items()]
    for i, c in enumerate(cases):
        sc = c.get("scenario") or {}
        res = c.get("trace") or c.get("result") or {}
        mode = _first(c.get("mode"), c.get("workload"), c.get("kind"), sc.get("workload"),
                      sc.get("kind"), res.get("workload"))
        mode = {"inference": "infer", "training": "train"}.get(mode, mode)
        model = _first(c.get("model"), c.get("config"), sc.get("model"), sc.get("config"))
        allowed = INFER_FIELDS if mode == "infer" else TRAIN_FIELDS
        opts = c.get("options") or {k: v for k, v in sc.items() if k in allowed}
        defaults = DEFAULTS.get(mode, {})
        opts = {k: v for k, v in opts.items()
                if k in allowed and not (k in defaults and v == defaults[k]
                                         and type(v) is type(defaults[k]))}
        yield {
            "id": _first(c.get("id"), c.get("name"), f"case{i}"),
            "mode": mode, "model": model, "options": opts,
            "peak": _first(c.get("peak_bytes"), res.get("peak_bytes")),
            "components": _first(c.get("components"), res.get("components")) or {},
            "phases": _first(c.get("phase_peaks"), res.get("phase_peaks")) or {},
        }


def live_cases() -> Iterator[dict[str, Any]]:
    from memfit.catalog import get_entry
    from memfit.trace import trace_inference

    for c in LIVE_CASES:
        opts = {k: v for k, v in c.items() if k != "model"}
        r = trace_inference(dict(get_entry(c["model"]).config), InferenceOptions(**opts))
        yield {"id": c["model"] + " " + " ".join(f"{k}={v}" for k, v in opts.items()),
               "mode": "infer", "model": c["model"], "options": opts, "peak": r.peak_bytes,
               "components": dict(r.components), "phases": dict(r.phase_peaks)}


# The training grid (--train-grid N): families with 1-4 layers (the tracer's time grows with
# layers and ops, the errors do not), random recipes, optimizers, attention, checkpointing,
# micro-batches, batch 1-4 and seq 256-4096 (at most 8192 tokens), seed 2026.
GRID_MODELS = {"gpt2": 2, "qwen2.5-0.5b": 2, "llama-3.2-1b": 2, "smollm2-135m": 4,
               "qwen3-0.6b": 4, "gemma-3-1b": 4, "pythia-160m": 2, "phi-3-mini-4k": 2,
               "olmo-2-7b": 2, "gemma-2-2b": 2, "gemma-2b": 2, "tinyllama-1.1b": 2,
               "mistral-7b-v0.1": 2, "mixtral-8x7b": 1, "qwen1.5-moe-a2.7b": 2,
               "qwen3-30b-a3b": 1, "deepseek-v2-lite": 2, "gpt-oss-20b": 2}


def _batch_seq(rng: Any, max_seq: int = 4096) -> tuple[int, int]:
    """A random batch 1-4 and sequence 256-``max_seq``, at most 8192 tokens in all."""
    batch, seq = rng.choice([1, 2, 4]), rng.choice([256, 512, 1024, 2048, 4096])
    seq = min(seq, max_seq)
    if batch * seq > 8192:
        seq = max(256, 8192 // batch)
    return batch, seq


def grid_specs(n: int, seed: int = 2026) -> list[dict[str, Any]]:
    """``n`` random training scenarios (the same ones for the same ``n`` and seed)."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        m = rng.choice(sorted(GRID_MODELS))
        prec = rng.choice(["fp32", "bf16-true", "bf16-true", "bf16-mixed", "bf16-mixed",
                           "bf16-master"])
        impl = rng.choice(["foreach", "foreach", "foreach", "fused", "forloop"])
        opt = rng.choice(["adamw"] * 6 + ["sgd", "sgd-momentum", "adafactor", "lion"])
        if opt in ("adafactor", "lion") and impl == "fused":
            impl = "foreach"
        attn = rng.choice(["sdpa"] * 4 + ["eager"])
        ckpt = rng.choice(["none"] * 4 + ["full"])
        batch, seq = _batch_seq(rng, 1024 if m.startswith("gpt2") else 4096)
        mb = rng.choice([1] * 8 + [2])
        out.append({"model": m, "layers": GRID_MODELS[m], "batch": batch, "seq": seq,
                    "precision": prec, "optimizer": opt, "optimizer_impl": impl, "attn": attn,
                    "checkpointing": ckpt, "microbatches": mb})
    return out


# The adapter and sharding grid (--variant-grid N): LoRA / QLoRA through peft on the families
# with q/k/v/o/gate/up/down projections, FSDP2 (full, grad-op) on 2-8 fake ranks, and LoRA
# under FSDP2, seed 2027.
VARIANT_MODELS = {"qwen2.5-0.5b": 2, "llama-3.2-1b": 2, "smollm2-135m": 4, "qwen3-0.6b": 4,
                  "tinyllama-1.1b": 2, "mistral-7b-v0.1": 2, "llama-3.1-8b": 2,
                  "gemma-2b": 2, "olmo-2-7b": 2, "qwen1.5-moe-a2.7b": 2}


def variant_specs(n: int, seed: int = 2027) -> list[dict[str, Any]]:
    """``n`` random LoRA / QLoRA / FSDP2 training scenarios (the same for the same ``n``)."""
    import random

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        m = rng.choice(sorted(VARIANT_MODELS))
        kind = rng.choice(["lora", "qlora", "fsdp-full", "fsdp-grad-op", "fsdp-lora"])
        if kind == "fsdp-lora":  # torchtune's distributed LoRA: a mixed or fp32 recipe
            spec_extra = {"lora_rank": rng.choice([8, 16, 64]), "dp": rng.choice([2, 4, 8]),
                          "fsdp": rng.choice(["full", "grad-op"])}
        else:
            spec_extra = {}
        if kind == "qlora":
            prec = rng.choice(["bf16-true", "bf16-true", "bf16-mixed"])
        elif kind == "fsdp-lora":
            prec = rng.choice(["fp32", "bf16-mixed", "bf16-mixed"])
        else:
            prec = rng.choice(["fp32", "bf16-true", "bf16-mixed", "bf16-mixed"])
        impl = rng.choice(["foreach", "foreach", "fused", "forloop"])
        ckpt = rng.choice(["none", "none", "full"])
        attn = rng.choice(["sdpa"] * 3 + ["eager"])
        batch, seq = _batch_seq(rng)
        spec = {"model": m, "layers": VARIANT_MODELS[m], "batch": batch, "seq": seq,
                "precision": prec, "optimizer": "adamw", "optimizer_impl": impl,
                "attn": attn, "checkpointing": ckpt, "microbatches": rng.choice([1] * 4 + [2])}
        if kind in ("lora", "qlora"):
            spec.update(lora_rank=rng.choice([4, 8, 16, 64]), qlora=kind == "qlora")
        elif kind == "fsdp-lora":
            spec.update(spec_extra)
        if "lora_rank" in spec:  # the grid's adapters: every projection (peft's all-linear)
            spec["lora_targets"] = "all-linear"
        else:
            spec.update(dp=rng.choice([2, 4, 8]), fsdp=kind[5:])
        out.append(spec)
    return out


def grid_cases(n: int, specs: Any = None) -> Iterator[dict[str, Any]]:
    from memfit.catalog import get_entry
    from memfit.trace import trace_training

    for c in (specs or grid_specs)(n):
        cfg = dict(get_entry(c["model"]).config)
        key = "n_layer" if "n_layer" in cfg else "num_hidden_layers"
        cfg[key] = c["layers"]
        if "layer_types" in cfg:
            cfg["layer_types"] = cfg["layer_types"][:c["layers"]]
        opts = {k: v for k, v in c.items() if k not in ("model", "layers")}
        r = trace_training(cfg, TrainingOptions(**opts))
        name = (f"{c['model']}({c['layers']}L) b{c['batch']} s{c['seq']} {c['precision']} "
                f"{c['optimizer']}/{c['optimizer_impl']} {c['attn']}"
                + (" ckpt" if c["checkpointing"] == "full" else "")
                + (f" mb{c['microbatches']}" if c["microbatches"] > 1 else "")
                + (f" {'q' if c.get('qlora') else ''}lora{c['lora_rank']}"
                   if c.get("lora_rank") else "")
                + (f" dp{c['dp']}-{c['fsdp']}" if c.get("fsdp") else ""))
        yield {"id": name,
               "mode": "train", "model": cfg, "options": opts, "peak": r.peak_bytes,
               "components": dict(r.components), "phases": dict(r.phase_peaks)}


def gpu_cases(path: Path) -> Iterator[dict[str, Any]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    for c in data["cases"]:
        sc = c["scenario"]
        if c.get("status") != "ok" or sc.get("kind") != "infer":
            continue
        cfg = dict(sc["config_fields"], model_type=sc["model_type"])
        cfg.setdefault("torch_dtype", sc.get("config_dtype"))
        opts = {"batch": sc["batch"], "prompt": sc["prompt"], "generate": sc["generate"],
                "attn": sc["attn"], "logits": sc["logits"], "weights": sc["dtype"]}
        yield {"id": c["id"], "mode": "infer-gpu", "model": cfg, "options": opts,
               "peak": c["max_memory_allocated"], "components": {}, "phases": {}}


def estimate(case: dict[str, Any]) -> Any:
    if case["mode"] in ("infer", "infer-gpu"):
        return infer(case["model"], **case["options"])
    if case["mode"] == "train" and train is not None:
        return train(case["model"], **case["options"])
    return None


def pct(est: int, ref: int) -> float:
    return 100.0 * (est - ref) / ref if ref else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--traced", type=Path, default=ROOT / "validation" / "traced.json")
    p.add_argument("--live", action="store_true", help="trace a default set now")
    p.add_argument("--gpu", type=Path, help="compare with a validation/gpu measurement file")
    p.add_argument("--components", action="store_true", help="also per-component errors")
    p.add_argument("--train-grid", type=int, metavar="N",
                   help="trace N random training scenarios now (207: docs/training.md)")
    p.add_argument("--variant-grid", type=int, metavar="N",
                   help="trace N random LoRA/QLoRA/FSDP2 scenarios now (docs/training.md)")
    args = p.parse_args(argv)

    if args.gpu:
        cases = list(gpu_cases(args.gpu))
    elif args.train_grid:
        cases = grid_cases(args.train_grid)  # type: ignore[assignment]
    elif args.variant_grid:
        cases = grid_cases(args.variant_grid, variant_specs)  # type: ignore[assignment]
    elif args.live:
        cases = list(live_cases())
    elif args.traced.is_file():
        cases = list(read_cases(args.traced))
    else:
        print(f"{args.traced} not found; use --live to trace a default set", file=sys.stderr)
        return 2

    errors: dict[str, list[float]] = {}
    skipped = 0
    print(f"{'mode':9s} {'case':64s} {'trace':>15s} {'memfit':>15s} {'error':>8s}")
    for case in cases:
        if case["peak"] is None:
            skipped += 1
            continue
        try:
            est = estimate(case)
        except MemfitError as exc:
            print(f"{case['mode']:9s} {str(case['id'])[:64]:64s} error: {exc}")
            continue
        if est is None:
            skipped += 1
            continue
        if case["mode"] == "infer-gpu":  # the GPU script resets the peak after loading
            got = max(ph.peak_bytes for ph in est.phases if ph.name != "load")
        else:
            got = est.peak_bytes
        e = pct(got, case["peak"])
        errors.setdefault(case["mode"], []).append(e)
        print(f"{case['mode']:9s} {str(case['id'])[:64]:64s} {case['peak']:>15,d} "
              f"{got:>15,d} {e:>+7.2f}%")
        if args.components and case["components"]:
            comps = est.components
            parts = []
            for name, ref in case["components"].items():
                if ref:
                    parts.append(f"{name} {pct(comps.get(name, 0), ref):+.2f}%")
            print(" " * 10 + "components: " + ", ".join(parts))
    print()
    for mode, errs in errors.items():
        absolute = [abs(x) for x in errs]
        worst = max(errs, key=abs)
        print(f"{mode}: {len(errs)} cases, median |error| {statistics.median(absolute):.3f}%, "
              f"max |error| {max(absolute):.3f}% (signed {worst:+.3f}%)")
    if skipped:
        print(f"skipped {skipped} cases (no traced peak, or no estimator for the mode)")
    if train is None:
        print("memfit.training.train not importable: training cases skipped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
