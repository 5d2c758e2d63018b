"""Golden files for the text views, and the hand-made estimates they are rendered from.

The views are tested on fixed, hand-made :class:`Estimate` objects (not on live estimates), so
a change to an estimator never breaks a golden file; only a change to a view does. After an
intended change to a view, regenerate and review the diff:

    MEMFIT_UPDATE_GOLDEN=1 pytest tests/test_report.py tests/test_compare.py
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from memfit.memory.breakdown import Estimate, Phase, Term

GOLDEN_DIR = Path(__file__).resolve().parent
UPDATE = os.environ.get("MEMFIT_UPDATE_GOLDEN") == "1"

GiB = 2**30


def assert_golden(name: str, text: str) -> None:
    """``text`` equals ``tests/golden/<name>``; with ``MEMFIT_UPDATE_GOLDEN=1`` it is written."""
    path = GOLDEN_DIR / name
    text = text.rstrip("\n") + "\n"
    if UPDATE or not path.exists():
        path.write_text(text, encoding="utf-8")
        if not UPDATE:
            raise AssertionError(f"{path} did not exist; written now: review it and rerun")
        return
    want = path.read_text(encoding="utf-8")
    if text != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), text.splitlines(True),
                                            fromfile=f"golden/{name}", tofile="now"))
        raise AssertionError(f"{name} differs (MEMFIT_UPDATE_GOLDEN=1 to accept):\n{diff}")


def infer_estimate(gpu: bool = True) -> Estimate:
    """An inference estimate shaped like Llama-2-7B's at batch 1, 2048 + 128 tokens."""
    options = {"batch": 1, "prompt": 2048, "generate": 128, "weights": None, "kv_dtype": None,
               "attn": "sdpa", "logits": "last", "engine": "hf", "tp": 1, "pp": 1, "ep": 1,
               "gpu": "rtx-4090" if gpu else None, "gpu_memory_utilization": 0.9,
               "block_size": 16, "n_gpu_layers": None}
    w = 13_476_839_424
    kv_p = 1_073_741_824
    kv = 1_140_850_688
    phases = (
        Phase("load", {"weights": w}),
        Phase("prefill", {"weights": w, "activations": 352_321_536, "kv_cache": kv_p,
                          "logits": 262_144}),
        Phase("decode", {"weights": w, "activations": 1_048_576, "kv_cache": kv}),
    )
    terms = (
        Term("weights", w, "P * b_w", "6738415616 * 2 + 64 * 4", "PyTorch dtypes"),
        Term("kv_cache", kv, "2 * L * a_kv * d * T * B * b_kv", "2 * 32 * 32 * 128 * 2176 * 1 * 2",
             "transformers/cache_utils.py DynamicCache"),
        Term("cuda_context", 536_870_912, "C_ctx", "536870912", "measured on an H100"),
    )
    return Estimate(mode="infer", model="llama-2-7b", options=options, phases=phases,
                    overheads={"cuda_context": 536_870_912, "allocator_slack": 100_000_000},
                    terms=terms,
                    assumptions={"engine": "hf (transformers generate, DynamicCache)",
                                 "weights": "bf16", "kv_dtype": "bf16", "attention": "sdpa",
                                 "notes": []},
                    gpu="rtx-4090" if gpu else None,
                    gpu_memory_bytes=25_757_220_864 if gpu else None,
                    extras={"peak_moment": "prefill/mlp", "kv_bytes_per_token": 524_288,
                            "moments": {"prefill/mlp": 352_321_536, "decode/logits": 1_048_576}})


def train_estimate() -> Estimate:
    """A training estimate shaped like Llama-2-7B's in bf16-mixed AdamW, seq 2048, one GPU."""
    P = 6_738_415_616
    options = {"batch": 1, "seq": 2048, "precision": "bf16-mixed", "optimizer": "adamw",
               "optimizer_impl": "foreach", "checkpointing": "none", "attn": "sdpa", "dp": 1,
               "zero": 0, "fsdp": None, "tp": 1, "sp": False, "pp": 1, "microbatches": 1,
               "cp": 1, "ep": 1, "lora_rank": None, "qlora": False, "offload": "none",
               "gpu": "h100-sxm"}
    phases = (
        Phase("forward", {"weights": 4 * P, "optimizer_states": 8 * P,
                          "activations": 30 * GiB, "logits": 2 * GiB}),
        Phase("backward", {"weights": 4 * P, "optimizer_states": 8 * P,
                           "gradients": 2 * P, "activations": 31 * GiB}),
        Phase("optimizer", {"weights": 4 * P, "gradients": 4 * P, "optimizer_states": 8 * P,
                            "temporaries": 4 * P, "activations": 32_768}),
    )
    terms = (
        Term("weights", 4 * P, "P * b_w", f"{P} * 4", "ZeRO (Rajbhandari et al. 2020)"),
        Term("optimizer_state", 8 * P, "2 * P * b_s / N", f"2 * {P} * 4 / 1",
             "torch/optim/adam.py", note="AdamW keeps m and v"),
    )
    return Estimate(mode="train", model="llama-2-7b", options=options, phases=phases,
                    overheads={"cuda_context": 536_870_912, "allocator_slack": 12 * GiB},
                    terms=terms,
                    assumptions={"precision_recipe": "bf16-mixed",
                                 "model_states_convention": "torch.autocast: fp32 weights, "
                                 "grads, states 4 + 4 + 8 = 16 bytes/param",
                                 "bytes_per_param": {"weights": 4, "gradients": 4, "master": 0,
                                                     "optimizer_state_element": 4},
                                 "optimizer": "adamw (foreach)",
                                 "trainable_params_on_rank": P,
                                 "notes": ["a note that is long enough to be wrapped over more "
                                           "than one line of the report, so the wrapping of "
                                           "notes is tested as well"]},
                    gpu="h100-sxm", gpu_memory_bytes=85_520_809_984, host_bytes=3 * GiB,
                    extras={"world_size": 1})


def fit_infer_result() -> Any:
    """Shaped like ``memfit.inference.FitResult`` (the views read attributes only)."""
    return SimpleNamespace(
        model="llama-2-7b", gpu="rtx-4090", gpu_memory_bytes=25_757_220_864, engine="vllm",
        options=infer_estimate().options | {"engine": "vllm"}, fits=True, max_batch=37,
        max_prompt=30_001, min_gpus=1, layout={"tp": 1, "pp": 1}, kv_cache_tokens=12_345,
        kv_cache_blocks=772, max_concurrency=5, total_bytes=21 * GiB,
        notes=("a note from the solver",))


def fit_train_result() -> Any:
    """Shaped like ``memfit.training.FitResult`` with two ``LayoutFit`` rows."""
    def lay(dp: int, tp: int, zero: int, fsdp: Any, ckpt: str, peak: int) -> Any:
        return SimpleNamespace(dp=dp, tp=tp, pp=1, cp=1, ep=1, zero=zero, fsdp=fsdp,
                               checkpointing=ckpt, offload="none", peak_bytes=peak,
                               total_bytes=peak + 4 * GiB,
                               headroom_bytes=85_520_809_984 - peak - 4 * GiB)

    return SimpleNamespace(model="llama-2-7b", gpu="h100-sxm", gpus=8,
                           gpu_memory_bytes=85_520_809_984, max_batch=6, max_seq=12_288,
                           estimate=train_estimate(),
                           layouts=(lay(8, 1, 3, None, "none", 30 * GiB),
                                    lay(4, 2, 0, "full", "selective", 40 * GiB)))
