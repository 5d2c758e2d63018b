"""DeepSpeed config JSON (``ds_config.json``), read into ``memfit train`` options.

Names from DeepSpeed's own config readers (v0.16): ``deepspeed/runtime/config.py``
(``train_micro_batch_size_per_gpu``, ``gradient_accumulation_steps``, ``train_batch_size`` =
micro x accumulation x world size, ``bf16.enabled``, ``fp16.enabled``, ``optimizer.type``),
``deepspeed/runtime/zero/config.py`` (``DeepSpeedZeroConfig``: ``stage``, bucket sizes,
``overlap_comm``, ``contiguous_gradients``, ``stage3_*``) and
``deepspeed/runtime/zero/offload_config.py`` (``offload_optimizer.device`` and
``offload_param.device``: ``none``, ``cpu``, ``nvme``). With bf16 or fp16 DeepSpeed keeps
16-bit parameters and gradients and an fp32 master copy beside the optimizer states
(``runtime/bf16_optimizer.py``, ``zero/stage_1_and_2.py`` ``single_partition_of_fp32_groups``):
memfit's ``bf16-master`` recipe. ``"auto"`` values are filled in by the HF Trainer or
accelerate from their own arguments, so they are left to memfit's flags given beside.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import MemfitError
from ._base import Reader, Translation, to_bool, to_int

__all__ = ["read_deepspeed", "apply_deepspeed", "looks_like_deepspeed"]

_OPTIMIZERS = {"adam": "adamw", "adamw": "adamw", "lion": "lion", "sgd": "sgd",
               "cpuadam": "adamw", "fusedadam": "adamw"}
_BUFFERS = ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size",
            "stage3_max_live_parameters", "stage3_max_reuse_distance", "sub_group_size",
            "stage3_param_persistence_threshold")
_NO_MEMORY = ("gradient_clipping", "steps_per_print", "wall_clock_breakdown", "scheduler",
              "zero_allow_untested_optimizer", "prescale_gradients", "flops_profiler",
              "tensorboard", "wandb", "csv_monitor", "comms_logger", "dump_state",
              "gradient_predivide_factor", "zero_force_ds_cpu_optimizer")


def looks_like_deepspeed(data: Mapping[str, Any]) -> bool:
    return any(k in data for k in ("zero_optimization", "train_micro_batch_size_per_gpu",
                                   "train_batch_size")) and "compute_environment" not in data


def _auto(r: Reader, name: str, value: Any) -> bool:
    if _is_auto(value):
        r.ignore(name, value, "auto: filled in by the HF Trainer or accelerate; give the value "
                 "beside with memfit's flag")
        return True
    return False


def _zero(r: Reader, zero: Mapping[str, Any], p: str) -> None:
    if not isinstance(zero, Mapping):
        raise MemfitError.bad_value(f"{p}zero_optimization", zero, "a JSON object")
    for key, value in zero.items():
        name = f"{p}zero_optimization.{key}"
        if _auto(r, name, value):
            continue
        if key == "stage":
            stage = to_int(name, value, 0)
            if stage > 3:
                raise MemfitError.bad_value(name, value, "0, 1, 2, 3")
            r.use(name, value, "zero", stage)
        elif key in ("offload_optimizer", "offload_param"):
            device = str(value.get("device", "none") if isinstance(value, Mapping) else value)
            if device.lower() in ("cpu", "nvme"):
                r.use(name + ".device", device, "offload",
                      "optimizer" if key == "offload_optimizer" else "params")
            else:
                r.note(name + ".device", device, "no offload")
            if isinstance(value, Mapping) and value.get("pin_memory"):
                r.ignore(name + ".pin_memory", value["pin_memory"], "host memory only")
        elif key in _BUFFERS:
            r.ignore(name, value, "a buffer of this many elements: larger values keep more "
                     "temporary or prefetched memory; memfit does not size DeepSpeed's buckets")
        elif key == "overlap_comm":
            r.ignore(name, value, "overlapping keeps extra reduce buckets in flight (more "
                     "memory when true); not counted")
        elif key == "contiguous_gradients":
            r.ignore(name, value, "copies gradients into one contiguous buffer as they are "
                     "reduced (less fragmentation); not modelled")
        else:
            r.ignore(name, value, "not a ZeRO field memfit reads; if it changes memory, the "
                     "estimate does not include it")


def _precision(r: Reader, data: Mapping[str, Any], p: str) -> None:
    for key, recipe in (("bf16", "bf16-master"), ("fp16", "bf16-master")):
        section = data.get(key)
        if section is None:
            continue
        enabled = section.get("enabled", False) if isinstance(section, Mapping) else section
        name = f"{p}{key}.enabled"
        if _auto(r, name, enabled):
            continue
        if to_bool(name, enabled):
            r.use(name, enabled, "precision", recipe)
            if key == "fp16":
                r.t.understood[-1]["option"] += " (fp16 with fp32 masters: the same bytes)"
                r.ignore(f"{p}fp16 loss scaler", None, "a few scalars, not counted")
        for extra in (section if isinstance(section, Mapping) else {}):
            if extra != "enabled":
                r.ignore(f"{p}{key}.{extra}", section[extra], "loss scaling or precision "
                         "detail: no effect on memory")


def apply_deepspeed(r: Reader, data: Mapping[str, Any], prefix: str = "") -> None:
    """Record every field of a DeepSpeed config ``data`` on ``r`` (names prefixed)."""
    p = prefix
    if not isinstance(data, Mapping):
        raise MemfitError.bad_value(prefix.rstrip(".") or "deepspeed", type(data).__name__,
                                    "a JSON object")
    _precision(r, data, p)
    if "bf16" not in data and "fp16" not in data:
        r.ignore(f"{p}bf16", None, "neither bf16 nor fp16 set: DeepSpeed trains in fp32 "
                 "unless the trainer sets it; memfit keeps its own --precision")
    micro = accum = total = None
    for key, value in data.items():
        name = f"{p}{key}"
        if key in ("bf16", "fp16"):
            continue
        if _auto(r, name, value):
            continue
        if key == "train_micro_batch_size_per_gpu":
            micro = to_int(name, value, 1)
            r.use(name, value, "batch", micro)
        elif key == "gradient_accumulation_steps":
            accum = to_int(name, value, 1)
            r.use(name, value, "microbatches", accum)
        elif key == "train_batch_size":
            total = to_int(name, value, 1)
        elif key == "zero_optimization":
            _zero(r, value, p)
        elif key == "optimizer":
            _optimizer(r, value, name)
        elif key == "activation_checkpointing":
            r.ignore(name, value, "applies only to models that call deepspeed.checkpointing "
                     "(Megatron-style); HF models checkpoint with --checkpointing")
        elif key in _NO_MEMORY:
            r.ignore(name, value, "no effect on GPU memory")
        else:
            r.ignore(name, value, "not a DeepSpeed field memfit reads; if it changes memory, "
                     "the estimate does not include it")
    if total is not None:
        if _is_auto(data.get("gradient_accumulation_steps")):
            r.ignore(f"{p}train_batch_size", total, "with gradient_accumulation_steps auto it "
                     "fixes no world size; give --dp or --gpus beside")
        else:
            _world(r, f"{p}train_batch_size", total, micro, accum)


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


def _world(r: Reader, name: str, total: int, micro: int | None, accum: int | None) -> None:
    """``train_batch_size`` = micro x accumulation x world size: the data-parallel degree."""
    if micro is None:
        r.ignore(name, total, "without train_micro_batch_size_per_gpu it fixes no memory")
        return
    per_rank = micro * (accum or 1)
    if total % per_rank:
        raise MemfitError.bad_value(name, total, f"a multiple of micro-batch x accumulation "
                                    f"= {per_rank} (DeepSpeed's own check)")
    r.use(name, total, "dp", total // per_rank)


def _optimizer(r: Reader, value: Any, name: str) -> None:
    if not isinstance(value, Mapping):
        raise MemfitError.bad_value(name, value, "a JSON object with a type")
    kind = str(value.get("type", "")).replace("_", "").lower()
    if kind not in _OPTIMIZERS:
        raise MemfitError.bad_value(name + ".type", value.get("type"),
                                    "Adam, AdamW, Lion or SGD (memfit models these)")
    r.use(name + ".type", value.get("type"), "optimizer", _OPTIMIZERS[kind])
    if value.get("params"):
        r.ignore(name + ".params", value["params"], "learning rate and betas: no effect on "
                 "memory")


def read_deepspeed(data: Mapping[str, Any]) -> Translation:
    """A DeepSpeed config on its own: the model and world size come from memfit's flags."""
    r = Reader("deepspeed", "train")
    apply_deepspeed(r, data)
    return r.done()
