"""LLaMA-Factory YAML (``llamafactory-cli train config.yaml``), read into ``memfit train``.

Names and defaults from ``src/llamafactory/hparams/`` (LLaMA-Factory 0.9):
``model_args.py`` (``model_name_or_path``, ``quantization_bit``, ``quantization_method``,
``flash_attn``: auto/disabled/sdpa/fa2, ``enable_liger_kernel``,
``disable_gradient_checkpointing``: gradient checkpointing is ON unless disabled,
``use_unsloth_gc``), ``finetuning_args.py`` (``stage``, ``finetuning_type``: lora by default,
``lora_rank`` 8, ``lora_dropout``, ``lora_target``: ``all`` or a comma list, ``use_dora``,
``pure_bf16``) and ``data_args.py`` (``cutoff_len`` 2048); the rest are the HF Trainer's
(``per_device_train_batch_size``, ``gradient_accumulation_steps``, ``bf16``, ``optim``,
``deepspeed``). LLaMA-Factory loads the model in its compute dtype (``bf16: true`` ->
bfloat16, ``model/loader.py``) and keeps LoRA's trainable parameters in fp32 (peft's default):
memfit's ``bf16-true`` with fp32 adapters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import MemfitError
from ._base import Reader, Translation, to_bool, to_float, to_int
from .hf import apply_hf_field, trainer_defaults

__all__ = ["read_llamafactory", "looks_like_llamafactory"]

_NO_MEMORY = frozenset(("template", "dataset", "dataset_dir", "eval_dataset", "max_samples",
                        "overwrite_cache", "preprocessing_num_workers", "val_size",
                        "plot_loss", "lora_alpha", "trust_remote_code", "dataloader_num_workers",
                        "ddp_timeout", "stage_name", "image_max_pixels", "video_max_pixels",
                        "tokenized_path", "streaming", "buffer_size", "mix_strategy"))
_STAGES_WITH_REFERENCE = {"dpo": "a frozen reference model", "kto": "a frozen reference model",
                          "ppo": "a reference, a reward and a value model",
                          "rm": "a value head"}


def looks_like_llamafactory(data: Mapping[str, Any]) -> bool:
    return "model_name_or_path" in data and any(
        k in data for k in ("finetuning_type", "cutoff_len", "lora_target", "stage", "template"))


def _lora(r: Reader, data: Mapping[str, Any]) -> None:
    kind = data.get("finetuning_type", "lora")
    if kind == "full":
        r.note("finetuning_type", kind, "full fine-tuning (no --lora-rank)")
        return
    if kind != "lora":
        raise MemfitError.bad_value("finetuning_type", kind, "lora, full (freeze tuning is not "
                                    "modelled)")
    rank = to_int("lora_rank", data.get("lora_rank", 8), 1)
    r.use("finetuning_type + lora_rank", f"{kind}, {rank}", "lora_rank", rank)
    target = data.get("lora_target", "all")
    targets = "all-linear" if str(target).strip().lower() == "all" else ",".join(
        x.strip() for x in str(target).split(",") if x.strip())
    r.use("lora_target", target, "lora_targets", targets)
    if data.get("lora_dropout"):
        r.use("lora_dropout", data["lora_dropout"], "lora_dropout",
              to_float("lora_dropout", data["lora_dropout"], 0.0, 0.99))
    if to_bool("use_dora", data.get("use_dora", False)):
        r.use("use_dora", True, "dora", True)
    bits = data.get("quantization_bit")
    if bits is not None:
        if to_int("quantization_bit", bits, 1) != 4 or str(
                data.get("quantization_method", "bitsandbytes")).lower() != "bitsandbytes":
            raise MemfitError.bad_value("quantization_bit", bits, "4 with quantization_method "
                                        "bitsandbytes (QLoRA; other quantized bases are not "
                                        "modelled)")
        r.use("quantization_bit", bits, "qlora", True)
        # LLaMA-Factory prepares the model itself (model_utils/checkpointing.py), without
        # peft's fp32 upcast: the 16-bit stream
        r.t.options["no_kbit_prepare"] = True
        r.t.understood[-1]["option"] += " --no-kbit-prepare"


def _precision(r: Reader, data: Mapping[str, Any]) -> None:
    for key in ("pure_bf16", "bf16", "fp16"):
        if to_bool(key, data.get(key, False)):
            r.use(key, data[key], "precision", "fp16-true" if key == "fp16" else "bf16-true")
            return
    r.ignore("bf16", None, "neither bf16 nor fp16 set: LLaMA-Factory picks the compute "
             "dtype from the GPU; memfit keeps its own --precision")


def _field(r: Reader, key: str, value: Any, open_ref: Callable[[str], Any] | None) -> None:
    if key == "cutoff_len":
        r.use(key, value, "seq", to_int(key, value, 1))
    elif key == "disable_gradient_checkpointing":
        r.use(key, value, "checkpointing", "none" if to_bool(key, value) else "full")
    elif key == "enable_liger_kernel":
        r.use(key, value, "loss", "liger" if to_bool(key, value) else "hf")
    elif key == "flash_attn":
        r.use(key, value, "attn", "eager" if str(value).lower() == "disabled" else "sdpa")
    elif key == "stage":
        why = _STAGES_WITH_REFERENCE.get(str(value).lower())
        if why:
            r.ignore(key, value, f"this stage also holds {why}: more memory than the "
                     "supervised step memfit counts")
        else:
            r.note(key, value, "a causal-LM loss step")
    elif key in ("use_unsloth", "use_unsloth_gc"):
        r.ignore(key, value, "Unsloth's kernels and offloaded checkpoints save activation "
                 "memory memfit does not model apart")
    elif key in _NO_MEMORY:
        r.ignore(key, value, "no effect on GPU memory")
    elif not apply_hf_field(r, key, value, open_ref):
        r.ignore(key, value, "not a LLaMA-Factory field memfit reads; if it changes memory, "
                 "the estimate does not include it")


_DONE = frozenset(("model_name_or_path", "finetuning_type", "lora_rank", "lora_target",
                   "lora_dropout", "use_dora", "quantization_bit", "quantization_method",
                   "pure_bf16", "bf16", "fp16"))


def read_llamafactory(data: Mapping[str, Any], open_ref: Callable[[str], Any] | None = None
                      ) -> Translation:
    r = Reader("llama-factory", "train")
    r.model("model_name_or_path", data.get("model_name_or_path"))
    _precision(r, data)
    _lora(r, data)
    if "disable_gradient_checkpointing" not in data:
        r.use("disable_gradient_checkpointing", "(default false)", "checkpointing", "full")
    if "cutoff_len" not in data:
        r.use("cutoff_len", "(default 2048)", "seq", 2048)
    for key, value in data.items():
        if key not in _DONE:
            _field(r, key, value, open_ref)
    trainer_defaults(r, data)  # the rest are the HF Trainer's arguments
    return r.done()
