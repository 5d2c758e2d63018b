"""Hugging Face ``TrainingArguments`` and TRL configs (YAML or JSON), read into ``memfit
train`` options; the optimizer names and FSDP strings here are shared by the axolotl and
LLaMA-Factory readers, which pass them to the same Trainer.

Names from ``transformers/training_args.py`` (``TrainingArguments``, transformers 4.46-5:
``per_device_train_batch_size``, ``gradient_accumulation_steps``, ``gradient_checkpointing``,
``bf16``, ``fp16``, ``optim``, ``fsdp``, ``fsdp_config``, ``deepspeed``,
``use_liger_kernel``), ``transformers/training_args.py`` ``OptimizerNames`` (``adamw_torch``,
``adamw_torch_fused``, ``adamw_bnb_8bit``/``adamw_8bit``, ``paged_adamw_8bit``,
``paged_adamw_32bit``, ``adafactor``, ``sgd``, ``lion_32bit``), TRL's
``trl/trainer/sft_config.py`` (``max_length``, formerly ``max_seq_length``) and
``trl/trainer/model_config.py`` (``ModelConfig``: ``model_name_or_path``, ``torch_dtype``,
``attn_implementation``, ``use_peft``, ``lora_r``, ``lora_dropout``, ``lora_target_modules``,
``load_in_4bit``, ``use_dora``), TRL 0.19. The Trainer's ``bf16=True`` is autocast over the
model as loaded: fp32 weights give memfit's ``bf16-mixed``; a model loaded in bfloat16
(``torch_dtype: bfloat16``) trains in pure bf16, memfit's ``bf16-true``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import MemfitError
from ._base import Reader, Translation, to_bool, to_float, to_int
from .deepspeed import apply_deepspeed

__all__ = ["read_hf", "OPTIM", "apply_optim", "apply_fsdp", "apply_deepspeed_ref",
           "lora_targets", "NO_MEMORY", "looks_like_hf"]

# OptimizerNames -> (memfit optimizer, implementation or None)
OPTIM: dict[str, tuple[str, str | None]] = {
    "adamw_torch": ("adamw", "foreach"), "adamw_torch_fused": ("adamw", "fused"),
    "adamw_hf": ("adamw", "forloop"), "adamw_apex_fused": ("adamw", "fused"),
    "adamw_bnb_8bit": ("adamw-8bit", None), "adamw_8bit": ("adamw-8bit", None),
    "paged_adamw_8bit": ("paged-adamw-8bit", None), "paged_adamw_32bit": ("paged-adamw", None),
    "paged_adamw": ("paged-adamw", None), "adafactor": ("adafactor", None),
    "sgd": ("sgd", None), "lion_32bit": ("lion", None), "lion": ("lion", None),
    "adamw_torch_4bit": ("", None),
}
NO_MEMORY = frozenset((
    "output_dir", "overwrite_output_dir", "do_train", "do_eval", "do_predict", "learning_rate",
    "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
    "num_train_epochs", "max_steps", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_ratio",
    "warmup_steps", "logging_dir", "logging_strategy", "logging_steps", "logging_first_step",
    "save_strategy", "save_steps", "save_total_limit", "save_only_model", "seed", "data_seed",
    "report_to", "run_name", "push_to_hub", "hub_model_id", "hub_strategy", "hub_private_repo",
    "eval_strategy", "evaluation_strategy", "eval_steps", "load_best_model_at_end",
    "metric_for_best_model", "dataloader_num_workers", "dataloader_pin_memory",
    "remove_unused_columns", "label_names", "ddp_find_unused_parameters", "ddp_timeout",
    "dataset_text_field", "dataset_name", "dataset_config", "dataset_train_split",
    "dataset_test_split", "dataset_num_proc", "packing", "completion_only_loss",
    "assistant_only_loss", "chat_template_path", "log_level", "disable_tqdm",
    "resume_from_checkpoint",
    "lora_alpha", "lora_task_type", "trust_remote_code", "model_revision", "tf32",
    "group_by_length", "neftune_noise_alpha", "save_safetensors", "bf16_full_eval",
    "fp16_full_eval", "include_tokens_per_second", "logging_nan_inf_filter", "optim_args",
    "use_rslora", "use_bnb_nested_quant", "bnb_4bit_quant_type", "lora_modules_to_save",
    "gradient_checkpointing_kwargs", "label_smoothing_factor", "ddp_backend",
))
_EVAL = ("per_device_eval_batch_size", "eval_accumulation_steps", "eval_batch_size",
         "eval_on_start", "prediction_loss_only")


def looks_like_hf(data: Mapping[str, Any]) -> bool:
    keys = ("per_device_train_batch_size", "gradient_accumulation_steps", "optim",
            "output_dir", "max_seq_length", "max_length", "model_name_or_path")
    return sum(k in data for k in keys) >= 2


def apply_optim(r: Reader, name: str, value: Any) -> None:
    key = str(value).strip().lower()
    if key not in OPTIM or not OPTIM[key][0]:
        allowed = ", ".join(k for k, v in OPTIM.items() if v[0])
        raise MemfitError.bad_value(name, value, allowed + " (the optimizers memfit models)")
    optimizer, impl = OPTIM[key]
    r.use(name, value, "optimizer", optimizer)
    if impl:
        r.t.options["optimizer_impl"] = impl
        r.t.understood[-1]["option"] += f" --optimizer-impl {impl}"


def apply_fsdp(r: Reader, name: str, value: Any, version: int = 1) -> None:
    """``fsdp: "full_shard auto_wrap offload"`` (or a list): FSDP1 in the HF Trainer
    (``FSDPOption`` in ``trainer_utils.py``)."""
    words = value if isinstance(value, list) else str(value).split()
    words = [str(w).strip().lower() for w in words]
    modes = {"full_shard": "full", "shard_grad_op": "grad-op", "hybrid_shard": "hybrid",
             "hybrid_shard_zero2": "hybrid"}
    mode = next((modes[w] for w in words if w in modes), None)
    if not words or words == ["false"] or words == [""]:
        r.note(name, value, "no FSDP")
        return
    if mode is None:
        if "no_shard" in words:
            r.note(name, value, "no sharding (FSDP NO_SHARD is DDP's memory)")
            return
        raise MemfitError.bad_value(name, value, "full_shard, shard_grad_op, hybrid_shard "
                                    "(with auto_wrap, offload)")
    r.use(name, value, "fsdp", mode)
    r.t.options.setdefault("fsdp_version", version)
    if "offload" in words:
        r.t.options["offload"] = "params"
        r.t.understood[-1]["option"] += " --offload params"


def apply_fsdp_config(r: Reader, name: str, value: Any) -> None:
    if not isinstance(value, Mapping):
        r.ignore(name, value, "not a mapping")
        return
    for key, v in value.items():
        k = key.removeprefix("fsdp_")
        field_name = f"{name}.{key}"
        if k in ("version",):
            r.use(field_name, v, "fsdp_version", to_int(field_name, v, 1))
        elif k == "activation_checkpointing" and to_bool(field_name, v):
            r.use(field_name, v, "checkpointing", "full")
        elif k == "offload_params" and to_bool(field_name, v):
            r.use(field_name, v, "offload", "params")
        elif k in ("reshard_after_forward",) and not to_bool(field_name, v):
            r.use(field_name, v, "fsdp", "grad-op")
        elif k == "backward_prefetch":
            r.ignore(field_name, v, "prefetching gathers the next layer's parameters early "
                     "(about one layer more in memory); not modelled")
        else:
            r.ignore(field_name, v, "no memory effect memfit models (wrapping, state-dict and "
                     "loading settings)")


def apply_deepspeed_ref(r: Reader, name: str, value: Any,
                        open_ref: Callable[[str], Any] | None) -> None:
    """``deepspeed: path/to/ds_config.json`` (or an inline dict): its fields, prefixed."""
    if isinstance(value, Mapping):
        apply_deepspeed(r, value, prefix=f"{name}.")
        _deepspeed_precision(r, name)
        return
    data = open_ref(str(value)) if open_ref else None
    if data is None:
        r.ignore(name, value, "the DeepSpeed file was not found beside this config; give its "
                 "settings with memfit's flags (--zero, --offload) or check it on its own")
        return
    r.note(name, value, "read (its fields below)")
    apply_deepspeed(r, data, prefix=f"{name}:")
    _deepspeed_precision(r, name)


def _deepspeed_precision(r: Reader, name: str) -> None:
    """Under DeepSpeed the Trainer's bf16/fp16 becomes DeepSpeed's 16-bit parameters with fp32
    masters (``bf16.enabled: auto`` takes the Trainer's flag): memfit's ``bf16-master``."""
    recipe = r.t.options.get("precision")
    if recipe in ("bf16-mixed", "fp16-mixed", "bf16-true", "fp16-true"):
        r.t.options["precision"] = "bf16-master"
        r.t.understood.append({"field": name, "value": recipe, "option": "--precision "
                               "bf16-master (DeepSpeed keeps fp32 masters of 16-bit weights)"})


def lora_targets(value: Any) -> str:
    """peft's ``target_modules`` as memfit's ``--lora-targets``."""
    if isinstance(value, str):
        if value.strip().lower() in ("all-linear", "all_linear", "all"):
            return "all-linear"
        names = [x.strip() for x in value.split(",") if x.strip()]
    elif isinstance(value, list):
        names = [str(x).strip() for x in value]
    else:
        raise MemfitError.bad_value("lora_target_modules", value, "a list of module names or "
                                    "all-linear")
    if not names:
        raise MemfitError.bad_value("lora_target_modules", value, "at least one module name")
    return ",".join(names)


def _precision(r: Reader, data: Mapping[str, Any]) -> None:
    dtype = str(data.get("torch_dtype", data.get("dtype", "")) or "").lower()
    bf16 = to_bool("bf16", data.get("bf16", False))
    fp16 = to_bool("fp16", data.get("fp16", False))
    pure = dtype in ("bfloat16", "float16")
    if bf16 or fp16:
        key = "bf16" if bf16 else "fp16"
        recipe = (f"{key}-true" if pure else f"{key}-mixed")
        r.use(key, data[key], "precision", recipe)
        if pure:
            r.note("torch_dtype" if "torch_dtype" in data else "dtype", dtype,
                   f"the model is loaded in 16-bit: pure {key} training")
    elif pure:
        r.use("torch_dtype", dtype, "precision", "bf16-true" if "bf" in dtype else "fp16-true")
    elif dtype in ("float32",):
        r.use("torch_dtype", dtype, "precision", "fp32")
    else:
        r.ignore("bf16", None, "neither bf16 nor fp16 set: the precision follows the dtype "
                 "the model is loaded in; memfit keeps its own --precision")


def _peft(r: Reader, data: Mapping[str, Any]) -> None:
    use = to_bool("use_peft", data.get("use_peft", False))
    four = to_bool("load_in_4bit", data.get("load_in_4bit", False))
    if to_bool("load_in_8bit", data.get("load_in_8bit", False)):
        raise MemfitError.bad_value("load_in_8bit", True, "false (an 8-bit frozen base is not "
                                    "modelled; QLoRA's load_in_4bit is)")
    if not (use or four):
        return
    rank = to_int("lora_r", data.get("lora_r", 16), 1)  # ModelConfig.lora_r default 16
    r.use("use_peft" if use else "load_in_4bit", True, "lora_rank", rank)
    if four:
        r.use("load_in_4bit", True, "qlora", True)
    if "lora_target_modules" in data and data["lora_target_modules"] is not None:
        r.use("lora_target_modules", data["lora_target_modules"], "lora_targets",
              lora_targets(data["lora_target_modules"]))
    else:  # TRL's ModelConfig.lora_target_modules = None: peft's default for the model type
        r.use("lora_target_modules", "(default None)", "lora_targets", "peft-default")
    dropout = data.get("lora_dropout", 0.05)  # ModelConfig.lora_dropout's default
    r.use("lora_dropout", data.get("lora_dropout", "(default 0.05)"), "lora_dropout",
          to_float("lora_dropout", dropout, 0.0, 0.99))
    if to_bool("use_dora", data.get("use_dora", False)):
        r.use("use_dora", True, "dora", True)


_DONE = frozenset(("bf16", "fp16", "torch_dtype", "dtype", "use_peft", "load_in_4bit",
                   "load_in_8bit", "lora_r", "lora_target_modules", "lora_dropout",
                   "use_dora"))


def apply_hf_field(r: Reader, key: str, value: Any,
                   open_ref: Callable[[str], Any] | None) -> bool:
    """One TrainingArguments field; False when it is not one this reader knows."""
    if key == "per_device_train_batch_size":
        r.use(key, value, "batch", to_int(key, value, 1))
    elif key == "gradient_accumulation_steps":
        r.use(key, value, "microbatches", to_int(key, value, 1))
    elif key in ("gradient_checkpointing", "activation_checkpointing"):  # 5.x: the new name
        r.use(key, value, "checkpointing", "full" if to_bool(key, value) else "none")
    elif key == "optim":
        apply_optim(r, key, value)
    elif key == "fsdp":
        apply_fsdp(r, key, value)
    elif key == "fsdp_config":
        apply_fsdp_config(r, key, value)
    elif key == "deepspeed":
        apply_deepspeed_ref(r, key, value, open_ref)
    elif key == "use_liger_kernel":
        r.use(key, value, "loss", "liger" if to_bool(key, value) else "hf")
    elif key in ("max_length", "max_seq_length", "max_seq_len"):
        r.use(key, value, "seq", to_int(key, value, 1))
    elif key == "attn_implementation":
        _attn(r, key, value)
    elif key in _EVAL:
        r.ignore(key, value, "evaluation keeps no gradients or optimizer temporaries: below "
                 "the training peak at the same batch")
    elif key == "torch_compile" and to_bool(key, value):
        r.ignore(key, value, "a compiled step may free activations earlier or fuse "
                 "temporaries; not modelled")
    elif key == "torch_compile":
        r.note(key, value, "eager mode, as memfit models it")
    elif key in NO_MEMORY or key.startswith(("hub_", "logging_", "save_", "push_")):
        r.ignore(key, value, "no effect on GPU memory")
    else:
        return False
    return True


def _attn(r: Reader, key: str, value: Any) -> None:
    v = str(value).lower()
    if v == "eager":
        r.use(key, value, "attn", "eager")
    elif v in ("sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"):
        r.use(key, value, "attn", "sdpa")
        if v != "sdpa":
            r.t.understood[-1]["option"] += " (a flash kernel: SDPA's memory)"
    else:
        raise MemfitError.bad_value(key, value, "eager, sdpa, flash_attention_2")


def read_hf(data: Mapping[str, Any], open_ref: Callable[[str], Any] | None = None
            ) -> Translation:
    """TrainingArguments / SFTConfig (+ TRL's ModelConfig) fields in one mapping."""
    r = Reader("hf-trainer", "train")
    if "model_name_or_path" in data:
        r.model("model_name_or_path", data["model_name_or_path"])
    _precision(r, data)
    _peft(r, data)
    for key, value in data.items():
        if key in _DONE or key == "model_name_or_path":
            continue
        if not apply_hf_field(r, key, value, open_ref):
            r.ignore(key, value, "not a field memfit reads; if it changes memory, the "
                     "estimate does not include it")
    trainer_defaults(r, data)
    return r.done()


def trainer_defaults(r: Reader, data: Mapping[str, Any]) -> None:
    """What ``TrainingArguments`` uses when a field is absent (transformers 5.25,
    ``training_args.py``): ``per_device_train_batch_size = 8``; ``optim`` =
    ``adamw_torch_fused`` with torch >= 2.8 (``adamw_torch`` before), unless DeepSpeed's
    config brings its own optimizer."""
    if "batch" not in r.t.options:
        r.use("per_device_train_batch_size", "(default 8)", "batch", 8)
    if "optim" not in data and "optimizer" not in r.t.options and "zero" not in r.t.options:
        apply_optim(r, "optim", "adamw_torch_fused")
        r.t.understood[-1]["value"] = "(default adamw_torch_fused)"
