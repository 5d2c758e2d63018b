"""torchtune recipe YAML configs (``tune run lora_finetune_single_device --config ...``), read
into ``memfit train`` options.

Names from torchtune's recipes and configs (v0.6: ``recipes/lora_finetune_single_device.py``,
``recipes/full_finetune_distributed.py``, ``recipes/configs/llama3_1/8B_lora_single_device.yaml``):
``model._component_`` (a builder such as ``torchtune.models.llama3_1.lora_llama3_1_8b``;
``lora_`` / ``qlora_`` prefixes), ``lora_attn_modules`` (``q_proj``, ``k_proj``, ``v_proj``,
``output_proj``), ``apply_lora_to_mlp`` (``w1``, ``w2``, ``w3``), ``apply_lora_to_output``,
``lora_rank``, ``lora_dropout``, ``use_dora``; ``tokenizer.max_seq_len``; ``batch_size``,
``gradient_accumulation_steps``, ``dtype`` (bf16 or fp32: the whole model, adapters included,
is built in it: ``training.set_default_dtype``), ``optimizer._component_`` (+ ``fused``),
``optimizer_in_bwd``, ``loss._component_`` (``CEWithChunkedOutputLoss``: 8 chunks),
``enable_activation_checkpointing``, ``enable_activation_offloading``, ``fsdp_cpu_offload``,
``fsdp_reshard_after_forward``. QLoRA's NF4 base (torchao) streams 16-bit activations. The
distributed recipes shard with FSDP2 ``fully_shard`` whenever more than one GPU runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..errors import MemfitError
from ._base import Reader, Translation, to_bool, to_float, to_int

__all__ = ["read_torchtune", "looks_like_torchtune", "BUILDERS"]

# torchtune builder (without lora_/qlora_ and _base/_instruct) -> memfit catalog name
BUILDERS = {
    "llama3_1_8b": "llama-3.1-8b", "llama3_1_70b": "llama-3.1-70b",
    "llama3_1_405b": "llama-3.1-405b", "llama3_2_1b": "llama-3.2-1b",
    "llama3_2_3b": "llama-3.2-3b", "llama3_3_70b": "llama-3.3-70b", "llama3_8b": "llama-3-8b",
    "llama3_70b": "llama-3-70b", "llama2_7b": "llama-2-7b", "llama2_13b": "llama-2-13b",
    "llama2_70b": "llama-2-70b", "mistral_7b": "mistral-7b-v0.1", "gemma_2b": "gemma-2b",
    "gemma_7b": "gemma-7b", "gemma2_2b": "gemma-2-2b", "gemma2_9b": "gemma-2-9b",
    "gemma2_27b": "gemma-2-27b", "qwen2_5_0_5b": "qwen2.5-0.5b", "qwen2_5_1_5b": "qwen2.5-1.5b",
    "qwen2_5_3b": "qwen2.5-3b", "qwen2_5_7b": "qwen2.5-7b", "qwen2_5_14b": "qwen2.5-14b",
    "qwen2_5_32b": "qwen2.5-32b", "qwen2_5_72b": "qwen2.5-72b", "qwen3_0_6b": "qwen3-0.6b",
    "qwen3_1_7b": "qwen3-1.7b", "qwen3_4b": "qwen3-4b", "qwen3_8b": "qwen3-8b",
    "qwen3_14b": "qwen3-14b", "qwen3_32b": "qwen3-32b", "phi3_mini": "phi-3-mini-4k",
    "phi4_14b": "phi-4",
}
_BUILDER = re.compile(r"^torchtune\.models\.\w+\.(?P<kind>lora_|qlora_)?(?P<name>\w+?)"
                      r"(?:_base|_instruct)?$")
# torchtune's module names -> the Hugging Face names memfit's --lora-targets takes
_MODULES = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj",
            "output_proj": "o_proj"}
_OPTIMIZERS = {
    "torch.optim.AdamW": "adamw", "torch.optim.Adam": "adamw",
    "bitsandbytes.optim.PagedAdamW8bit": "paged-adamw-8bit",
    "bitsandbytes.optim.PagedAdamW": "paged-adamw", "bitsandbytes.optim.AdamW8bit": "adamw-8bit",
    "torchao.optim.AdamW8bit": "adamw-8bit", "torch.optim.SGD": "sgd",
}
_LOSSES = {"torchtune.modules.loss.CEWithChunkedOutputLoss": "chunked",
           "torch.nn.CrossEntropyLoss": "hf",
           "torchtune.modules.loss.LinearCrossEntropyLoss": "chunked"}
_NO_MEMORY = frozenset(("output_dir", "checkpointer", "resume_from_checkpoint", "seed",
                        "shuffle", "epochs", "max_steps_per_epoch", "lr_scheduler",
                        "metric_logger", "log_every_n_steps", "log_peak_memory_stats",
                        "profiler", "device", "save_adapter_weights_only", "clip_grad_norm",
                        "dataset", "log_level", "run_val_every_n_steps", "dataset_val"))


def looks_like_torchtune(data: Mapping[str, Any]) -> bool:
    model = data.get("model")
    return isinstance(model, Mapping) and str(model.get("_component_", "")).startswith(
        "torchtune.")


def _model(r: Reader, model: Mapping[str, Any]) -> None:
    comp = str(model.get("_component_", ""))
    m = _BUILDER.match(comp)
    if not m:
        raise MemfitError.bad_value("model._component_", comp, "a torchtune model builder "
                                    "(torchtune.models.FAMILY.[lora_|qlora_]NAME)")
    if m["name"] in BUILDERS:
        r.model("model._component_", comp)
        r.t.model = BUILDERS[m["name"]]
        r.t.understood[-1]["option"] = f"MODEL {r.t.model}"
    else:  # --model beside names it (complete() says so when it is missing)
        r.ignore("model._component_", comp, "a builder memfit maps to no catalog model ("
                 + ", ".join(sorted(BUILDERS)) + "); give --model beside")
    if not m["kind"]:
        return
    rank = to_int("model.lora_rank", model.get("lora_rank", 8), 1)
    r.use("model.lora_rank", model.get("lora_rank", 8), "lora_rank", rank)
    r.t.options["lora_dtype"] = r.t.options.get("lora_dtype", "bf16")
    if m["kind"] == "qlora_":
        r.use("model._component_", comp, "qlora", True)
        r.t.options["no_kbit_prepare"] = True
        r.t.understood[-1]["option"] += " --no-kbit-prepare"
    names = [_MODULES.get(str(x), str(x)) for x in model.get("lora_attn_modules") or ()]
    if to_bool("model.apply_lora_to_mlp", model.get("apply_lora_to_mlp", False)):
        names += ["gate_proj", "up_proj", "down_proj"]
    if not names:
        raise MemfitError.bad_value("model.lora_attn_modules", None, "a list of modules")
    r.use("model.lora_attn_modules + apply_lora_to_mlp",
          [model.get("lora_attn_modules"), model.get("apply_lora_to_mlp", False)],
          "lora_targets", ",".join(names))
    if model.get("lora_dropout"):
        r.use("model.lora_dropout", model["lora_dropout"], "lora_dropout",
              to_float("model.lora_dropout", model["lora_dropout"], 0.0, 0.99))
    if to_bool("model.use_dora", model.get("use_dora", False)):
        r.use("model.use_dora", True, "dora", True)
    if to_bool("model.apply_lora_to_output", model.get("apply_lora_to_output", False)):
        r.ignore("model.apply_lora_to_output", True, "an adapter on the output projection: "
                 "a little more adapter, gradient and optimizer memory than counted")
    for key in ("lora_alpha", "quantize_base"):
        if key in model:
            r.ignore(f"model.{key}", model[key], "no effect on memory beyond the builder")


def _component(r: Reader, key: str, value: Any, table: Mapping[str, str], option: str) -> None:
    comp = str(value.get("_component_", "")) if isinstance(value, Mapping) else str(value)
    if comp not in table:
        raise MemfitError.bad_value(f"{key}._component_", comp, ", ".join(table))
    r.use(f"{key}._component_", comp, option, table[comp])
    if key == "optimizer" and isinstance(value, Mapping) and to_bool(
            "optimizer.fused", value.get("fused", False)):
        r.use("optimizer.fused", True, "optimizer_impl", "fused")


def _field(r: Reader, key: str, value: Any) -> None:
    if key == "batch_size":
        r.use(key, value, "batch", to_int(key, value, 1))
    elif key == "gradient_accumulation_steps":
        r.use(key, value, "microbatches", to_int(key, value, 1))
    elif key == "dtype":
        recipes = {"bf16": "bf16-true", "fp32": "fp32", "fp16": "fp16-true"}
        if str(value) not in recipes:
            raise MemfitError.bad_value(key, value, "bf16, fp32")
        r.use(key, value, "precision", recipes[str(value)])
    elif key == "tokenizer":
        seq = value.get("max_seq_len") if isinstance(value, Mapping) else None
        if seq is None:
            r.ignore("tokenizer.max_seq_len", None, "unset: sequences as long as the data "
                     "gives; memfit uses its --seq")
        else:
            r.use("tokenizer.max_seq_len", seq, "seq", to_int("tokenizer.max_seq_len", seq, 1))
    elif key == "optimizer":
        _component(r, key, value, _OPTIMIZERS, "optimizer")
    elif key == "loss":
        _component(r, key, value, _LOSSES, "loss")
    elif key in ("enable_activation_checkpointing", "enable_activation_offloading",
                 "optimizer_in_bwd", "fsdp_cpu_offload"):
        on = to_bool(key, value)
        option, mapped = {"enable_activation_checkpointing": ("checkpointing", "full"),
                          "enable_activation_offloading": ("activation_offload", True),
                          "optimizer_in_bwd": ("optimizer_in_backward", True),
                          "fsdp_cpu_offload": ("offload", "params")}[key]
        if on:
            r.use(key, value, option, mapped)
        else:
            r.note(key, value, "off")
    elif key == "fsdp_reshard_after_forward" and not to_bool(key, value):
        r.t.when_distributed["fsdp"] = "grad-op"
        r.note(key, value, "--fsdp grad-op when distributed")
    elif key in ("compile",):
        if to_bool(key, value):
            r.ignore(key, value, "a compiled model may free activations earlier; not modelled")
        else:
            r.note(key, value, "eager mode, as memfit models it")
    elif key in _NO_MEMORY:
        r.ignore(key, value, "no effect on GPU memory")
    else:
        r.ignore(key, value, "not a torchtune field memfit reads; if it changes memory, the "
                 "estimate does not include it")


def read_torchtune(data: Mapping[str, Any]) -> Translation:
    r = Reader("torchtune", "train")
    _model(r, data["model"])
    r.t.when_distributed.setdefault("fsdp", "full")
    r.t.when_distributed["fsdp_version"] = 2
    for key, value in data.items():
        if key != "model":
            _field(r, key, value)
    return r.done()
