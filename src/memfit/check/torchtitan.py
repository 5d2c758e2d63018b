"""torchtitan TOML job configs (``torchtitan/models/llama3/train_configs/llama3_8b.toml``),
read into ``memfit train`` options.

Names from ``torchtitan/config/job_config.py`` (torchtitan 0.1-0.2; ``config_manager.py``
before): ``[model] name, flavor``; ``[training] local_batch_size`` (``batch_size`` before),
``seq_len``, ``global_batch_size`` (gradient accumulation when larger than local x DP),
``mixed_precision_param``, ``enable_cpu_offload``; ``[parallelism]
data_parallel_shard_degree`` (-1: every GPU the other degrees leave),
``data_parallel_replicate_degree`` (HSDP when > 1), ``tensor_parallel_degree``,
``pipeline_parallel_degree``, ``pipeline_parallel_microbatch_size``,
``context_parallel_degree``, ``expert_parallel_degree``, ``fsdp_reshard_after_forward``;
``[activation_checkpoint] mode`` (none, selective, full) with ``selective_ac_option`` (``op``
or N: every N-th layer); ``[optimizer] name, implementation, early_step_in_backward``.
torchtitan shards with FSDP2 ``fully_shard`` (``parallelize.py``, ``apply_fsdp``): fp32
sharded parameters gathered in ``mixed_precision_param`` (bf16), memfit's ``bf16-mixed`` with
``--fsdp-version 2``. The llama3 flavors 8B/70B/405B are Llama 3.1's shapes
(``models/llama3/__init__.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import MemfitError
from ._base import Reader, Translation, to_bool, to_int

__all__ = ["read_torchtitan", "loads_toml", "looks_like_torchtitan", "FLAVORS"]

FLAVORS = {("llama3", "8B"): "llama-3.1-8b", ("llama3", "70B"): "llama-3.1-70b",
           ("llama3", "405B"): "llama-3.1-405b", ("qwen3", "0.6B"): "qwen3-0.6b",
           ("qwen3", "1.7B"): "qwen3-1.7b", ("qwen3", "4B"): "qwen3-4b",
           ("qwen3", "8B"): "qwen3-8b", ("qwen3", "14B"): "qwen3-14b",
           ("qwen3", "32B"): "qwen3-32b"}
_NO_MEMORY_SECTIONS = ("job", "profiling", "metrics", "checkpoint", "comm", "validation",
                       "lr_scheduler", "experimental", "fault_tolerance", "memory_estimation")
_OPTIMIZERS = {"adamw": "adamw", "adam": "adamw"}
_IMPLS = {"fused": "fused", "foreach": "foreach", "for-loop": "forloop"}


def loads_toml(text: str) -> dict[str, Any]:
    try:
        import tomllib  # type: ignore[import-not-found, unused-ignore]
    except ImportError:  # Python 3.10
        raise MemfitError("toml: reading TOML needs Python 3.11 or newer (tomllib); allowed: "
                          "run memfit on Python >= 3.11 for torchtitan configs", field="toml",
                          value=None, allowed="Python >= 3.11") from None
    try:
        return tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError, ValueError) as exc:
        raise MemfitError(f"toml: not valid TOML ({exc}); allowed: a torchtitan job config",
                          field="toml", value=None, allowed="TOML") from None


def looks_like_torchtitan(data: Mapping[str, Any]) -> bool:
    return isinstance(data.get("model"), Mapping) and ("flavor" in data["model"] or
                                                       "parallelism" in data)


def _model(r: Reader, model: Mapping[str, Any]) -> None:
    key = (str(model.get("name", "")), str(model.get("flavor", "")))
    if key in FLAVORS:
        r.model("model.name + flavor", f"{key[0]} {key[1]}")
        r.t.model = FLAVORS[key]
        r.t.understood[-1]["option"] = f"MODEL {r.t.model}"
    else:  # --model beside names it (complete() says so when it is missing)
        r.ignore("model.name + flavor", f"{key[0]} {key[1]}", "a flavor memfit maps to no "
                 "catalog model (" + ", ".join(f"{a} {b}" for a, b in FLAVORS)
                 + "); give --model beside")
    for k, v in model.items():
        if k not in ("name", "flavor"):
            assets = ("tokenizer_path", "hf_assets_path", "converters", "print_after_conversion")
            r.ignore(f"model.{k}", v, "no effect on GPU memory (tokenizer, assets, converters)"
                     if k in assets else "not a field memfit reads; if it changes memory, the "
                     "estimate does not include it")


def _training(r: Reader, t: Mapping[str, Any]) -> None:
    for k, v in t.items():
        name = f"training.{k}"
        if k in ("local_batch_size", "batch_size"):
            r.use(name, v, "batch", to_int(name, v, 1))
        elif k == "seq_len":
            r.use(name, v, "seq", to_int(name, v, 1))
        elif k == "mixed_precision_param":
            recipes = {"bfloat16": "bf16-mixed", "float32": "fp32"}
            if v not in recipes:
                raise MemfitError.bad_value(name, v, "bfloat16, float32")
            r.use(name, v, "precision", recipes[v])
        elif k == "enable_cpu_offload" and to_bool(name, v):
            r.use(name, v, "offload", "params")
        elif k == "global_batch_size":
            r.ignore(name, v, "sets gradient accumulation over local x data-parallel batches: "
                     "memory per step is the local batch's (give --microbatches)")
        elif k == "mixed_precision_reduce":
            r.ignore(name, v, "dtype of the gradient reduce-scatter: memfit's FSDP2 reduces in "
                     "fp32")
        else:
            r.ignore(name, v, "no effect on GPU memory" if k in (
                "steps", "max_norm", "warmup_steps", "dataset", "dataset_path", "seed",
                "deterministic", "gc_freq") else "not a field memfit reads; if it changes "
                "memory, the estimate does not include it")


_DEGREES = {"tensor_parallel_degree": "tp", "pipeline_parallel_degree": "pp",
            "context_parallel_degree": "cp", "expert_parallel_degree": "ep"}


def _parallelism(r: Reader, p: Mapping[str, Any]) -> None:
    for k, v in p.items():
        name = f"parallelism.{k}"
        if k in _DEGREES:
            r.use(name, v, _DEGREES[k], to_int(name, v, 1))
        elif k == "data_parallel_shard_degree":
            n = int(v) if isinstance(v, int) else to_int(name, v, 1)
            if n == -1:
                r.note(name, v, "every GPU the other degrees leave (--gpus beside)")
                r.t.when_distributed.setdefault("fsdp", "full")
            elif n > 1:
                r.use(name, v, "dp", n)
                r.t.options["fsdp"] = r.t.options.get("fsdp", "full")
            else:
                r.note(name, v, "no sharding")
        elif k == "data_parallel_replicate_degree" and to_int(name, v, 1) > 1:
            r.use(name, v, "fsdp", "hybrid")
        elif k == "fsdp_reshard_after_forward" and str(v) == "never":
            r.use(name, v, "fsdp", "grad-op")
        elif k == "pipeline_parallel_microbatch_size":
            r.ignore(name, v, "memfit takes --microbatches (local batch / this size)")
        else:
            r.ignore(name, v, "no memory effect memfit models")


def _ac(r: Reader, ac: Mapping[str, Any]) -> None:
    mode = str(ac.get("mode", "selective"))
    option = str(ac.get("selective_ac_option", "2"))
    if mode == "none":
        r.use("activation_checkpoint.mode", mode, "checkpointing", "none")
    elif mode == "full":
        r.use("activation_checkpoint.mode", mode, "checkpointing", "full")
    elif mode == "selective" and option == "op":
        r.use("activation_checkpoint.mode + selective_ac_option", "selective, op",
              "checkpointing", "op-selective")
    elif mode == "selective" and option.isdigit() and int(option) >= 1:
        r.use("activation_checkpoint.mode", mode, "checkpointing", "full")
        r.use("activation_checkpoint.selective_ac_option", option, "checkpoint_every",
              int(option))
    else:
        raise MemfitError.bad_value("activation_checkpoint.mode", mode,
                                    "none, full, selective (op or N)")
    for k, v in ac.items():
        if k not in ("mode", "selective_ac_option"):
            r.ignore(f"activation_checkpoint.{k}", v, "not modelled")


def _optimizer(r: Reader, o: Mapping[str, Any]) -> None:
    for k, v in o.items():
        name = f"optimizer.{k}"
        if k == "name":
            if str(v).lower() not in _OPTIMIZERS:
                raise MemfitError.bad_value(name, v, "AdamW, Adam")
            r.use(name, v, "optimizer", _OPTIMIZERS[str(v).lower()])
        elif k == "implementation":
            if v not in _IMPLS:
                raise MemfitError.bad_value(name, v, ", ".join(_IMPLS))
            r.use(name, v, "optimizer_impl", _IMPLS[v])
        elif k == "early_step_in_backward" and to_bool(name, v):
            r.use(name, v, "optimizer_in_backward", True)
        else:
            r.ignore(name, v, "no effect on GPU memory")


def read_torchtitan(data: Mapping[str, Any]) -> Translation:
    r = Reader("torchtitan", "train")
    _model(r, data.get("model") or {})
    r.t.options["fsdp_version"] = 2
    r.t.when_distributed["fsdp_version"] = 2
    sections = {"training": _training, "parallelism": _parallelism,
                "activation_checkpoint": _ac, "optimizer": _optimizer}
    for key, value in data.items():
        if key == "model":
            continue
        if key in sections and isinstance(value, Mapping):
            sections[key](r, value)
        elif key in _NO_MEMORY_SECTIONS:
            r.ignore(f"[{key}]", "...", "no effect on GPU memory")
        elif key in ("compile", "float8", "mx", "quantize"):
            r.ignore(f"[{key}]", value, "compiled or low-precision linears change activation "
                     "memory; not modelled")
        else:
            r.ignore(f"[{key}]", value, "not a section memfit reads")
    if "precision" not in r.t.options:  # Training.mixed_precision_param's default
        r.use("training.mixed_precision_param", "(default bfloat16)", "precision",
              "bf16-mixed")
    if "activation_checkpoint" not in data:  # ActivationCheckpoint's defaults
        _ac(r, {})
    if "fsdp" not in r.t.options:
        r.t.options.pop("fsdp_version", None)
    return r.done()
