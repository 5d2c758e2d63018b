"""Check the tracer's CPU-side assumptions on a real CUDA GPU (run on a GPU machine).

    python validation/cuda_probe.py [--out validation/cuda_probe.json] [--device cuda]

Three questions, answered from the GPU itself:

1. ``sdpa``: which kernel ``F.scaled_dot_product_attention`` picks on this GPU (dtype, GQA,
   mask, dropout, grad), beside the CPU's choice the trace runs.
2. ``autocast``: the output dtype of the ops whose CPU and CUDA autocast policies differ, on
   CUDA, on CPU, and on CPU with the tracer's emulation of CUDA's policy.
3. ``memory``: for small real-shaped models, the fake CPU trace's ``peak_bytes_rounded``, the
   same workload run for real on the GPU with the tracker attached (what the tracker sees of
   the CUDA kernels), and ``torch.cuda.max_memory_allocated()`` of that run (the allocator's
   own count, after a warm-up that creates the cuBLAS workspaces).

``--device cpu`` runs everything on the CPU (no allocator numbers): a dry run of the script.
``--refresh-fake FILE`` recomputes only the fake traces of a saved run with the tracer as it is
now (they need no GPU), keeping the GPU's numbers: ``fake_current`` beside ``fake``.
The results of the last GPU run are in ``cuda_probe.json`` beside this file.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from memfit.trace import trace_inference, trace_training  # noqa: E402
from memfit.trace.compat import cuda_autocast_policy  # noqa: E402
from memfit.workload import InferenceOptions, TrainingOptions  # noqa: E402

LLAMA = dict(model_type="llama", hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
             num_attention_heads=16, num_key_value_heads=4, vocab_size=32000)
GPT2 = dict(model_type="gpt2", n_embd=768, n_layer=4, n_head=12, vocab_size=50257)
MIXTRAL = dict(model_type="mixtral", hidden_size=512, intermediate_size=1024,
               num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
               vocab_size=32000, num_local_experts=8, num_experts_per_tok=2)
QWEN2 = dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=4,
             num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
             tie_word_embeddings=True)

INFER = [
    ("llama-b4-p1024-g16", LLAMA, dict(batch=4, prompt=1024, generate=16)),
    ("llama-eager-all-b2-p512-g4", LLAMA, dict(batch=2, prompt=512, generate=4, attn="eager",
                                               logits="all")),
    ("mixtral-b4-p512-g8", MIXTRAL, dict(batch=4, prompt=512, generate=8)),
    ("qwen2tied-b8-p1024-g4", QWEN2, dict(batch=8, prompt=1024, generate=4)),
]
TRAIN = [
    ("llama-bf16mixed-foreach", LLAMA, dict(batch=2, seq=1024)),
    ("llama-bf16true-fused-full", LLAMA, dict(batch=2, seq=1024, precision="bf16-true",
                                              optimizer_impl="fused", checkpointing="full")),
    ("llama-fp32-forloop", LLAMA, dict(batch=2, seq=1024, precision="fp32",
                                       optimizer_impl="forloop")),
    ("llama-bf16master", LLAMA, dict(batch=2, seq=1024, precision="bf16-master")),
    ("gpt2-bf16mixed", GPT2, dict(batch=4, seq=1024)),
    ("gpt2-eager-bf16mixed", GPT2, dict(batch=2, seq=1024, attn="eager")),
    ("mixtral-bf16true", MIXTRAL, dict(batch=2, seq=1024, precision="bf16-true")),
    ("qwen2tied-bf16mixed", QWEN2, dict(batch=2, seq=1024)),
]


def sdpa_choices(device: str) -> list[dict[str, Any]]:
    from torch.nn.attention import SDPBackend

    names = {int(b): name for name, b in SDPBackend.__members__.items()}
    rows = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for gqa in (False, True):
            for mask in (False, True):
                for dropout in (0.0, 0.1):
                    for grad in (False, True):
                        q = torch.empty(2, 16, 256, 128, dtype=dtype, device=device,
                                        requires_grad=grad)
                        kv_heads = 4 if gqa else 16
                        k = torch.empty(2, kv_heads, 256, 128, dtype=dtype, device=device)
                        m = (torch.ones(256, 256, dtype=torch.bool, device=device).tril()
                             if mask else None)
                        choice = torch._fused_sdp_choice(q, k, k, m, dropout, not mask,
                                                         enable_gqa=gqa)
                        rows.append({"dtype": str(dtype)[6:], "gqa": gqa, "mask": mask,
                                     "dropout": dropout, "grad": grad,
                                     "backend": names.get(int(choice), str(choice))})
    return rows


def autocast_dtypes(device: str, emulate: bool) -> dict[str, str]:
    x = torch.randn(4, 64, device=device, requires_grad=True)
    w = torch.randn(64, 64, device=device, requires_grad=True)
    ids = torch.zeros(4, dtype=torch.long, device=device)
    q = torch.randn(1, 4, 8, 16, device=device)
    out = {}
    with cuda_autocast_policy(emulate), torch.autocast(device, dtype=torch.bfloat16):
        y = F.linear(x, w)
        cases = {
            "linear": lambda: y, "pow": lambda: y.pow(3), "exp": lambda: y.exp(),
            "rsqrt": lambda: y.abs().rsqrt(), "tanh": lambda: y.tanh(),
            "softmax": lambda: F.softmax(y, -1),
            "softmax(dtype=bf16)": lambda: F.softmax(y, -1, dtype=torch.bfloat16),
            "log_softmax": lambda: F.log_softmax(y, -1), "sum": lambda: y.sum(),
            "mean": lambda: y.mean(), "cumsum": lambda: y.cumsum(-1),
            "layer_norm": lambda: F.layer_norm(y, (64,)),
            "layer_norm(fp32 in)": lambda: F.layer_norm(x, (64,)),
            "rms_norm": lambda: F.rms_norm(y, (64,)), "silu": lambda: F.silu(y),
            "gelu_tanh": lambda: F.gelu(y, approximate="tanh"),
            "cross_entropy": lambda: F.cross_entropy(y, ids),
            "cross_entropy(fp32 in)": lambda: F.cross_entropy(x, ids),
            "einsum": lambda: torch.einsum("ij,jk->ik", x, w), "bmm": lambda: x[None] @ w,
            "sdpa": lambda: F.scaled_dot_product_attention(q, q, q),
            "cat(bf16,fp32)": lambda: torch.cat([y, x]),
            "embedding": lambda: F.embedding(ids, w),
        }
        for name, fn in cases.items():
            try:
                out[name] = str(fn().dtype)[6:]
            except Exception as exc:  # an op the device lacks under autocast
                out[name] = f"error: {type(exc).__name__}"
    return out


def memory_rows(device: str) -> list[dict[str, Any]]:
    from memfit.trace import tracker as tracker_module

    cuda = device == "cuda"
    original_reset = tracker_module.MemoryTracker.reset_peak

    def reset_peak(self: Any) -> None:  # training's steady state: reset the GPU's peak too
        original_reset(self)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    tracker_module.MemoryTracker.reset_peak = reset_peak
    if cuda:  # warm-up: the cuBLAS workspaces and the CUDA context exist before we measure
        for dtype in (torch.bfloat16, torch.float32, torch.float16):
            a = torch.randn(256, 256, device="cuda", dtype=dtype, requires_grad=True)
            (a @ a).sum().backward()
            F.scaled_dot_product_attention(a[None, None], a[None, None], a[None, None])
        del a
        torch.cuda.synchronize()
    workspace = torch.cuda.memory_allocated() if cuda else None
    rows = []
    cases = [("infer", n, c, InferenceOptions(**o)) for n, c, o in INFER]
    cases += [("train", n, c, TrainingOptions(**o)) for n, c, o in TRAIN]
    for workload, name, config, options in cases:
        run = trace_inference if workload == "infer" else trace_training
        row: dict[str, Any] = {"name": name, "workload": workload, "config": config,
                               "options": {k: v for k, v in vars(options).items()
                                           if v != getattr(type(options)(), k)}}
        try:
            t = time.perf_counter()
            fake = run(config, options)
            row["fake"] = {"peak_bytes": fake.peak_bytes,
                           "peak_bytes_rounded": fake.peak_bytes_rounded,
                           "peak_phase": fake.peak_phase,
                           "components": dict(fake.components), "seconds": round(
                               time.perf_counter() - t, 2)}
            if cuda:
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            torch.set_default_device(device)
            try:
                real = run(config, options, device_kind="real")
            finally:
                torch.set_default_device(None)
            row["device_tracked"] = {"peak_bytes": real.peak_bytes,
                                     "peak_bytes_rounded": real.peak_bytes_rounded,
                                     "peak_phase": real.peak_phase,
                                     "components": dict(real.components)}
            if cuda:
                torch.cuda.synchronize()
                row["max_memory_allocated"] = torch.cuda.max_memory_allocated() - base
                row["ratio_allocator_to_fake_rounded"] = round(
                    row["max_memory_allocated"] / fake.peak_bytes_rounded, 5)
                row["ratio_tracked_to_fake_rounded"] = round(
                    real.peak_bytes_rounded / fake.peak_bytes_rounded, 5)
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
            traceback.print_exc()
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "config"}), flush=True)
    tracker_module.MemoryTracker.reset_peak = original_reset
    return [{"warmup_workspace_bytes": workspace}] + rows


def refresh_fake(path: Path) -> None:
    """Recompute the fake column of a saved probe with the current tracer (CPU only)."""
    saved = json.loads(path.read_text())
    options = {n: (w, c, o) for w, cases in (("infer", INFER), ("train", TRAIN))
               for n, c, o in cases}
    for row in saved.get("memory", [])[1:]:
        workload, config, opts = options[row["name"]]
        run = trace_inference if workload == "infer" else trace_training
        cls = InferenceOptions if workload == "infer" else TrainingOptions
        fake = run(config, cls(**opts))
        row["fake_current"] = {"peak_bytes": fake.peak_bytes,
                               "peak_bytes_rounded": fake.peak_bytes_rounded,
                               "peak_phase": fake.peak_phase,
                               "components": dict(fake.components)}
        if "max_memory_allocated" in row:
            row["ratio_allocator_to_fake_current_rounded"] = round(
                row["max_memory_allocated"] / fake.peak_bytes_rounded, 5)
            row["ratio_tracked_to_fake_current_rounded"] = round(
                row["device_tracked"]["peak_bytes_rounded"] / fake.peak_bytes_rounded, 6)
        print(row["name"], fake.peak_bytes_rounded, row.get("device_tracked", {}).get(
            "peak_bytes_rounded"), row.get("max_memory_allocated"), flush=True)
    saved["refreshed"] = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__}
    path.write_text(json.dumps(saved, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("cuda_probe.json")))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--refresh-fake", metavar="FILE")
    args = parser.parse_args()
    if args.refresh_fake:
        refresh_fake(Path(args.refresh_fake))
        return
    try:
        import transformers

        hf_version = transformers.__version__
    except ImportError:
        hf_version = None
    result: dict[str, Any] = {
        "schema": 1, "date": time.strftime("%Y-%m-%d"), "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor(),
        "versions": {"torch": torch.__version__, "transformers": hf_version,
                     "cuda": torch.version.cuda, "python": platform.python_version()},
    }
    print(json.dumps(result), flush=True)
    result["sdpa"] = {"device": sdpa_choices(args.device), "cpu": sdpa_choices("cpu")}
    result["autocast"] = {"device": autocast_dtypes(args.device, False),
                          "cpu": autocast_dtypes("cpu", False),
                          "cpu_emulating_cuda": autocast_dtypes("cpu", True)}
    print(json.dumps(result["autocast"], indent=1), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if not args.skip_memory and hf_version is not None:
        result["memory"] = memory_rows(args.device)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
