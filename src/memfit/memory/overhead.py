"""Runtime overheads outside PyTorch tensors: they go into ``total_bytes``, not ``peak_bytes``.

``peak_bytes`` is what ``torch.cuda.max_memory_allocated()`` reports. ``nvidia-smi`` shows more:
the CUDA context (driver state, kernels of the loaded libraries), the caching allocator's
reserve beyond the live tensors (block rounding, cached free blocks, fragmentation), NCCL's
communication buffers when several GPUs talk, and an engine's CUDA graphs. Each is a named term
with its source. The constants are measured: ``validation/gpu/`` holds the runs on an H100
(see ``docs/gpu-measurements.md``); where no measurement exists the value is a cited default.
"""

from __future__ import annotations

from dataclasses import dataclass

from .breakdown import Term

__all__ = ["OverheadModel", "DEFAULT_OVERHEADS", "overhead_terms", "overhead_bytes"]

MiB = 2**20


@dataclass(frozen=True)
class OverheadModel:
    """The constants of the overhead terms (bytes, or fractions of the tensor peak)."""

    # Process memory outside the caching allocator (nvidia-smi's figure minus
    # max_memory_reserved): CUDA context, loaded kernels, cuBLAS/cuDNN handles. Measured on an
    # H100 80GB, driver 580.159, CUDA 13.0, torch 2.11 (validation/gpu/h100-2026-11-26.json):
    # 694.8 MiB in every inference case, 750.8-768.8 MiB in every training case (backward and
    # optimizer kernels load more modules). Other CUDA/driver versions differ by ~100 MiB.
    cuda_context_bytes: int = 695 * MiB
    cuda_context_train_bytes: int = 767 * MiB
    # The caching allocator reserves whole segments (2 MiB small pool, 20 MiB+ large) and
    # keeps freed blocks cached: max_memory_reserved / max_memory_allocated - 1. Measured on
    # the same 24 cases: median 11.0%, range 0.6% (fp32 forloop training) to 82% (eager
    # attention with all-position logits); the median is used, the spread is documented.
    allocator_slack_fraction: float = 0.11
    # NCCL: per process, buffers per channel and peer (NCCL_BUFFSIZE 4 MiB default) plus
    # its own CUDA kernels' context: a few hundred MiB (NCCL docs, env NCCL_BUFFSIZE).
    nccl_bytes: int = 400 * MiB
    # PyTorch's cuBLAS workspace, one per (handle, stream), i.e. per thread that runs matmuls:
    # CUBLAS_WORKSPACE_CONFIG defaults to ":4096:8" (8 x 4 MiB) on Hopper and newer (about
    # 8 MiB before). It is allocated through the caching allocator, so max_memory_allocated
    # includes it while the tracer cannot see it. Measured on the H100: 33,686,016 bytes
    # allocated after the first bf16 matmul; every inference case 32-33 MiB above the
    # tracer, every training case 64 MiB above (the autograd thread has its own handle).
    cublas_workspace_bytes: int = 32 * MiB


DEFAULT_OVERHEADS = OverheadModel()


def overhead_terms(peak_bytes: int, *, world_size: int = 1, engine: str = "hf",
                   mode: str = "infer",
                   model: OverheadModel = DEFAULT_OVERHEADS) -> list[Term]:
    """The overhead terms for one GPU of a run whose tensors peak at ``peak_bytes``."""
    context = model.cuda_context_train_bytes if mode == "train" else model.cuda_context_bytes
    terms = [
        Term("cuda_context", context, "C_ctx", f"{context}",
             "measured: validation/gpu/h100-2026-11-26.json (nvidia-smi minus "
             "max_memory_reserved, H100, CUDA 13.0, torch 2.11)"),
    ]
    if engine != "llamacpp":
        # ggml allocates its model, KV and compute buffers once, at their exact sizes: no
        # caching allocator (llama.cpp ggml/src/ggml-backend.cpp ggml_backend_buft_alloc_buffer)
        terms.append(Term(
            "allocator_slack", int(peak_bytes * model.allocator_slack_fraction),
            "s * peak", f"{model.allocator_slack_fraction} * {peak_bytes}",
            "measured: median of max_memory_reserved / max_memory_allocated - 1 over the "
            "24 H100 cases of validation/gpu (range 0.6%-82%)"))
    if engine == "hf":
        handles = 2 if mode == "train" else 1
        terms.append(Term(
            "cublas_workspace", handles * model.cublas_workspace_bytes, "n_handles * W_cublas",
            f"{handles} * {model.cublas_workspace_bytes}",
            "pytorch aten/src/ATen/cuda/CublasHandlePool.cpp getChosenWorkspaceSize; measured "
            "in validation/gpu/h100-2026-11-26.json",
            note="allocated through PyTorch's caching allocator: a real GPU's "
                 "max_memory_allocated includes it, peak_bytes and the tracer do not"))
    if world_size > 1:
        terms.append(Term("nccl_buffers", model.nccl_bytes, "C_nccl", f"{model.nccl_bytes}",
                          "NCCL user guide: NCCL_BUFFSIZE (4 MiB) per channel and peer"))
    # vLLM's CUDA graphs are engines.vllm_estimate's own term (inside or outside its KV
    # budget depending on the version); llama.cpp has no PyTorch allocator (see below)
    return terms


def overhead_bytes(peak_bytes: int, *, world_size: int = 1, engine: str = "hf",
                   mode: str = "infer",
                   model: OverheadModel = DEFAULT_OVERHEADS) -> dict[str, int]:
    """``{t.name: t.bytes for t in overhead_terms(...)}``, in the same order, without
    formatting the derivations (an estimate's terms are built only when read)."""
    out = {"cuda_context": (model.cuda_context_train_bytes if mode == "train"
                            else model.cuda_context_bytes)}
    if engine != "llamacpp":
        out["allocator_slack"] = int(peak_bytes * model.allocator_slack_fraction)
    if engine == "hf":
        out["cublas_workspace"] = (2 if mode == "train" else 1) * model.cublas_workspace_bytes
    if world_size > 1:
        out["nccl_buffers"] = model.nccl_bytes
    return out
