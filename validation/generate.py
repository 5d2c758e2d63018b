"""Regenerate ``validation/traced.json``: what the tracer measures for real models.

    python validation/generate.py                 # every case (about 10 minutes on 2 cores)
    python validation/generate.py --only llama-2-7b   # cases whose id contains the text
    python validation/generate.py --only opsac --only oib   # either text
    python validation/generate.py --list          # the case ids

Each case is a catalog model (``src/memfit/catalog/data/<name>.json``) and one scenario; its
record holds the id, the model name and ``model_type``, the workload, every option of the
scenario (``InferenceOptions`` / ``TrainingOptions`` as a dict, defaults included) and the
tracer's result (``TraceResult.to_dict()``). ``--only`` re-traces the matching cases and keeps
the others from the existing file. A case whose model is not in the catalog is skipped and
reported. See ``validation/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from memfit.workload import InferenceOptions, TrainingOptions  # noqa: E402

SCHEMA_VERSION = 1
OUT = Path(__file__).with_name("traced.json")


def infer(model: str, tag: str, **options: Any) -> tuple[str, str, str, Any]:
    return (f"infer/{model}/{tag}", model, "infer", InferenceOptions(**options))


def train(model: str, tag: str, **options: Any) -> tuple[str, str, str, Any]:
    return (f"train/{model}/{tag}", model, "train", TrainingOptions(**options))


# Each tag spells the options that differ from the defaults (see the contract), so an id says
# its scenario: b=batch, p=prompt, g=generate, s=seq, mb=microbatches, ckpt=full checkpointing,
# dp8-fsdpfull=--dp 8 --fsdp full, lora16=--lora-rank 16, qlora16=--qlora --lora-rank 16 (the
# two QLoRA cases are bf16-true: the ids the task asked for).
CASES = [
    # -- inference: dense, several batch/prompt sizes, long prompts, eager vs sdpa, logits
    infer("gpt2", "b1-p896-g128", batch=1, prompt=896, generate=128),
    infer("gpt2", "b8-p896-g128-eager-all", batch=8, prompt=896, generate=128, attn="eager",
          logits="all"),
    infer("llama-2-7b", "b1-p2048-g128", batch=1, prompt=2048, generate=128),
    infer("llama-2-7b", "b8-p4096-g256", batch=8, prompt=4096, generate=256),
    infer("llama-2-7b", "b1-p2048-g128-eager", batch=1, prompt=2048, generate=128,
          attn="eager"),
    infer("llama-2-7b", "b4-p2048-g0-all", batch=4, prompt=2048, generate=0, logits="all"),
    infer("llama-2-7b", "b1-p1024-g16-fp32", batch=1, prompt=1024, generate=16, weights="fp32"),
    infer("llama-3.2-1b", "b1-p32768-g128", batch=1, prompt=32768, generate=128),
    infer("llama-3.2-1b", "b16-p2048-g512", batch=16, prompt=2048, generate=512),
    infer("llama-3.1-8b", "b1-p32768-g128", batch=1, prompt=32768, generate=128),
    infer("llama-3.1-8b", "b32-p1024-g256", batch=32, prompt=1024, generate=256),
    infer("llama-3.1-8b", "b1-p8192-g0-all", batch=1, prompt=8192, generate=0, logits="all"),
    infer("llama-3.1-8b", "b1-p4096-g16-fp32", batch=1, prompt=4096, generate=16,
          weights="fp32"),
    infer("mistral-7b-v0.1", "b1-p8192-g128", batch=1, prompt=8192, generate=128),
    infer("mistral-7b-v0.1", "b4-p32768-g16", batch=4, prompt=32768, generate=16),
    infer("qwen2.5-0.5b", "b64-p1024-g128", batch=64, prompt=1024, generate=128),
    infer("qwen2.5-0.5b", "b8-p4096-g0-all", batch=8, prompt=4096, generate=0, logits="all"),
    infer("qwen2.5-1.5b", "b16-p2048-g128", batch=16, prompt=2048, generate=128),
    infer("qwen2.5-7b", "b1-p32768-g64", batch=1, prompt=32768, generate=64),
    infer("gemma-2-2b", "b1-p4096-g128", batch=1, prompt=4096, generate=128),
    infer("gemma-2-2b", "b8-p2048-g64-bf16", batch=8, prompt=2048, generate=64, weights="bf16"),
    infer("phi-3-mini-4k", "b4-p4096-g128", batch=4, prompt=4096, generate=128),
    infer("smollm2-135m", "b32-p2048-g128-all", batch=32, prompt=2048, generate=128,
          logits="all"),
    # -- inference: MoE (grouped_mm prefill, batched_mm decode), shared experts, MLA
    infer("mixtral-8x7b", "b1-p4096-g128", batch=1, prompt=4096, generate=128),
    infer("mixtral-8x7b", "b32-p512-g64", batch=32, prompt=512, generate=64),
    infer("qwen1.5-moe-a2.7b", "b8-p2048-g128", batch=8, prompt=2048, generate=128),
    infer("deepseek-v2-lite", "b4-p4096-g128", batch=4, prompt=4096, generate=128),
    infer("qwen3-30b-a3b", "b1-p8192-g64", batch=1, prompt=8192, generate=64),
    infer("llama-2-70b", "b1-p4096-g128", batch=1, prompt=4096, generate=128),
    # -- training: every precision recipe, optimizer and implementation, checkpointing
    train("gpt2", "b8-s1024", batch=8, seq=1024),
    train("gpt2", "b4-s1024-fp32-forloop-eager", batch=4, seq=1024, precision="fp32",
          optimizer_impl="forloop", attn="eager"),
    train("gpt2", "b16-s1024-ckpt", batch=16, seq=1024, checkpointing="full"),
    train("smollm2-135m", "b32-s2048", batch=32, seq=2048),
    train("llama-3.2-1b", "b4-s2048", batch=4, seq=2048),
    train("llama-3.2-1b", "b8-s2048-bf16true-fused-ckpt", batch=8, seq=2048,
          precision="bf16-true", optimizer_impl="fused", checkpointing="full"),
    train("llama-3.2-1b", "b4-s2048-bf16master", batch=4, seq=2048, precision="bf16-master"),
    train("llama-3.2-1b", "b2-s4096-fp16mixed", batch=2, seq=4096, precision="fp16-mixed"),
    train("llama-3.2-1b", "b2-s2048-fp32-forloop", batch=2, seq=2048, precision="fp32",
          optimizer_impl="forloop"),
    train("llama-3.2-1b", "b4-s1024-fp16true", batch=4, seq=1024, precision="fp16-true"),
    train("llama-3.2-1b", "b2-s2048-mb4", batch=2, seq=2048, microbatches=4),
    train("llama-2-7b", "b1-s2048", batch=1, seq=2048),
    train("llama-2-7b", "b1-s4096-bf16true-fused-ckpt", batch=1, seq=4096,
          precision="bf16-true", optimizer_impl="fused", checkpointing="full"),
    train("llama-2-7b", "b2-s2048-bf16master-ckpt", batch=2, seq=2048, precision="bf16-master",
          checkpointing="full"),
    train("llama-2-7b", "b1-s2048-bf16true-sgd", batch=1, seq=2048, precision="bf16-true",
          optimizer="sgd"),
    train("llama-2-7b", "b1-s2048-bf16true-sgdm-fused", batch=1, seq=2048,
          precision="bf16-true", optimizer="sgd-momentum", optimizer_impl="fused"),
    train("llama-2-7b", "b1-s2048-adafactor", batch=1, seq=2048, optimizer="adafactor"),
    train("llama-2-7b", "b1-s2048-bf16true-lion-forloop", batch=1, seq=2048,
          precision="bf16-true", optimizer="lion", optimizer_impl="forloop"),
    train("llama-2-7b", "b1-s2048-eager", batch=1, seq=2048, attn="eager"),
    train("llama-3.1-8b", "b1-s8192-ckpt", batch=1, seq=8192, checkpointing="full"),
    train("llama-3.1-8b", "b2-s4096-bf16true", batch=2, seq=4096, precision="bf16-true"),
    train("mistral-7b-v0.1", "b1-s4096-ckpt", batch=1, seq=4096, checkpointing="full"),
    train("qwen2.5-0.5b", "b8-s4096", batch=8, seq=4096),
    train("qwen2.5-0.5b", "b16-s2048-bf16true-fused-ckpt", batch=16, seq=2048,
          precision="bf16-true", optimizer_impl="fused", checkpointing="full"),
    train("qwen2.5-1.5b", "b4-s2048-forloop", batch=4, seq=2048, optimizer_impl="forloop"),
    train("qwen2.5-7b", "b1-s32768-ckpt", batch=1, seq=32768, checkpointing="full"),
    train("gemma-2-2b", "b2-s4096", batch=2, seq=4096),
    train("gemma-2-2b", "b4-s2048-bf16true-ckpt", batch=4, seq=2048, precision="bf16-true",
          checkpointing="full"),
    train("phi-3-mini-4k", "b2-s4096-ckpt", batch=2, seq=4096, checkpointing="full"),
    train("mixtral-8x7b", "b1-s4096-bf16true-ckpt", batch=1, seq=4096, precision="bf16-true",
          checkpointing="full"),
    train("mixtral-8x7b", "b1-s2048", batch=1, seq=2048),
    train("qwen1.5-moe-a2.7b", "b4-s2048", batch=4, seq=2048),
    train("deepseek-v2-lite", "b2-s4096-bf16true-ckpt", batch=2, seq=4096,
          precision="bf16-true", checkpointing="full"),
    train("qwen3-30b-a3b", "b1-s4096-bf16master-ckpt", batch=1, seq=4096,
          precision="bf16-master", checkpointing="full"),
    train("llama-2-70b", "b1-s4096-bf16true-ckpt", batch=1, seq=4096, precision="bf16-true",
          checkpointing="full"),
    # -- training, one rank of 8 under PyTorch FSDP2 (fake process group), bf16-mixed as
    #    FSDP2's MixedPrecisionPolicy: dp8 = --dp 8, fsdpfull / fsdpgradop = --fsdp mode
    train("llama-3.2-1b", "b4-s2048-dp8-fsdpfull", batch=4, seq=2048, dp=8, fsdp="full"),
    train("llama-3.2-1b", "b4-s2048-dp8-fsdpgradop", batch=4, seq=2048, dp=8, fsdp="grad-op"),
    train("llama-3.1-8b", "b1-s4096-dp8-fsdpfull", batch=1, seq=4096, dp=8, fsdp="full"),
    train("llama-3.1-8b", "b2-s4096-dp8-fsdpgradop-ckpt", batch=2, seq=4096, dp=8,
          fsdp="grad-op", checkpointing="full"),
    train("llama-3.1-8b", "b4-s4096-dp8-fsdpfull-ckpt", batch=4, seq=4096, dp=8, fsdp="full",
          checkpointing="full"),
    # -- training with peft LoRA adapters (lora16 = --lora-rank 16) on a frozen base
    train("llama-3.1-8b", "b1-s4096-bf16true-lora16", batch=1, seq=4096, precision="bf16-true",
          lora_rank=16, lora_targets="all-linear"),
    train("llama-3.1-8b", "b4-s2048-bf16true-lora16-ckpt", batch=4, seq=2048,
          precision="bf16-true", lora_rank=16, checkpointing="full",
          lora_targets="all-linear"),
    train("llama-3.2-1b", "b8-s2048-lora16", batch=8, seq=2048, lora_rank=16,
          lora_targets="all-linear"),
    # -- QLoRA (qlora16 = --qlora --lora-rank 16): NF4 double-quant base, fp32 rest, peft LoRA
    train("llama-3.1-8b", "b1-s2048-qlora16", batch=1, seq=2048, precision="bf16-true",
          qlora=True, lora_rank=16, lora_targets="all-linear"),
    train("llama-3.1-8b", "b1-s2048-qlora16-ckpt", batch=1, seq=2048, precision="bf16-true",
          qlora=True, lora_rank=16, checkpointing="full", lora_targets="all-linear"),
    # -- added with the FSDP2 timeline and the peft re-derivation (second session)
    train("qwen1.5-moe-a2.7b", "b2-s2048-dp8-fsdpfull", batch=2, seq=2048, dp=8, fsdp="full"),
    train("llama-3.1-8b", "b1-s2048-fp32-dp4-fsdpgradop", batch=1, seq=2048, precision="fp32",
          dp=4, fsdp="grad-op"),
    train("mistral-7b-v0.1", "b2-s4096-bf16true-dp2-fsdpfull-ckpt", batch=2, seq=4096,
          precision="bf16-true", dp=2, fsdp="full", checkpointing="full"),
    train("llama-3.2-1b", "b4-s2048-dp8-fsdpfull-mb2", batch=4, seq=2048, dp=8, fsdp="full",
          microbatches=2),
    train("llama-3.2-1b", "b8-s2048-lora16-ckpt", batch=8, seq=2048, lora_rank=16,
          checkpointing="full", lora_targets="all-linear"),
    train("qwen2.5-7b", "b2-s2048-bf16true-lora64", batch=2, seq=2048, precision="bf16-true",
          lora_rank=64, lora_targets="all-linear"),
    train("mistral-7b-v0.1", "b1-s4096-bf16true-qlora16", batch=1, seq=4096,
          precision="bf16-true", qlora=True, lora_rank=16, lora_targets="all-linear"),
    train("llama-3.1-8b", "b1-s2048-qlora16-mixed", batch=1, seq=2048, precision="bf16-mixed",
          qlora=True, lora_rank=16, lora_targets="all-linear"),
    # LoRA under FSDP2 (torchtune's lora_finetune_distributed layout)
    train("llama-3.1-8b", "b2-s4096-dp8-fsdpfull-lora16-ckpt", batch=2, seq=4096, dp=8,
          fsdp="full", lora_rank=16, checkpointing="full", lora_targets="all-linear"),
    train("mistral-7b-v0.1", "b1-s4096-dp4-fsdpgradop-lora8", batch=1, seq=4096, dp=4,
          fsdp="grad-op", lora_rank=8, lora_targets="all-linear"),

    # -- issue 16: the knobs of real fine-tuning stacks. Tags: lora16-<targets> (qv = peft's
    #    default for the model type, attn = q/k/v/o, mlp = gate/up/down, all = all-linear),
    #    drop05 = --lora-dropout 0.05, dora, lorabf16 = --lora-dtype bf16, qlora16-s16 =
    #    --no-kbit-prepare, chunked8 = --loss chunked --loss-chunks 8, fusedlce = --loss
    #    liger (Liger's fused linear cross-entropy), opsac = --checkpointing op-selective
    #    (torchtitan), every2 = --checkpoint-every 2, offload = --activation-offload,
    #    oib = --optimizer-in-backward
    *[train("llama-3.2-1b", f"b4-s2048-bf16true-lora16-{tag}{'-drop05' if p else ''}", batch=4,
            seq=2048, precision="bf16-true", lora_rank=16, lora_targets=targets,
            lora_dropout=p)
      for tag, targets in (("qv", "peft-default"), ("attn", "attention"), ("mlp", "mlp"),
                           ("all", "all-linear"))
      for p in (0.0, 0.05)],
    train("llama-3.2-1b", "b4-s2048-bf16true-lora16-all-dora", batch=4, seq=2048,
          precision="bf16-true", lora_rank=16, lora_targets="all-linear", dora=True),
    train("llama-3.2-1b", "b4-s2048-lora16-qv-dora-drop05", batch=4, seq=2048, lora_rank=16,
          lora_targets="peft-default", dora=True, lora_dropout=0.05),
    train("llama-3.2-1b", "b4-s2048-bf16true-lora16-all-lorabf16", batch=4, seq=2048,
          precision="bf16-true", lora_rank=16, lora_targets="all-linear", lora_dtype="bf16"),
    train("llama-3.2-1b", "b4-s2048-lora16-all-lorabf16", batch=4, seq=2048, lora_rank=16,
          lora_targets="all-linear", lora_dtype="bf16"),
    train("qwen2.5-1.5b", "b4-s2048-bf16true-lora16-qv-ckpt", batch=4, seq=2048,
          precision="bf16-true", lora_rank=16, lora_targets="peft-default",
          checkpointing="full"),
    train("qwen1.5-moe-a2.7b", "b2-s2048-bf16true-lora16-attn", batch=2, seq=2048,
          precision="bf16-true", lora_rank=16, lora_targets="attention"),
    train("qwen1.5-moe-a2.7b", "b2-s2048-bf16true-lora16-mlp-drop05", batch=2, seq=2048,
          precision="bf16-true", lora_rank=16, lora_targets="mlp", lora_dropout=0.05),
    train("mixtral-8x7b", "b1-s2048-bf16true-lora16-attn-ckpt", batch=1, seq=2048,
          precision="bf16-true", lora_rank=16, lora_targets="attention", checkpointing="full"),
    train("llama-3.1-8b", "b1-s2048-qlora16-s16-all", batch=1, seq=2048, precision="bf16-true",
          qlora=True, lora_rank=16, lora_targets="all-linear", no_kbit_prepare=True),
    train("llama-3.1-8b", "b2-s2048-qlora16-s16-qv-ckpt", batch=2, seq=2048,
          precision="bf16-true", qlora=True, lora_rank=16, no_kbit_prepare=True,
          lora_targets="peft-default", checkpointing="full"),
    train("llama-3.2-1b", "b4-s2048-qlora16-s16-all-mixed", batch=4, seq=2048,
          precision="bf16-mixed", qlora=True, lora_rank=16, lora_targets="all-linear",
          no_kbit_prepare=True),
    train("llama-3.2-1b", "b4-s2048-bf16true-chunked8", batch=4, seq=2048,
          precision="bf16-true", loss="chunked"),
    train("llama-3.2-1b", "b4-s2048-chunked16", batch=4, seq=2048, loss="chunked",
          loss_chunks=16),
    train("llama-3.2-1b", "b4-s2048-bf16true-fusedlce", batch=4, seq=2048,
          precision="bf16-true", loss="liger"),
    train("llama-3.2-1b", "b4-s2048-fusedlce", batch=4, seq=2048, loss="liger"),
    train("qwen2.5-0.5b", "b8-s4096-bf16true-fusedlce", batch=8, seq=4096,
          precision="bf16-true", loss="liger"),
    train("gemma-2-2b", "b2-s4096-bf16true-chunked8", batch=2, seq=4096,
          precision="bf16-true", loss="chunked"),
    train("llama-3.1-8b", "b2-s4096-bf16true-lora16-all-fusedlce-ckpt", batch=2, seq=4096,
          precision="bf16-true", lora_rank=16, lora_targets="all-linear",
          loss="liger", checkpointing="full"),
    train("llama-3.2-1b", "b8-s2048-bf16true-chunked8-ckpt", batch=8, seq=2048,
          precision="bf16-true", loss="chunked", checkpointing="full"),
    train("llama-3.2-1b", "b4-s2048-bf16true-opsac", batch=4, seq=2048,
          precision="bf16-true", checkpointing="op-selective"),
    train("llama-3.2-1b", "b4-s2048-opsac", batch=4, seq=2048, checkpointing="op-selective"),
    train("llama-3.1-8b", "b2-s4096-bf16true-fused-opsac", batch=2, seq=4096,
          precision="bf16-true", optimizer_impl="fused", checkpointing="op-selective"),
    train("llama-3.2-1b", "b4-s2048-bf16true-ckpt-every2", batch=4, seq=2048,
          precision="bf16-true", checkpointing="full", checkpoint_every=2),
    train("llama-3.2-1b", "b4-s2048-bf16true-opsac-every2", batch=4, seq=2048,
          precision="bf16-true", checkpointing="op-selective", checkpoint_every=2),
    train("qwen1.5-moe-a2.7b", "b4-s4096-bf16true-fused-opsac", batch=4, seq=4096,
          precision="bf16-true", optimizer_impl="fused", checkpointing="op-selective"),
    train("llama-3.2-1b", "b4-s2048-bf16true-offload", batch=4, seq=2048,
          precision="bf16-true", activation_offload=True),
    train("llama-3.2-1b", "b8-s2048-bf16true-ckpt-offload", batch=8, seq=2048,
          precision="bf16-true", checkpointing="full", activation_offload=True),
    train("llama-3.1-8b", "b1-s8192-bf16true-fused-ckpt-offload", batch=1, seq=8192,
          precision="bf16-true", optimizer_impl="fused", checkpointing="full",
          activation_offload=True),
    train("llama-3.2-1b", "b4-s2048-bf16true-oib", batch=4, seq=2048, precision="bf16-true",
          optimizer_in_backward=True),
    train("llama-3.2-1b", "b4-s2048-bf16true-fused-oib", batch=4, seq=2048,
          precision="bf16-true", optimizer_impl="fused", optimizer_in_backward=True),
    train("llama-2-7b", "b1-s4096-bf16true-fused-ckpt-oib", batch=1, seq=4096,
          precision="bf16-true", optimizer_impl="fused", checkpointing="full",
          optimizer_in_backward=True),
    # torchtune-like recipes: full_finetune_single_device (bf16, AC, chunked loss, optimizer
    # in backward, offload), lora_finetune_single_device / qlora (q,v adapters by default in
    # peft, all-linear in torchtune's configs, 16-bit stream), torchtitan (op SAC, bf16-mixed)
    train("llama-3.1-8b", "b2-s4096-bf16true-fused-ckpt-chunked8-oib-offload", batch=2,
          seq=4096, precision="bf16-true", optimizer_impl="fused", checkpointing="full",
          loss="chunked", optimizer_in_backward=True, activation_offload=True),
    train("llama-3.1-8b", "b2-s4096-bf16true-lora16-all-ckpt-chunked8", batch=2, seq=4096,
          precision="bf16-true", lora_rank=16, lora_targets="all-linear",
          checkpointing="full", loss="chunked"),
    train("llama-3.1-8b", "b2-s4096-qlora16-s16-all-ckpt-chunked8", batch=2, seq=4096,
          precision="bf16-true", qlora=True, lora_rank=16, lora_targets="all-linear",
          no_kbit_prepare=True, checkpointing="full", loss="chunked"),
    train("llama-3.2-1b", "b4-s2048-bf16true-lora16-all-opsac-drop05", batch=4, seq=2048,
          precision="bf16-true", lora_rank=16, lora_targets="all-linear", lora_dropout=0.05,
          checkpointing="op-selective"),
    train("llama-3.2-1b", "b4-s2048-bf16true-opsac-fusedlce-oib", batch=4, seq=2048,
          precision="bf16-true", checkpointing="op-selective", loss="liger",
          optimizer_in_backward=True),
    # adapters on the fused MoE experts too (experts = --lora-experts: peft target_parameters)
    train("mixtral-8x7b", "b1-s2048-bf16true-lora16-qv-experts-ckpt", batch=1, seq=2048,
          precision="bf16-true", lora_rank=16, lora_targets="peft-default",
          lora_experts=True, checkpointing="full"),
    train("qwen1.5-moe-a2.7b", "b2-s2048-bf16true-lora16-attn-experts", batch=2, seq=2048,
          precision="bf16-true", lora_rank=16, lora_targets="attention", lora_experts=True),
    train("qwen3-30b-a3b", "b1-s2048-bf16true-lora16-attn-experts-ckpt", batch=1, seq=2048,
          precision="bf16-true", lora_rank=16, lora_targets="attention", lora_experts=True,
          checkpointing="full"),
    # bitsandbytes' paged AdamW (pagedadamw / pagedadamw8bit): state of tensors >= 1e5 elements
    # in CUDA unified memory, outside the allocator's count
    train("llama-3.2-1b", "b4-s2048-bf16true-pagedadamw8bit", batch=4, seq=2048,
          precision="bf16-true", optimizer="paged-adamw-8bit"),
    train("llama-3.2-1b", "b2-s2048-bf16true-pagedadamw-ckpt", batch=2, seq=2048,
          precision="bf16-true", optimizer="paged-adamw", checkpointing="full"),
    train("llama-3.1-8b", "b1-s2048-qlora16-all-pagedadamw8bit", batch=1, seq=2048,
          precision="bf16-true", qlora=True, lora_rank=16, lora_targets="all-linear",
          optimizer="paged-adamw-8bit"),
    # FSDP1 (fsdp1full = --fsdp-version 1 --fsdp full): flat parameters,
    # use_orig_params=True, one unit per decoder layer (accelerate / HF Trainer's layout)
    train("llama-3.2-1b", "b4-s2048-bf16true-dp8-fsdp1full", batch=4, seq=2048,
          precision="bf16-true", dp=8, fsdp="full", fsdp_version=1),
    train("llama-3.2-1b", "b4-s2048-fp32-dp4-fsdp1full", batch=4, seq=2048, precision="fp32",
          dp=4, fsdp="full", fsdp_version=1),
    train("llama-3.1-8b", "b2-s4096-bf16true-dp8-fsdp1full-ckpt", batch=2, seq=4096,
          precision="bf16-true", dp=8, fsdp="full", fsdp_version=1, checkpointing="full"),
]


def catalog_config(name: str) -> dict[str, Any] | None:
    path = ROOT / "src" / "memfit" / "catalog" / "data" / f"{name}.json"
    if not path.exists():
        return None
    return dict(json.loads(path.read_text())["config"])


def run_case(case_id: str, model: str, workload: str, options: Any) -> dict[str, Any] | None:
    from memfit.trace import trace_inference, trace_training

    config = catalog_config(model)
    if config is None:
        print(f"skip {case_id}: no catalog entry {model!r}", flush=True)
        return None
    trace = trace_inference if workload == "infer" else trace_training
    result = trace(config, options)
    print(f"{result.seconds:6.1f}s  {result.peak_bytes / 2**30:9.3f} GiB  "
          f"{result.peak_phase:9s} {case_id}", flush=True)
    return {"id": case_id, "model": model, "model_type": config["model_type"],
            "workload": workload, "options": dataclasses.asdict(options),
            "result": result.to_dict()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append",
                        help="trace only the cases whose id contains this text (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the case ids and exit")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(case[0] for case in CASES))
        return 0
    import torch
    import transformers

    import memfit

    chosen = [c for c in CASES if args.only is None or any(o in c[0] for o in args.only)]
    if not chosen:
        parser.error(f"no case id contains {args.only!r} (see --list)")
    kept: dict[str, Any] = {}
    if args.only is not None and args.out.exists():
        kept = {c["id"]: c for c in json.loads(args.out.read_text())["cases"]}
    started = time.perf_counter()
    for case in chosen:
        try:
            record = run_case(*case)
        except Exception as exc:  # report and go on: one bad case must not lose the others
            print(f"FAILED {case[0]}: {type(exc).__name__}: {exc}", flush=True)
            continue
        if record is not None:
            kept[record["id"]] = record
    order = {case[0]: i for i, case in enumerate(CASES)}
    cases = sorted((c for c in kept.values() if c["id"] in order), key=lambda c: order[c["id"]])
    data = {
        "schema_version": SCHEMA_VERSION,
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "memfit": memfit.__version__, "python": sys.version.split()[0]},
        "tracer": "memfit.trace, device_kind=fake (see docs/tracer.md)",
        "cases": cases,
    }
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {args.out} "
          f"({time.perf_counter() - started:.0f} s for {len(chosen)} traced)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
