"""accelerate's config YAML (``accelerate config`` -> ``default_config.yaml``), read into
``memfit train`` options: the distributed layout and precision; the model and batch come from
memfit's flags beside it.

Names from ``accelerate/commands/config/config_args.py`` (``ClusterConfig``:
``distributed_type``, ``num_processes``, ``mixed_precision``, ``fsdp_config``,
``deepspeed_config``) and ``accelerate/utils/dataclasses.py``
(``FullyShardedDataParallelPlugin``: ``fsdp_sharding_strategy`` FULL_SHARD / SHARD_GRAD_OP /
NO_SHARD / HYBRID_SHARD or 1-4, ``fsdp_offload_params``, ``fsdp_activation_checkpointing``,
``fsdp_version`` 1 or 2, ``fsdp_reshard_after_forward``; ``DeepSpeedPlugin``: ``zero_stage``,
``offload_optimizer_device``, ``offload_param_device``, ``gradient_accumulation_steps``,
``deepspeed_config_file``), accelerate 1.x. accelerate's ``mixed_precision: bf16`` is autocast
over fp32 parameters (memfit's ``bf16-mixed``); under DeepSpeed it enables DeepSpeed's bf16
(``bf16-master``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import MemfitError
from ._base import Reader, Translation, section, to_bool, to_int
from .deepspeed import apply_deepspeed
from .hf import apply_fsdp_config

__all__ = ["read_accelerate", "looks_like_accelerate"]

_STRATEGIES = {"full_shard": "full", "1": "full", "shard_grad_op": "grad-op", "2": "grad-op",
               "hybrid_shard": "hybrid", "4": "hybrid", "hybrid_shard_zero2": "hybrid",
               "5": "hybrid", "no_shard": None, "3": None}
_NO_MEMORY = frozenset(("compute_environment", "machine_rank", "main_training_function",
                        "rdzv_backend", "same_network", "tpu_env", "tpu_use_cluster",
                        "tpu_use_sudo", "use_cpu", "debug", "enable_cpu_affinity",
                        "downcast_bf16", "main_process_ip", "main_process_port",
                        "gpu_ids", "dynamo_config", "num_machines"))


def looks_like_accelerate(data: Mapping[str, Any]) -> bool:
    return "distributed_type" in data or "compute_environment" in data


def _fsdp(r: Reader, cfg: Mapping[str, Any]) -> None:
    strategy = str(cfg.get("fsdp_sharding_strategy", "FULL_SHARD")).lower()
    if strategy not in _STRATEGIES:
        raise MemfitError.bad_value("fsdp_config.fsdp_sharding_strategy", strategy,
                                    "FULL_SHARD, SHARD_GRAD_OP, NO_SHARD, HYBRID_SHARD")
    version = to_int("fsdp_config.fsdp_version", cfg.get("fsdp_version", 1), 1)
    mode = _STRATEGIES[strategy]
    if version == 2:
        mode = "full" if to_bool("fsdp_config.fsdp_reshard_after_forward",
                                 cfg.get("fsdp_reshard_after_forward", True)) else "grad-op"
    if mode is None:
        r.note("fsdp_config.fsdp_sharding_strategy", strategy, "no sharding (DDP's memory)")
    else:
        key = "fsdp_reshard_after_forward" if version == 2 else "fsdp_sharding_strategy"
        r.use(f"fsdp_config.{key}", cfg.get(key, "(default: full sharding)"), "fsdp", mode)
        r.use("fsdp_config.fsdp_version", cfg.get("fsdp_version", "(default 1)"), "fsdp_version",
              version)
    rest = {k: v for k, v in cfg.items() if k not in ("fsdp_sharding_strategy", "fsdp_version",
                                                      "fsdp_reshard_after_forward")}
    apply_fsdp_config(r, "fsdp_config", rest)


def _deepspeed(r: Reader, cfg: Mapping[str, Any], open_ref: Callable[[str], Any] | None) -> None:
    if cfg.get("deepspeed_config_file"):
        data = open_ref(str(cfg["deepspeed_config_file"])) if open_ref else None
        if data is None:
            r.ignore("deepspeed_config.deepspeed_config_file", cfg["deepspeed_config_file"],
                     "the file was not found beside this config; check it on its own")
        else:
            apply_deepspeed(r, data, prefix="deepspeed_config_file:")
    for k, v in cfg.items():
        name = f"deepspeed_config.{k}"
        if k == "zero_stage":
            r.use(name, v, "zero", to_int(name, v, 0))
        elif k in ("offload_optimizer_device", "offload_param_device"):
            if str(v).lower() in ("cpu", "nvme"):
                r.use(name, v, "offload", "optimizer" if "optimizer" in k else "params")
            else:
                r.note(name, v, "no offload")
        elif k == "gradient_accumulation_steps":
            r.use(name, v, "microbatches", to_int(name, v, 1))
        elif k != "deepspeed_config_file":
            r.ignore(name, v, "no memory effect memfit models")


def read_accelerate(data: Mapping[str, Any], open_ref: Callable[[str], Any] | None = None
                    ) -> Translation:
    r = Reader("accelerate", "train")
    kind = str(data.get("distributed_type", "NO")).upper()
    deepspeed = kind == "DEEPSPEED"
    for key, value in data.items():
        if key == "distributed_type":
            r.note(key, value, {"FSDP": "FSDP (below)", "DEEPSPEED": "DeepSpeed (below)",
                                "MULTI_GPU": "DDP: each rank holds a full replica",
                                "NO": "one process"}.get(kind, kind))
        elif key == "num_processes":
            r.use(key, value, "dp", to_int(key, value, 1))
        elif key == "mixed_precision":
            recipes = {"bf16": "bf16-master" if deepspeed else "bf16-mixed",
                       "fp16": "bf16-master" if deepspeed else "fp16-mixed", "no": "fp32",
                       "fp8": None}
            if str(value).lower() not in recipes or recipes[str(value).lower()] is None:
                raise MemfitError.bad_value(key, value, "no, bf16, fp16")
            r.use(key, value, "precision", recipes[str(value).lower()])
        elif key == "fsdp_config" and kind == "FSDP":
            _fsdp(r, section(key, value))
        elif key == "deepspeed_config" and deepspeed:
            _deepspeed(r, section(key, value), open_ref)
        elif key in ("fsdp_config", "deepspeed_config", "megatron_lm_config"):
            r.ignore(key, value, f"not used with distributed_type {kind}")
        elif key in _NO_MEMORY:
            r.ignore(key, value, "no effect on GPU memory")
        else:
            r.ignore(key, value, "not an accelerate field memfit reads")
    return r.done()
