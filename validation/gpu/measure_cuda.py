#!/usr/bin/env python3
"""Measure real CUDA memory of transformer inference and training runs, for memfit's validation.

Self-contained: imports only the standard library, torch, transformers and (optionally) pynvml.
It does NOT import memfit. Every model is built from an embedded config with random weights
(no network, no downloads).

Run (on a GPU machine)::

    python validation/gpu/measure_cuda.py --out $OUT/gpu_measurements.json \
        [--budget-s 420] [--only ID]

Test (CPU only, tiny configs, CUDA-only figures recorded as null)::

    python validation/gpu/measure_cuda.py --device cpu --tiny --out /tmp/m.json

The parent process never initialises CUDA. It measures the bare CUDA context in one child
process, then runs every case in its own child process (``--case ID``, a fresh CUDA context each,
so NVML/nvidia-smi figures are clean), one after the other, most important first. The JSON file
is rewritten after every case, so a run cut short still leaves its results. See README.md for
the scenarios and the output schema.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import fnmatch
import inspect
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

SCHEMA_VERSION = 1
RESULT_MARK = "@@MEMFIT_CASE_RESULT@@ "
CONTEXT_ID = "context"
DEFAULT_BUDGET_S = 420.0
# Seconds a child process needs besides its measured work on the H100 machine (python start,
# importing torch and transformers, CUDA init). Used only for the budget estimate.
CHILD_OVERHEAD_S = 7.0
# Budget estimate of one --tiny case (a CPU child: python, torch and transformers imports).
TINY_EST_S = 6.0

# The memory_stats() keys recorded for every phase.
STAT_KEYS = (
    "num_alloc_retries",
    "num_ooms",
    "num_device_alloc",
    "num_device_free",
    "allocated_bytes.all.peak",
    "active_bytes.all.peak",
    "reserved_bytes.all.peak",
    "inactive_split_bytes.all.peak",
    "requested_bytes.all.peak",
)
# Of those, the ones that are peaks (reset by reset_peak_memory_stats) and the ones that count.
PEAK_STAT_KEYS = tuple(k for k in STAT_KEYS if k.endswith(".peak"))
COUNTER_STAT_KEYS = tuple(k for k in STAT_KEYS if not k.endswith(".peak"))

# ---------------------------------------------------------------------------------------------
# Models: real architectures, fields copied from each model's config.json on the Hugging Face Hub
# (only the fields that shape the network; token ids and the like are left at defaults).
# ---------------------------------------------------------------------------------------------

_LLAMA3_ROPE_1B_3B = {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                      "original_max_position_embeddings": 8192, "rope_type": "llama3"}
_LLAMA3_ROPE_8B = {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"}

MODELS: dict[str, dict] = {
    "gpt2": {
        "source": "openai-community/gpt2",
        "model_type": "gpt2",
        "config_dtype": None,  # config.json has no torch_dtype: fp32 checkpoint, bf16 for infer
        "fields": {
            "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
            "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
            "initializer_range": 0.02, "tie_word_embeddings": True,
            # config.json has 0.1 for all three; set to 0 so runs are deterministic and the
            # dropout masks do not add memory that memfit does not model.
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        },
        "notes": "dropout set to 0 (config.json: resid_pdrop=embd_pdrop=attn_pdrop=0.1)",
    },
    "qwen2.5-0.5b": {
        "source": "Qwen/Qwen2.5-0.5B",
        "model_type": "qwen2",
        "config_dtype": "bfloat16",
        "fields": {
            "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
            "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
            "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
            "hidden_act": "silu", "tie_word_embeddings": True, "use_sliding_window": False,
            "sliding_window": 32768, "max_window_layers": 24, "attention_dropout": 0.0,
        },
    },
    "qwen2.5-1.5b": {
        "source": "Qwen/Qwen2.5-1.5B",
        "model_type": "qwen2",
        "config_dtype": "bfloat16",
        "fields": {
            "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960,
            "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
            "max_position_embeddings": 131072, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
            "hidden_act": "silu", "tie_word_embeddings": True, "use_sliding_window": False,
            "sliding_window": 131072, "max_window_layers": 28, "attention_dropout": 0.0,
        },
    },
    "llama-3.2-1b": {
        "source": "meta-llama/Llama-3.2-1B",
        "model_type": "llama",
        "config_dtype": "bfloat16",
        "fields": {
            "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
            "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 64, "max_position_embeddings": 131072, "rope_theta": 500000.0,
            "rope_scaling": _LLAMA3_ROPE_1B_3B, "rms_norm_eps": 1e-5, "hidden_act": "silu",
            "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False,
            "attention_dropout": 0.0,
        },
    },
    "llama-3.2-3b": {
        "source": "meta-llama/Llama-3.2-3B",
        "model_type": "llama",
        "config_dtype": "bfloat16",
        "fields": {
            "vocab_size": 128256, "hidden_size": 3072, "intermediate_size": 8192,
            "num_hidden_layers": 28, "num_attention_heads": 24, "num_key_value_heads": 8,
            "head_dim": 128, "max_position_embeddings": 131072, "rope_theta": 500000.0,
            "rope_scaling": _LLAMA3_ROPE_1B_3B, "rms_norm_eps": 1e-5, "hidden_act": "silu",
            "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False,
            "attention_dropout": 0.0,
        },
    },
    "llama-3.1-8b": {
        "source": "meta-llama/Llama-3.1-8B",
        "model_type": "llama",
        "config_dtype": "bfloat16",
        "fields": {
            "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 128, "max_position_embeddings": 131072, "rope_theta": 500000.0,
            "rope_scaling": _LLAMA3_ROPE_8B, "rms_norm_eps": 1e-5, "hidden_act": "silu",
            "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
            "attention_dropout": 0.0,
        },
    },
    "mistral-7b-v0.1": {
        "source": "mistralai/Mistral-7B-v0.1",
        "model_type": "mistral",
        "config_dtype": "bfloat16",
        "fields": {
            "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
            "max_position_embeddings": 32768, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
            "hidden_act": "silu", "sliding_window": 4096, "tie_word_embeddings": False,
            "attention_dropout": 0.0,
        },
    },
    "mixtral-small": {
        "source": "Mixtral-8x7B-v0.1 shape, scaled down (not a released model)",
        "model_type": "mixtral",
        "config_dtype": "bfloat16",
        "fields": {
            "vocab_size": 32000, "hidden_size": 1024, "intermediate_size": 3584,
            "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 8,
            "num_local_experts": 8, "num_experts_per_tok": 2, "max_position_embeddings": 32768,
            "rope_theta": 1000000.0, "rms_norm_eps": 1e-5, "hidden_act": "silu",
            "sliding_window": None, "tie_word_embeddings": False, "router_jitter_noise": 0.0,
            "output_router_logits": False, "attention_dropout": 0.0,
        },
    },
    "qwen3-moe-small": {
        "source": "Qwen3-30B-A3B shape, scaled down (not a released model)",
        "model_type": "qwen3_moe",
        "config_dtype": "bfloat16",
        "fields": {
            "vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072,
            "moe_intermediate_size": 768, "num_hidden_layers": 8, "num_attention_heads": 16,
            "num_key_value_heads": 4, "head_dim": 128, "num_experts": 32,
            "num_experts_per_tok": 4, "norm_topk_prob": True, "decoder_sparse_step": 1,
            "mlp_only_layers": [], "max_position_embeddings": 40960, "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": False,
            "use_sliding_window": False, "sliding_window": None, "output_router_logits": False,
            "attention_bias": False, "attention_dropout": 0.0,
        },
    },
}

# Tiny versions (--tiny): same architecture and code paths, 2 layers, hidden 64, vocab 512.
TINY_COMMON = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
               "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 256}
_TINY_LLAMA = {**TINY_COMMON, "num_key_value_heads": 2, "head_dim": 16,
               "rope_scaling": {**_LLAMA3_ROPE_1B_3B, "original_max_position_embeddings": 64}}
TINY_OVERRIDES: dict[str, dict] = {
    "gpt2": {"vocab_size": 512, "n_positions": 128, "n_embd": 64, "n_layer": 2, "n_head": 4,
             "bos_token_id": 0, "eos_token_id": 0},
    "qwen2.5-0.5b": {**TINY_COMMON, "num_key_value_heads": 2, "sliding_window": 256,
                     "max_window_layers": 2},
    "qwen2.5-1.5b": {**TINY_COMMON, "num_key_value_heads": 2, "sliding_window": 256,
                     "max_window_layers": 2},
    "llama-3.2-1b": _TINY_LLAMA,
    "llama-3.2-3b": _TINY_LLAMA,
    "llama-3.1-8b": _TINY_LLAMA,
    # Window smaller than the tiny prompts, so the sliding-window path is exercised.
    "mistral-7b-v0.1": {**TINY_COMMON, "num_key_value_heads": 2, "sliding_window": 24},
    "mixtral-small": {**TINY_COMMON, "num_key_value_heads": 2, "num_local_experts": 4,
                      "num_experts_per_tok": 2},
    "qwen3-moe-small": {**TINY_COMMON, "num_key_value_heads": 2, "head_dim": 16,
                        "moe_intermediate_size": 32, "num_experts": 4, "num_experts_per_tok": 2},
}

# ---------------------------------------------------------------------------------------------
# Cases, most important first. est_s: rough H100 seconds including the child's start-up.
# ---------------------------------------------------------------------------------------------


def _train(model, precision, impl, batch, seq, ckpt="none", attn="sdpa", est_s=12.0):
    return {"kind": "train", "model": model, "precision": precision, "optimizer": "adamw",
            "optimizer_impl": impl, "batch": batch, "seq": seq, "checkpointing": ckpt,
            "attn": attn, "est_s": est_s}


def _infer(model, batch, prompt, generate, attn="sdpa", logits="last", dtype="bf16",
           cache="plain", est_s=10.0):
    return {"kind": "infer", "model": model, "dtype": dtype, "batch": batch, "prompt": prompt,
            "generate": generate, "attn": attn, "logits": logits, "cache": cache, "est_s": est_s}


CASES: list[dict] = [
    # The defaults (bf16-mixed, foreach AdamW, sdpa) on a mid-size model, train and infer.
    _train("llama-3.2-1b", "bf16-mixed", "foreach", 4, 2048, est_s=14),
    _infer("llama-3.2-1b", 32, 4096, 32, est_s=12),
    # Logits dominate: tied 151936 vocabulary on a 0.5B model.
    _train("qwen2.5-0.5b", "bf16-mixed", "foreach", 4, 2048, est_s=12),
    # 7B: fits 80 GB only in bf16-true with fused AdamW (14.5 weights + 14.5 grads + 29 state).
    _train("mistral-7b-v0.1", "bf16-true", "fused", 1, 2048, est_s=25),
    _infer("mistral-7b-v0.1", 8, 4096, 64, est_s=20),
    # Checkpointing on/off, same model and shape.
    _train("qwen2.5-1.5b", "bf16-true", "foreach", 2, 2048, ckpt="none", est_s=12),
    _train("qwen2.5-1.5b", "bf16-true", "foreach", 2, 2048, ckpt="full", est_s=12),
    # fp32 recipe, small model; then the same in bf16-mixed.
    _train("gpt2", "fp32", "foreach", 8, 1024, est_s=10),
    _infer("qwen2.5-0.5b", 16, 2048, 16, est_s=10),
    # Eager attention (materialised scores) and all-position logits.
    _infer("qwen2.5-0.5b", 4, 2048, 16, attn="eager", logits="all", est_s=10),
    _train("llama-3.2-1b", "bf16-mixed", "fused", 4, 2048, est_s=14),
    _train("llama-3.2-1b", "fp32", "forloop", 2, 1024, est_s=14),
    _train("llama-3.2-3b", "bf16-true", "fused", 2, 4096, ckpt="full", est_s=18),
    _infer("llama-3.2-3b", 8, 8192, 32, est_s=16),
    _infer("llama-3.2-1b", 1, 32768, 8, est_s=12),
    _infer("llama-3.1-8b", 1, 8192, 32, est_s=18),
    _train("mixtral-small", "bf16-mixed", "foreach", 4, 1024, est_s=14),
    _infer("mixtral-small", 8, 2048, 16, est_s=10),
    _infer("mistral-7b-v0.1", 1, 16384, 16, est_s=18),
    _train("gpt2", "bf16-mixed", "foreach", 8, 1024, est_s=10),
    # GPT-2 has 1024 learned positions: prompt + generate must stay <= 1024.
    _infer("gpt2", 8, 992, 32, est_s=9),
    _infer("qwen3-moe-small", 4, 2048, 16, est_s=10),
    _train("qwen2.5-0.5b", "bf16-true", "fused", 4, 2048, est_s=12),
    # Same as the mistral p16384 case, but with the cache generate() builds
    # (DynamicCache(config=...)), which keeps only the sliding window.
    _infer("mistral-7b-v0.1", 1, 16384, 16, cache="config", est_s=18),
]


def case_id(c: dict) -> str:
    if c["kind"] == "train":
        s = (f"{c['model']}.train.{c['precision']}.{c['optimizer_impl']}"
             f".b{c['batch']}.s{c['seq']}.ckpt-{c['checkpointing']}")
        if c["attn"] != "sdpa":
            s += f".attn-{c['attn']}"
        return s
    s = (f"{c['model']}.infer.{c['dtype']}.b{c['batch']}.p{c['prompt']}.g{c['generate']}"
         f".{c['attn']}.logits-{c['logits']}")
    if c.get("cache", "plain") != "plain":
        s += f".cache-{c['cache']}"
    return s


for _c in CASES:
    _c["id"] = case_id(_c)
assert len({c["id"] for c in CASES}) == len(CASES), "duplicate case ids"
CASES_BY_ID = {c["id"]: c for c in CASES}


def tiny_case(c: dict) -> dict:
    """The same scenario at a CPU-friendly size (the id stays the full-size one)."""
    t = dict(c)
    if c["kind"] == "train":
        t["batch"] = min(c["batch"], 2)
        t["seq"] = 32
    else:
        t["batch"] = min(c["batch"], 2)
        t["prompt"] = 40  # above the tiny mistral sliding window (24)
        t["generate"] = min(c["generate"], 3)
    return t


def model_fields(name: str, tiny: bool) -> dict:
    """The config fields of a case (a deep copy: transformers edits nested dicts in place)."""
    fields = copy.deepcopy(MODELS[name]["fields"])
    if tiny:
        fields.update(copy.deepcopy(TINY_OVERRIDES[name]))
    return fields


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def log(msg: str) -> None:
    print(msg, flush=True)


def _err(e: BaseException) -> dict:
    tb = traceback.format_exc()
    return {"type": type(e).__name__, "message": str(e)[:2000], "traceback_tail": tb[-4000:]}


def _json_default(o):
    try:
        import torch
        if isinstance(o, torch.dtype):
            return str(o).replace("torch.", "")
    except Exception:  # noqa: BLE001
        pass
    if isinstance(o, (set, tuple)):
        return list(o)
    return repr(o)


def write_json_atomic(path: str, obj: dict) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


def tensor_device(device: str) -> str:
    """Where tensors go for ``device`` (a seam for the tests, which fake CUDA on a CPU)."""
    return device


def nvml_index() -> int | str:
    """The NVML index (or UUID) of the device CUDA calls device 0."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if cvd.isdigit():
        return int(cvd)
    if cvd.startswith(("GPU-", "MIG-")):
        return cvd
    return 0


class Nvml:
    """Device memory as the driver sees it: NVML, else nvidia-smi, else nothing."""

    def __init__(self) -> None:
        self.source = None
        self.handle = None
        self.index = nvml_index()
        self.error = None
        self._pynvml = None
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            if isinstance(self.index, str):
                self.handle = pynvml.nvmlDeviceGetHandleByUUID(self.index)
            else:
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            self._pynvml = pynvml
            self.source = "nvml"
        except Exception as e:  # noqa: BLE001
            self.error = f"{type(e).__name__}: {e}"
            if shutil.which("nvidia-smi") and self._smi("memory.used") is not None:
                self.source = "nvidia-smi"

    def _smi(self, field: str) -> str | None:
        try:
            cmd = ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits",
                   "-i", str(self.index)]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            if out.returncode != 0:
                return None
            return out.stdout.strip().splitlines()[0].strip()
        except Exception:  # noqa: BLE001
            return None

    def used(self) -> int | None:
        """Device memory used, bytes (NVML v1 ``used``; nvidia-smi's memory.used in MiB)."""
        if self.source == "nvml":
            try:
                return int(self._pynvml.nvmlDeviceGetMemoryInfo(self.handle).used)
            except Exception:  # noqa: BLE001
                return None
        if self.source == "nvidia-smi":
            v = self._smi("memory.used")
            try:
                return int(float(v)) * 2**20
            except (TypeError, ValueError):
                return None
        return None

    def info(self) -> dict:
        """Every memory figure the driver gives: v1 total/free/used, v2 used/reserved, smi."""
        d: dict = {"source": self.source}
        if self.source == "nvml":
            p = self._pynvml
            try:
                m = p.nvmlDeviceGetMemoryInfo(self.handle)
                d.update(total=int(m.total), free=int(m.free), used=int(m.used))
            except Exception as e:  # noqa: BLE001
                d["v1_error"] = repr(e)
            try:
                m2 = p.nvmlDeviceGetMemoryInfo(self.handle, version=p.nvmlMemory_v2)
                d.update(v2_total=int(m2.total), v2_free=int(m2.free), v2_used=int(m2.used),
                         v2_reserved=int(m2.reserved))
            except Exception as e:  # noqa: BLE001
                d["v2_error"] = f"{type(e).__name__}: {e}"
        elif self.source == "nvidia-smi":
            d["used"] = self.used()
        smi = self._smi("memory.used,memory.reserved,memory.total") if shutil.which(
            "nvidia-smi") else None
        if smi:
            parts = [x.strip() for x in smi.split(",")]
            d["smi_used_mib_reserved_mib_total_mib"] = parts
        return d

    def process_used(self, pid: int) -> dict | None:
        """NVML's per-process usedGpuMemory for ``pid`` (and all processes, for containers)."""
        if self.source != "nvml":
            return None
        p = self._pynvml
        try:
            procs = p.nvmlDeviceGetComputeRunningProcesses(self.handle)
        except Exception as e:  # noqa: BLE001
            return {"error": repr(e)}
        entries = []
        mine = None
        for pr in procs:
            used = getattr(pr, "usedGpuMemory", None)
            used = int(used) if isinstance(used, int) else None
            entries.append({"pid": int(pr.pid), "used": used})
            if int(pr.pid) == pid:
                mine = used
        return {"this_pid": mine, "all": entries}


class NvmlSampler(threading.Thread):
    """Samples NVML used memory every ``period`` seconds; keeps the overall and per-mark max."""

    def __init__(self, nvml: Nvml, period: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.nvml = nvml
        self.period = period
        self._stop_evt = threading.Event()
        self._lock = threading.Lock()
        self.max_all = None
        self._max_mark = None
        self.samples = 0

    def run(self) -> None:
        while not self._stop_evt.is_set():
            u = self.nvml.used()
            if u is not None:
                with self._lock:
                    self.samples += 1
                    self.max_all = u if self.max_all is None else max(self.max_all, u)
                    self._max_mark = u if self._max_mark is None else max(self._max_mark, u)
            self._stop_evt.wait(self.period)

    def mark(self) -> int | None:
        """Max since the previous mark (and start a new window)."""
        with self._lock:
            m, self._max_mark = self._max_mark, None
        return m

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=2)


# ---------------------------------------------------------------------------------------------
# Child side: one case in this process
# ---------------------------------------------------------------------------------------------


class Probe:
    """CUDA memory readings that become None on CPU."""

    def __init__(self, device: str, nvml: Nvml | None) -> None:
        import torch

        self.torch = torch
        self.cuda = device == "cuda"
        self.nvml = nvml if self.cuda else None
        self.sampler: NvmlSampler | None = None

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def allocated(self):
        return int(self.torch.cuda.memory_allocated()) if self.cuda else None

    def reserved(self):
        return int(self.torch.cuda.memory_reserved()) if self.cuda else None

    def max_allocated(self):
        return int(self.torch.cuda.max_memory_allocated()) if self.cuda else None

    def max_reserved(self):
        return int(self.torch.cuda.max_memory_reserved()) if self.cuda else None

    def stats(self) -> dict | None:
        if not self.cuda:
            return None
        s = self.torch.cuda.memory_stats()
        return {k: (int(s[k]) if k in s else None) for k in STAT_KEYS}

    def nvml_used(self):
        return self.nvml.used() if self.nvml is not None else None

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        if self.sampler is not None:
            self.sampler.mark()

    def phase(self, name: str, fn, out: dict):
        """Run ``fn`` as one phase: peak stats reset before, everything recorded after."""
        self.reset_peak()
        rec: dict = {"allocated_before": self.allocated(), "reserved_before": self.reserved()}
        out[name] = rec
        t0 = time.perf_counter()
        try:
            result = fn()
            self.sync()
        finally:
            # Recorded also when fn raised (an OOM inside the phase still has its peak).
            rec["time_s"] = round(time.perf_counter() - t0, 4)
            rec["max_allocated"] = self.max_allocated()
            rec["max_reserved"] = self.max_reserved()
            rec["allocated_after"] = self.allocated()
            rec["reserved_after"] = self.reserved()
            rec["nvml_used_after"] = self.nvml_used()
            rec["nvml_sampler_max"] = self.sampler.mark() if self.sampler is not None else None
            rec["stats"] = self.stats()
        return result


def combine_phases(phases: list[dict]) -> dict:
    """Overall figures of consecutive phases (each reset its peaks at its start)."""

    def mx(vals):
        vals = [v for v in vals if v is not None]
        return max(vals) if vals else None

    out = {
        "max_memory_allocated": mx(p.get("max_allocated") for p in phases),
        "max_memory_reserved": mx(p.get("max_reserved") for p in phases),
        "nvml_sampler_max": mx(p.get("nvml_sampler_max") for p in phases),
    }
    # The phase holding the allocated peak, and NVML sampled right after it.
    peak_phase = None
    best = None
    for p in phases:
        v = p.get("max_allocated")
        if v is not None and (best is None or v > best):
            best, peak_phase = v, p
    out["nvml_used_at_peak"] = peak_phase.get("nvml_used_after") if peak_phase else None
    stats = [p.get("stats") for p in phases if p.get("stats")]
    if stats:
        s = {k: mx(st.get(k) for st in stats) for k in PEAK_STAT_KEYS}
        s.update({k: stats[-1].get(k) for k in COUNTER_STAT_KEYS})
        out["memory_stats"] = s
    else:
        out["memory_stats"] = None
    return out


def tensor_bytes_unique(tensors) -> int:
    seen = set()
    total = 0
    for t in tensors:
        if t is None:
            continue
        try:
            key = (t.untyped_storage().data_ptr(), t.device.type)
        except Exception:  # noqa: BLE001
            key = (id(t), "?")
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def model_summary(model) -> dict:
    import torch

    params = list(model.parameters())  # unique (tied weights appear once)
    dtypes: dict[str, int] = {}
    for p in params:
        k = str(p.dtype).replace("torch.", "")
        dtypes[k] = dtypes.get(k, 0) + p.numel()
    cfg = model.config
    return {
        "class": type(model).__name__,
        "num_params": int(sum(p.numel() for p in params)),
        "trainable_params": int(sum(p.numel() for p in params if p.requires_grad)),
        "param_bytes": int(tensor_bytes_unique(params)),
        "buffer_bytes": int(tensor_bytes_unique(list(model.buffers()))),
        "param_dtypes": dtypes,
        "attn_implementation": getattr(cfg, "_attn_implementation", None),
        "experts_implementation": getattr(cfg, "_experts_implementation", None),
        "tied_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
        "device": str(next(iter(params)).device) if params else None,
        "torch_default_dtype": str(torch.get_default_dtype()),
    }


def config_summary(cfg) -> dict:
    d = cfg.to_dict()
    for k in ("id2label", "label2id", "architectures", "transformers_version", "_name_or_path",
              "task_specific_params"):
        d.pop(k, None)
    return d


def forward_param_names(model) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def cache_bytes(cache) -> int | None:
    try:
        layers = getattr(cache, "layers", None)
        tensors = []
        if layers is not None:
            for layer in layers:
                tensors += [getattr(layer, "keys", None), getattr(layer, "values", None)]
        else:  # older layout
            tensors = (list(getattr(cache, "key_cache", []))
                       + list(getattr(cache, "value_cache", [])))
        import torch

        tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
        return int(tensor_bytes_unique(tensors))
    except Exception:  # noqa: BLE001
        return None


def build_model(spec: dict, fields: dict, dtype, attn: str, device: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(spec["model_type"], **copy.deepcopy(fields))
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn)
            how = "dtype"
        except TypeError as e:
            if "dtype" not in str(e):
                raise
            model = AutoModelForCausalLM.from_config(cfg, torch_dtype=dtype,
                                                     attn_implementation=attn)
            how = "torch_dtype"
    return model, cfg, how


def run_case_here(cid: str, device: str, tiny: bool, nvml: Nvml | None,
                  nvml_before_init: int | None) -> dict:
    """Run one case in this process and return its record (never raises)."""
    import torch

    t_start = time.perf_counter()
    c = CASES_BY_ID[cid]
    sc = tiny_case(c) if tiny else dict(c)
    spec = MODELS[sc["model"]]
    fields = model_fields(sc["model"], tiny)
    rec: dict = {"id": cid, "status": "running", "error": None, "oom": False}
    scenario = {k: v for k, v in sc.items() if k not in ("est_s", "id")}
    scenario.update(model_type=spec["model_type"], source=spec["source"],
                    config_fields=fields, config_dtype=spec.get("config_dtype"),
                    notes=spec.get("notes"), device=device, tiny=tiny, seed=0)
    rec["scenario"] = scenario
    probe = Probe(device, nvml)
    cuda = device == "cuda"
    tdev = tensor_device(device)

    # --- CUDA context of this process -------------------------------------------------------
    ctx: dict = {"nvml_used_before_init": nvml_before_init}
    if cuda:
        torch.cuda.init()
        ctx["nvml_used_after_init"] = probe.nvml_used()
        torch.empty(1, device=tdev)
        torch.cuda.synchronize()
        ctx["nvml_used_after_first_alloc"] = probe.nvml_used()
        ctx["reserved_after_first_alloc"] = probe.reserved()
        if nvml_before_init is not None and ctx["nvml_used_after_init"] is not None:
            ctx["context_bytes"] = ctx["nvml_used_after_init"] - nvml_before_init
        if nvml_before_init is not None and ctx["nvml_used_after_first_alloc"] is not None:
            ctx["context_bytes_after_first_alloc_minus_reserved"] = (
                ctx["nvml_used_after_first_alloc"] - nvml_before_init - probe.reserved())
        if nvml is not None and nvml.source == "nvml":
            probe.sampler = NvmlSampler(nvml)
            probe.sampler.start()
    rec["context"] = ctx
    rec["timings"] = {}
    phases: dict = {}
    rec["phases"] = phases
    try:
        torch.manual_seed(0)
        # --- build ------------------------------------------------------------------------
        if sc["kind"] == "train":
            wdtype = torch.bfloat16 if sc["precision"] == "bf16-true" else torch.float32
        else:
            wdtype = {"bf16": torch.bfloat16, "fp16": torch.float16,
                      "fp32": torch.float32}[sc["dtype"]]
        scenario["weights_dtype"] = str(wdtype).replace("torch.", "")
        t0 = time.perf_counter()
        model, cfg, how = build_model(spec, fields, wdtype, sc["attn"], tdev)
        probe.sync()
        rec["timings"]["build_s"] = round(time.perf_counter() - t0, 3)
        scenario["from_config_dtype_kwarg"] = how
        scenario["config_resolved"] = config_summary(cfg)
        rec["model"] = model_summary(model)
        rec["weights_bytes"] = probe.allocated()
        rec["reserved_after_build"] = probe.reserved()
        rec["max_allocated_during_build"] = probe.max_allocated()
        rec["nvml_used_after_build"] = probe.nvml_used()
        names = forward_param_names(model)
        cache_kw = "cache" if "cache" in names else "past_key_values"
        has_ltk = "logits_to_keep" in names
        scenario["cache_kwarg"] = cache_kw
        scenario["logits_to_keep_supported"] = has_ltk

        vocab = int(cfg.vocab_size)
        if sc["kind"] == "infer":
            _run_infer(torch, model, cfg, sc, scenario, rec, probe, phases, vocab, cache_kw,
                       has_ltk, tdev)
        else:
            _run_train(torch, model, sc, scenario, rec, probe, phases, vocab, tdev)
        rec["status"] = "ok"
    except BaseException as e:  # noqa: BLE001  (OOM, any exception: record and go on)
        is_oom = isinstance(e, getattr(torch.cuda, "OutOfMemoryError", ())) or (
            "out of memory" in str(e).lower())
        rec["oom"] = bool(is_oom)
        rec["status"] = "oom" if is_oom else "error"
        rec["error"] = _err(e)
        if isinstance(e, KeyboardInterrupt):
            rec["status"] = "interrupted"
    finally:
        if probe.sampler is not None:
            probe.sampler.stop()
            rec["nvml_sampler"] = {"samples": probe.sampler.samples,
                                   "max_all": probe.sampler.max_all,
                                   "period_s": probe.sampler.period}
        else:
            rec["nvml_sampler"] = None
        # Whatever phases ran (also on failure), summarised.
        if rec.get("status") != "ok" and "max_memory_allocated" not in rec:
            done = [p for k, p in _flat_phases(phases)]
            if done:
                rec["partial"] = combine_phases(done)
        if cuda:
            rec["process_nvml"] = nvml.process_used(os.getpid()) if nvml else None
            try:
                rec["memory_stats_final"] = probe.stats()
            except Exception:  # noqa: BLE001
                rec["memory_stats_final"] = None
        rec["timings"]["case_s"] = round(time.perf_counter() - t_start, 3)
    _derive(rec, cuda)
    return rec


def _flat_phases(phases: dict):
    for k, v in phases.items():
        if isinstance(v, dict) and "max_allocated" in v:
            yield k, v
        elif isinstance(v, dict):
            for k2, v2 in v.items():
                if isinstance(v2, dict) and "max_allocated" in v2:
                    yield f"{k}.{k2}", v2


def _derive(rec: dict, cuda: bool) -> None:
    """Handy differences: what NVML shows beyond PyTorch's reserved pool, per process."""
    if not cuda:
        rec["nvml_process_bytes_at_peak"] = None
        rec["nvml_minus_reserved_at_peak"] = None
        return
    base = rec.get("context", {}).get("nvml_used_before_init")
    at_peak = rec.get("nvml_used_at_peak")
    rec["nvml_process_bytes_at_peak"] = (at_peak - base) if (at_peak is not None and
                                                              base is not None) else None
    res = rec.get("max_memory_reserved")
    rec["nvml_minus_reserved_at_peak"] = (rec["nvml_process_bytes_at_peak"] - res) if (
        rec["nvml_process_bytes_at_peak"] is not None and res is not None) else None
    smax = rec.get("nvml_sampler_max")
    rec["nvml_sampler_max_process_bytes"] = (smax - base) if (smax is not None and
                                                               base is not None) else None


def _run_infer(torch, model, cfg, sc, scenario, rec, probe, phases, vocab, cache_kw, has_ltk,
               device):
    from transformers import DynamicCache

    model.eval()
    b, p, g = sc["batch"], sc["prompt"], sc["generate"]
    ids = torch.randint(0, vocab, (b, p), device=device)
    if sc.get("cache", "plain") == "config":
        cache = DynamicCache(config=cfg)
        scenario["cache_construction"] = "DynamicCache(config=model.config)"
    else:
        cache = DynamicCache()
        scenario["cache_construction"] = "DynamicCache()"
    scenario["procedure"] = (
        "model.eval(); torch.no_grad(): prefill model(input_ids[b,p], cache, use_cache=True, "
        "logits_to_keep=1|0); then `generate` times: next = argmax(logits[:, -1].float()), "
        "del outputs, model(next[b,1], cache, use_cache=True, logits_to_keep=1). "
        "Final cache length = prompt + generate. Peaks reset after build and between phases.")
    rec["input_bytes"] = ids.numel() * ids.element_size()
    rec["allocated_before_run"] = probe.allocated()
    ltk_prefill = 1 if sc["logits"] == "last" else 0
    state: dict = {}

    def kw(ltk):
        d = {cache_kw: cache, "use_cache": True}
        if has_ltk:
            d["logits_to_keep"] = ltk
        return d

    def prefill():
        with torch.no_grad():
            out = model(input_ids=ids, **kw(ltk_prefill))
            state["logits_shape"] = list(out.logits.shape)
            state["logits_bytes"] = out.logits.numel() * out.logits.element_size()
            # What generate() does: an fp32 copy of the last position's logits, then argmax.
            nxt = out.logits[:, -1, :].to(copy=True, dtype=torch.float32).argmax(-1, keepdim=True)
            del out
        state["next"] = nxt

    def decode():
        with torch.no_grad():
            nxt = state.pop("next")
            for _ in range(g):
                out = model(input_ids=nxt, **kw(1))
                nxt = out.logits[:, -1, :].to(copy=True, dtype=torch.float32).argmax(
                    -1, keepdim=True)
                del out
        state["next"] = nxt

    probe.phase("prefill", prefill, phases)
    rec["prefill_logits_shape"] = state.get("logits_shape")
    rec["prefill_logits_bytes"] = state.get("logits_bytes")
    rec["kv_cache_bytes_after_prefill"] = cache_bytes(cache)
    if g > 0:
        probe.phase("decode", decode, phases)
    rec["kv_cache_bytes_final"] = cache_bytes(cache)
    try:
        rec["kv_cache_seq_len_final"] = int(cache.get_seq_length())
    except Exception:  # noqa: BLE001
        rec["kv_cache_seq_len_final"] = None
    done = [phases["prefill"]] + ([phases["decode"]] if "decode" in phases else [])
    rec.update(combine_phases(done))
    rec["peak_phase"] = max(
        (k for k in ("prefill", "decode") if k in phases),
        key=lambda k: phases[k].get("max_allocated") or -1)
    rec["max_memory_allocated_prefill"] = phases["prefill"].get("max_allocated")
    rec["max_memory_allocated_decode"] = phases.get("decode", {}).get("max_allocated")


def _run_train(torch, model, sc, scenario, rec, probe, phases, vocab, device):
    prec = sc["precision"]
    if sc["checkpointing"] == "full":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif sc["checkpointing"] != "none":
        raise ValueError(f"checkpointing {sc['checkpointing']!r} not supported here")
    model.train()
    impl = sc["optimizer_impl"]
    okw = {"foreach": {"foreach": True}, "fused": {"fused": True},
           "forloop": {"foreach": False, "fused": False}}[impl]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **okw)
    scenario["optimizer_kwargs"] = {"lr": 1e-4, **okw}
    autocast = prec in ("bf16-mixed", "fp16-mixed")
    ac_dtype = torch.bfloat16 if prec == "bf16-mixed" else torch.float16
    scenario["autocast"] = f"torch.autocast({device!r}, dtype={ac_dtype})" if autocast else None
    scenario["procedure"] = (
        "model.train(); AdamW; step = loss = model(input_ids=ids, labels=ids).loss "
        "(under autocast for *-mixed; use_cache left at the config default, which HF turns off "
        "under gradient checkpointing), loss.backward(), optimizer.step(), "
        "optimizer.zero_grad(set_to_none=True). Step 1 then synchronize + reset peaks, step 2 "
        "measured; peaks reset between forward/backward/optimizer phases of each step.")
    b, s = sc["batch"], sc["seq"]
    ids = torch.randint(0, vocab, (b, s), device=device)
    rec["input_bytes"] = ids.numel() * ids.element_size()
    st: dict = {}

    def fwd():
        if autocast:
            with torch.autocast(device, dtype=ac_dtype):
                loss = model(input_ids=ids, labels=ids).loss
        else:
            loss = model(input_ids=ids, labels=ids).loss
        st["loss"] = loss

    def bwd():
        loss = st.pop("loss")
        loss.backward()
        st["loss_value"] = float(loss.detach())
        del loss

    def optim():
        opt.step()
        opt.zero_grad(set_to_none=True)

    for step in ("step1", "step2"):
        phases[step] = {}
        probe.reset_peak()
        phases[step]["allocated_at_start"] = probe.allocated()
        t0 = time.perf_counter()
        probe.phase("forward", fwd, phases[step])
        probe.phase("backward", bwd, phases[step])
        probe.phase("optimizer", optim, phases[step])
        phases[step]["time_s"] = round(time.perf_counter() - t0, 4)
        phases[step]["loss"] = st.get("loss_value")
        if step == "step1":
            rec["optimizer_state_bytes"] = _opt_state_bytes(torch, opt)
        rec.update({f"{step}_" + k: v for k, v in combine_phases(
            [phases[step][k] for k in ("forward", "backward", "optimizer")]).items()
            if k in ("max_memory_allocated", "max_memory_reserved")})
    s2 = [phases["step2"][k] for k in ("forward", "backward", "optimizer")]
    rec.update(combine_phases(s2))  # step 2 = the steady state
    rec["peak_phase"] = max(("forward", "backward", "optimizer"),
                            key=lambda k: phases["step2"][k].get("max_allocated") or -1)
    rec["allocated_before_step2"] = phases["step2"]["allocated_at_start"]
    rec["step1_memory_stats"] = combine_phases(
        [phases["step1"][k] for k in ("forward", "backward", "optimizer")])["memory_stats"]


def _opt_state_bytes(torch, opt) -> dict:
    on_dev = 0
    on_cpu = 0
    tensors = []
    for state in opt.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                tensors.append(v)
    for t in tensors:
        n = t.numel() * t.element_size()
        if t.device.type == "cpu":
            on_cpu += n
        else:
            on_dev += n
    return {"device": int(on_dev), "cpu": int(on_cpu), "tensors": len(tensors)}


def run_context_here(device: str, nvml: Nvml | None, nvml_before_init: int | None,
                     after_import_used: int | None) -> dict:
    """The bare CUDA context: NVML used before/after init, after a bf16 matmul, etc."""
    import torch

    rec: dict = {"id": CONTEXT_ID, "status": "running", "error": None}
    if device != "cuda":
        rec.update(status="skipped", reason="not on cuda", nvml_used_before_init=None)
        return rec
    rec["nvml_source"] = nvml.source if nvml else None
    rec["nvml_error"] = nvml.error if nvml else None
    pts: dict = {"before_init": nvml_before_init, "after_import_torch": after_import_used}
    rec["nvml_used"] = pts
    rec["reserved"] = {}
    rec["nvml_info_before_init"] = nvml.info() if nvml else None
    tdev = tensor_device(device)
    try:
        t0 = time.perf_counter()
        torch.cuda.init()
        pts["after_torch_cuda_init"] = nvml.used() if nvml else None
        rec["init_s"] = round(time.perf_counter() - t0, 3)
        x = torch.empty(1, device=tdev)
        torch.cuda.synchronize()
        pts["after_first_alloc"] = nvml.used() if nvml else None
        rec["reserved"]["after_first_alloc"] = int(torch.cuda.memory_reserved())
        a = torch.randn(256, 256, device=tdev, dtype=torch.bfloat16)
        (a @ a).sum().item()
        torch.cuda.synchronize()
        pts["after_bf16_matmul"] = nvml.used() if nvml else None
        rec["reserved"]["after_bf16_matmul"] = int(torch.cuda.memory_reserved())
        rec["allocated_after_bf16_matmul"] = int(torch.cuda.memory_allocated())
        # Flash SDPA and an autograd backward load more kernels (lazy module loading).
        q = torch.randn(1, 8, 128, 64, device=tdev, dtype=torch.bfloat16, requires_grad=True)
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
        torch.cuda.synchronize()
        pts["after_sdpa_fwd_bwd"] = nvml.used() if nvml else None
        rec["reserved"]["after_sdpa_fwd_bwd"] = int(torch.cuda.memory_reserved())
        del x, a, q
        free, total = torch.cuda.mem_get_info()
        rec["cuda_mem_get_info"] = {"free": int(free), "total": int(total)}
        pr = torch.cuda.get_device_properties(0)
        rec["device_properties"] = {
            "name": pr.name, "total_memory": int(pr.total_memory),
            "major": pr.major, "minor": pr.minor,
            "multi_processor_count": pr.multi_processor_count,
            "uuid": str(getattr(pr, "uuid", "")) or None,
        }
        rec["cudnn_version"] = torch.backends.cudnn.version()
        rec["cuda_runtime_version_torch"] = torch.version.cuda
        rec["cuda_module_loading"] = os.environ.get("CUDA_MODULE_LOADING")
        rec["nvml_info_after"] = nvml.info() if nvml else None
        rec["process_nvml"] = nvml.process_used(os.getpid()) if nvml else None
        b = nvml_before_init
        if b is not None:
            rec["context_bytes_after_init"] = _sub(pts.get("after_torch_cuda_init"), b)
            rec["context_bytes_after_first_alloc"] = _sub(pts.get("after_first_alloc"), b)
            rec["process_bytes_after_bf16_matmul"] = _sub(pts.get("after_bf16_matmul"), b)
            rec["non_pytorch_bytes_after_bf16_matmul"] = _sub(
                rec["process_bytes_after_bf16_matmul"], rec["reserved"]["after_bf16_matmul"])
            rec["process_bytes_after_sdpa_fwd_bwd"] = _sub(pts.get("after_sdpa_fwd_bwd"), b)
            rec["non_pytorch_bytes_after_sdpa_fwd_bwd"] = _sub(
                rec["process_bytes_after_sdpa_fwd_bwd"], rec["reserved"]["after_sdpa_fwd_bwd"])
        rec["status"] = "ok"
    except Exception as e:  # noqa: BLE001
        rec["status"] = "error"
        rec["error"] = _err(e)
    return rec


def _sub(a, b):
    return (a - b) if (a is not None and b is not None) else None


def child_main(args) -> int:
    """``--case ID``: run one case (or the context probe), print one JSON line."""
    nvml = Nvml() if args.device == "cuda" else None
    before_import = nvml.used() if nvml else None
    import torch  # noqa: F401  (importing torch does not initialise CUDA)

    before_init = nvml.used() if nvml else None
    t0 = time.perf_counter()
    try:
        if args.case == CONTEXT_ID:
            rec = run_context_here(args.device, nvml, before_import, before_init)
        else:
            if args.case not in CASES_BY_ID:
                raise SystemExit(f"unknown case {args.case!r}")
            import transformers  # noqa: F401

            rec = run_case_here(args.case, args.device, args.tiny, nvml, before_init)
            rec["context"]["nvml_used_before_import_torch"] = before_import
    except Exception as e:  # noqa: BLE001
        rec = {"id": args.case, "status": "error", "error": _err(e)}
    rec["child_s"] = round(time.perf_counter() - t0, 3)
    try:
        import resource

        rec["host_max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except Exception:  # noqa: BLE001
        pass
    sys.stdout.write(RESULT_MARK + json.dumps(rec, default=_json_default) + "\n")
    sys.stdout.flush()
    return 0


# ---------------------------------------------------------------------------------------------
# Parent side: provenance, scheduling, one child per case, the JSON file
# ---------------------------------------------------------------------------------------------


def provenance(device: str) -> dict:
    import importlib.metadata as md

    def ver(pkg):
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    p: dict = {
        "date_utc": utc_now(),
        "hostname": socket.gethostname(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": ver("torch"),
        "transformers": ver("transformers"),
        "nvidia_ml_py": ver("nvidia-ml-py"),
        "env": {k: os.environ.get(k) for k in (
            "CUDA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF",
            "CUDA_MODULE_LOADING", "CUBLAS_WORKSPACE_CONFIG", "NVIDIA_TF32_OVERRIDE")},
        "device": device,
    }
    try:
        import torch  # the parent never touches torch.cuda (no context here)

        p["torch_full"] = torch.__version__
        p["torch_cuda_runtime"] = torch.version.cuda
    except Exception as e:  # noqa: BLE001
        p["torch_import_error"] = repr(e)
    if device != "cuda":
        return p
    nv = Nvml()
    p["nvml_source"] = nv.source
    p["nvml_error"] = nv.error
    if nv.source == "nvml":
        pn = nv._pynvml
        for key, fn in (("gpu_name", lambda: pn.nvmlDeviceGetName(nv.handle)),
                        ("driver_version", pn.nvmlSystemGetDriverVersion),
                        ("cuda_driver_version", lambda: pn.nvmlSystemGetCudaDriverVersion_v2()),
                        ("gpu_uuid", lambda: pn.nvmlDeviceGetUUID(nv.handle)),
                        ("vbios", lambda: pn.nvmlDeviceGetVbiosVersion(nv.handle)),
                        ("persistence_mode", lambda: pn.nvmlDeviceGetPersistenceMode(nv.handle)),
                        ("mig_mode", lambda: pn.nvmlDeviceGetMigMode(nv.handle)),
                        ("ecc_mode", lambda: pn.nvmlDeviceGetEccMode(nv.handle)),
                        ("power_limit_mw", lambda: pn.nvmlDeviceGetPowerManagementLimit(
                            nv.handle))):
            try:
                v = fn()
                p[key] = v.decode() if isinstance(v, bytes) else v
            except Exception as e:  # noqa: BLE001
                p[key] = f"unavailable: {type(e).__name__}"
        v = p.get("cuda_driver_version")
        if isinstance(v, int):
            p["cuda_driver_version_str"] = f"{v // 1000}.{(v % 1000) // 10}"
        p["memory"] = nv.info()
        p["gpu_total_memory"] = p["memory"].get("total")
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,memory.used,driver_version",
                 "--format=csv,noheader", "-i", str(nv.index)],
                capture_output=True, text=True, timeout=20)
            p["nvidia_smi_query"] = out.stdout.strip()
            out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20)
            head = out.stdout.splitlines()[:4]
            p["nvidia_smi_header"] = head
            for line in head:
                if "CUDA Version" in line:
                    p["nvidia_smi_cuda_version"] = line.split("CUDA Version:")[1].split()[0]
            if "gpu_name" not in p:
                p["gpu_name"] = p["nvidia_smi_query"].split(",")[0].strip()
        except Exception as e:  # noqa: BLE001
            p["nvidia_smi_error"] = repr(e)
    return p


def select_cases(only: list[str] | None) -> list[dict]:
    if not only:
        return list(CASES)
    pats = [x.strip() for s in only for x in s.split(",") if x.strip()]
    sel = []
    for c in CASES:
        if any(pt == c["id"] or fnmatch.fnmatchcase(c["id"], pt) or pt in c["id"] for pt in pats):
            sel.append(c)
    return sel


def run_child(cid: str, args, timeout: float) -> tuple[dict, float]:
    cmd = [sys.executable, os.path.abspath(__file__), "--case", cid, "--device", args.device]
    if args.tiny:
        cmd.append("--tiny")
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        out, err = proc.communicate()
    wall = time.perf_counter() - t0
    rec = None
    for line in reversed((out or "").splitlines()):
        if line.startswith(RESULT_MARK):
            try:
                rec = json.loads(line[len(RESULT_MARK):])
            except json.JSONDecodeError:
                rec = None
            break
    if rec is None:
        rec = {"id": cid, "status": "timeout" if timed_out else "crashed",
               "error": {"type": "Timeout" if timed_out else "ChildFailed",
                         "message": (f"no result after {timeout:.0f} s" if timed_out else
                                     f"child exited with status {proc.returncode}"),
                         "stdout_tail": (out or "")[-3000:], "stderr_tail": (err or "")[-4000:]}}
    elif rec.get("status") not in ("ok", "skipped"):
        rec.setdefault("error", {})
        if isinstance(rec["error"], dict):
            rec["error"]["stderr_tail"] = (err or "")[-4000:]
    rec["returncode"] = proc.returncode
    rec["wall_s"] = round(wall, 3)
    rec["timeout_s"] = round(timeout, 1)
    return rec, wall


def run_in_process(cid: str, args) -> tuple[dict, float]:
    """Testing aid (--in-process, CPU only): no child process."""
    t0 = time.perf_counter()
    if cid == CONTEXT_ID:
        rec = run_context_here(args.device, None, None, None)
    else:
        rec = run_case_here(cid, args.device, args.tiny, None, None)
    wall = time.perf_counter() - t0
    rec["returncode"] = None
    rec["wall_s"] = round(wall, 3)
    rec["timeout_s"] = None
    return rec, wall


def wait_device_idle(nv: Nvml | None, baseline: int | None, limit_s: float = 3.0) -> int | None:
    """After a child exits, wait (briefly) for its memory to be released; return used."""
    if nv is None or nv.source is None:
        return None
    used = nv.used()
    if baseline is None:
        return used
    t0 = time.perf_counter()
    while used is not None and used > baseline + 64 * 2**20 and time.perf_counter() - t0 < limit_s:
        time.sleep(0.05)
        used = nv.used()
    return used


def parent_main(args) -> int:
    t_start = time.perf_counter()
    if args.in_process and args.device == "cuda":
        print("--in-process is for CPU tests only (it would share one CUDA context)",
              file=sys.stderr)
        return 2
    cases = select_cases(args.only)
    only_context = bool(args.only) and CONTEXT_ID in [
        x.strip() for o in args.only for x in o.split(",")]
    if args.only and not cases and not only_context:
        print(f"--only {args.only}: no case matches; see --list", file=sys.stderr)
        return 2
    doc: dict = {
        "schema_version": SCHEMA_VERSION,
        "tool": "memfit validation/gpu/measure_cuda.py",
        "argv": sys.argv[1:],
        "device": args.device,
        "tiny": bool(args.tiny),
        "budget_s": args.budget_s,
        "started_utc": utc_now(),
        "finished_utc": None,
        "complete": False,
        "provenance": provenance(args.device),
        "context": None,
        "planned": [c["id"] for c in cases],
        "cases": [],
    }
    write_json_atomic(args.out, doc)
    log(f"[measure_cuda] device={args.device} tiny={args.tiny} cases={len(cases)} "
        f"budget={args.budget_s:.0f}s out={args.out}")
    prov = doc["provenance"]
    if args.device == "cuda":
        log(f"[measure_cuda] GPU {prov.get('gpu_name')} total={prov.get('gpu_total_memory')} "
            f"driver={prov.get('driver_version')} cuda={prov.get('cuda_driver_version_str')} "
            f"torch={prov.get('torch_full')} transformers={prov.get('transformers')}")
    nv = Nvml() if args.device == "cuda" else None
    baseline = nv.used() if nv else None
    doc["device_used_at_start"] = baseline

    runner = run_in_process if args.in_process else (
        lambda cid, a: run_child(cid, a, timeout=min(args.case_timeout_s, 120.0)))
    if not args.no_context:
        rec, wall = runner(CONTEXT_ID, args)
        doc["context"] = rec
        write_json_atomic(args.out, doc)
        log(f"[measure_cuda] context: {rec.get('status')} in {wall:.1f}s "
            f"context_after_init={_mib(rec.get('context_bytes_after_init'))} "
            f"non_pytorch_after_matmul={_mib(rec.get('non_pytorch_bytes_after_bf16_matmul'))}")
        wait_device_idle(nv, baseline)

    n = len(cases)
    for i, c in enumerate(cases, 1):
        cid = c["id"]
        elapsed = time.perf_counter() - t_start
        remaining = args.budget_s - elapsed
        est = TINY_EST_S if args.tiny else float(c.get("est_s", 10.0))
        if est > remaining:
            rec = {"id": cid, "status": "skipped",
                   "error": {"type": "Budget", "message":
                             f"estimated {est:.0f}s > {remaining:.0f}s left of --budget-s"}}
            doc["cases"].append(rec)
            write_json_atomic(args.out, doc)
            log(f"[{i}/{n}] {cid}: skipped (budget: {remaining:.0f}s left, needs ~{est:.0f}s)")
            continue
        if args.in_process:
            rec, wall = runner(cid, args)
        else:
            timeout = min(args.case_timeout_s, max(4 * est + 30.0, 60.0),
                          max(15.0, remaining + 15.0))
            before = wait_device_idle(nv, baseline)
            rec, wall = run_child(cid, args, timeout)
            rec["device_used_before_launch"] = before
        doc["cases"].append(rec)
        write_json_atomic(args.out, doc)
        log(f"[{i}/{n}] {cid}: {rec.get('status')} {wall:.1f}s "
            f"peak_alloc={_mib(rec.get('max_memory_allocated'))} "
            f"peak_reserved={_mib(rec.get('max_memory_reserved'))} "
            f"nvml_proc={_mib(rec.get('nvml_process_bytes_at_peak'))} "
            f"weights={_mib(rec.get('weights_bytes'))}"
            + (f" error={rec['error'].get('type')}: {str(rec['error'].get('message'))[:160]}"
               if isinstance(rec.get("error"), dict) else ""))
    doc["finished_utc"] = utc_now()
    doc["complete"] = True
    doc["total_wall_s"] = round(time.perf_counter() - t_start, 2)
    counts: dict = {}
    for r in doc["cases"]:
        counts[r.get("status")] = counts.get(r.get("status"), 0) + 1
    doc["status_counts"] = counts
    write_json_atomic(args.out, doc)
    log(f"[measure_cuda] done in {doc['total_wall_s']:.1f}s: {counts} -> {args.out}")
    return 0


def _mib(v) -> str:
    return "-" if v is None else f"{v / 2**20:.1f}MiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="output JSON path (rewritten after every case)")
    ap.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                    help="stop launching cases that would not finish within this many seconds "
                         f"from the start (default {DEFAULT_BUDGET_S:.0f})")
    ap.add_argument("--only", action="append", default=None,
                    help="case ids, globs or substrings (comma-separated or repeated)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny configs and shapes (2 layers, hidden 64, vocab 512), for tests")
    ap.add_argument("--case-timeout-s", type=float, default=240.0,
                    help="upper bound of one case's timeout")
    ap.add_argument("--no-context", action="store_true", help="skip the bare-context probe")
    ap.add_argument("--in-process", action="store_true",
                    help="CPU tests only: run cases in this process, no children")
    ap.add_argument("--list", action="store_true", help="print the case ids in order and exit")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args(argv)
    if args.list:
        for c in select_cases(args.only):
            print(f"{c['id']}\t~{c['est_s']:.0f}s")
        print(f"total ~{sum(c['est_s'] for c in select_cases(args.only)):.0f}s "
              f"(+ ~{CHILD_OVERHEAD_S:.0f}s context probe)")
        return 0
    if args.case:
        return child_main(args)
    if not args.out:
        ap.error("--out is required")
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
