"""axolotl YAML configs, read into ``memfit train`` options.

Names and defaults from axolotl's config schema (``src/axolotl/utils/schemas/config.py``
``AxolotlInputConfig`` with ``schemas/peft.py`` ``LoraConfig`` and
``schemas/integrations.py``; docs/config-reference.qmd), axolotl 0.8: ``base_model``,
``micro_batch_size``, ``gradient_accumulation_steps``, ``sequence_len``, ``adapter`` (``lora``
or ``qlora``), ``lora_r``, ``lora_dropout``, ``lora_target_modules``, ``lora_target_linear``,
``peft_use_dora``, ``load_in_4bit``, ``load_in_8bit``, ``bf16``/``fp16`` (``auto`` = bf16 where
the GPU has it), ``gradient_checkpointing`` (``true`` or ``offload``), ``optimizer`` (the HF
Trainer's names), ``deepspeed``, ``fsdp``/``fsdp_config``/``fsdp_version``, and the Liger and
Cut Cross-Entropy plugins' ``liger_fused_linear_cross_entropy`` / ``cut_cross_entropy``.
axolotl loads the model in the 16-bit dtype it trains in (``utils/models.py``), so ``bf16:
true`` is pure bf16 training (memfit's ``bf16-true``), and it does not upcast QLoRA's
activations: the 16-bit stream (``--no-kbit-prepare``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import MemfitError
from ._base import Reader, Translation, to_bool, to_float, to_int
from .hf import (
    NO_MEMORY,
    apply_deepspeed_ref,
    apply_fsdp,
    apply_fsdp_config,
    apply_optim,
    lora_targets,
)

__all__ = ["read_axolotl", "looks_like_axolotl"]

_NO_MEMORY = frozenset((
    "base_model_config", "model_type", "tokenizer_type", "tokenizer_config",
    "is_llama_derived_model",
    "datasets", "dataset_prepared_path", "val_set_size", "output_dir", "num_epochs",
    "learning_rate", "lr_scheduler", "warmup_steps", "warmup_ratio", "evals_per_epoch",
    "saves_per_epoch", "save_steps", "eval_steps", "logging_steps", "weight_decay",
    "wandb_project", "wandb_entity", "wandb_watch", "wandb_name", "wandb_log_model",
    "train_on_inputs", "group_by_length", "early_stopping_patience", "resume_from_checkpoint",
    "local_rank", "xformers_attention", "debug", "strict", "chat_template", "pad_to_sequence_len",
    "eval_sample_packing", "sample_packing", "tf32", "lora_alpha", "lora_fan_in_fan_out",
    "hub_model_id", "max_grad_norm", "seed", "special_tokens", "trust_remote_code",
    "lora_model_dir", "plugins", "eval_table_size", "eval_max_new_tokens",
    "auto_resume_from_checkpoints",
    "s2_attention", "shuffle_merged_datasets", "dataset_processes", "adam_beta1", "adam_beta2",
    "adam_epsilon", "max_steps", "gc_steps",
))
_FSDP_DONE = ("fsdp", "fsdp_config", "fsdp_version")


def looks_like_axolotl(data: Mapping[str, Any]) -> bool:
    return "base_model" in data and any(k in data for k in ("micro_batch_size", "sequence_len",
                                                             "adapter", "datasets"))


def _adapter(r: Reader, data: Mapping[str, Any]) -> None:
    adapter = data.get("adapter")
    if to_bool("load_in_8bit", data.get("load_in_8bit", False)):
        raise MemfitError.bad_value("load_in_8bit", True, "false (an 8-bit frozen base is not "
                                    "modelled; adapter: qlora with load_in_4bit is)")
    if adapter in (None, "", False):
        if to_bool("load_in_4bit", data.get("load_in_4bit", False)):
            raise MemfitError.bad_value("load_in_4bit", True, "with adapter: qlora")
        return
    if adapter not in ("lora", "qlora"):
        raise MemfitError.bad_value("adapter", adapter, "lora, qlora")
    rank = to_int("lora_r", data.get("lora_r", 8), 1)  # LoraConfig.lora_r default 8
    r.use("adapter", adapter, "lora_rank", rank)
    r.t.understood[-1]["field"] = f"adapter + lora_r ({rank})"
    if adapter == "qlora":
        if not to_bool("load_in_4bit", data.get("load_in_4bit", True)):
            raise MemfitError.bad_value("load_in_4bit", data.get("load_in_4bit"),
                                        "true with adapter: qlora")
        r.use("adapter", adapter, "qlora", True)
        r.t.options["no_kbit_prepare"] = True
        r.t.understood[-1]["option"] += " --no-kbit-prepare"
    if to_bool("lora_target_linear", data.get("lora_target_linear", False)):
        r.use("lora_target_linear", True, "lora_targets", "all-linear")
    elif data.get("lora_target_modules"):
        r.use("lora_target_modules", data["lora_target_modules"], "lora_targets",
              lora_targets(data["lora_target_modules"]))
    else:  # neither set: peft's LoraConfig without target_modules, its per-model default
        r.use("lora_target_modules", "(not set)", "lora_targets", "peft-default")
    if data.get("lora_dropout") is not None:
        r.use("lora_dropout", data["lora_dropout"], "lora_dropout",
              to_float("lora_dropout", data["lora_dropout"], 0.0, 0.99))
    if to_bool("peft_use_dora", data.get("peft_use_dora", False)):
        r.use("peft_use_dora", True, "dora", True)


def _precision(r: Reader, data: Mapping[str, Any]) -> None:
    for key in ("bf16", "fp16"):
        value = data.get(key)
        if value in (None, False):
            continue
        if value == "auto" or to_bool(key, value):
            r.use(key, value, "precision", f"{key}-true")
            if value == "auto":
                r.t.understood[-1]["option"] += " (auto: bf16 where the GPU has it)"
            return
    r.ignore("bf16", data.get("bf16"), "neither bf16 nor fp16 set: axolotl trains in fp32; "
             "memfit keeps its own --precision")


_DONE = frozenset(("base_model", "adapter", "lora_r", "load_in_4bit", "load_in_8bit",
                   "lora_target_linear", "lora_target_modules", "lora_dropout",
                   "peft_use_dora", "bf16", "fp16"))


def _field(r: Reader, key: str, value: Any, open_ref: Callable[[str], Any] | None) -> None:
    if key == "micro_batch_size":
        r.use(key, value, "batch", to_int(key, value, 1))
    elif key == "gradient_accumulation_steps":
        r.use(key, value, "microbatches", to_int(key, value, 1))
    elif key == "sequence_len":
        r.use(key, value, "seq", to_int(key, value, 1))
    elif key == "gradient_checkpointing":
        if value == "offload":
            r.use(key, value, "checkpointing", "full")
            r.t.options["activation_offload"] = True
            r.t.understood[-1]["option"] += " --activation-offload"
        else:
            r.use(key, value, "checkpointing", "full" if to_bool(key, value) else "none")
    elif key == "optimizer":
        apply_optim(r, key, value)
    elif key == "deepspeed":
        apply_deepspeed_ref(r, key, value, open_ref)
    elif key == "fsdp":
        apply_fsdp(r, key, value)
    elif key == "fsdp_config":
        apply_fsdp_config(r, key, value)
    elif key == "fsdp_version":
        r.use(key, value, "fsdp_version", to_int(key, value, 1))
    elif key in ("liger_fused_linear_cross_entropy", "cut_cross_entropy"):
        if to_bool(key, value):
            r.use(key, value, "loss", "liger" if key.startswith("liger") else "cce")
        else:
            r.note(key, value, "the model's own cross-entropy")
    elif key in ("flash_attention", "sdp_attention"):
        r.use(key, value, "attn", "sdpa" if to_bool(key, value) else "sdpa")
    elif key == "eager_attention" and to_bool(key, value):
        r.use(key, value, "attn", "eager")
    elif key in ("eval_batch_size",):
        r.ignore(key, value, "evaluation keeps no gradients: below the training peak")
    elif key.startswith(("liger_", "unsloth_")):
        r.ignore(key, value, "a kernel swap that saves activation memory memfit does not "
                 "model apart (only the fused linear cross-entropy is)")
    elif key in _NO_MEMORY or key in NO_MEMORY:
        r.ignore(key, value, "no effect on GPU memory")
    elif key in ("tokens", "added_tokens_overrides"):
        r.ignore(key, value, "new tokens resize the embedding and output rows: slightly more "
                 "memory than the base config's vocabulary")
    else:
        r.ignore(key, value, "not an axolotl field memfit reads; if it changes memory, the "
                 "estimate does not include it")


def read_axolotl(data: Mapping[str, Any], open_ref: Callable[[str], Any] | None = None
                 ) -> Translation:
    r = Reader("axolotl", "train")
    if "base_model" not in data:
        raise MemfitError("base_model: missing; allowed: the model axolotl fine-tunes",
                          field="base_model", value=None, allowed="a model id")
    r.model("base_model", data["base_model"])
    _precision(r, data)
    _adapter(r, data)
    for key, value in data.items():
        if key not in _DONE:
            _field(r, key, value, open_ref)
    return r.done()
