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

__all__ = ["OverheadModel", "DEFAULT_OVERHEADS", "overhead_terms"]

MiB = 2**20


@dataclass(frozen=True)
class OverheadModel:
    """The constants of the overhead terms (bytes, or fractions of the tensor peak)."""

    # CUDA context + cuBLAS/cuDNN handles after the first kernels, as nvidia-smi sees it,
    # minus what the caching allocator reserves. Measured on an H100 with torch 2.11 (see
    # validation/gpu); the range seen elsewhere is 300-600 MiB depending on CUDA, driver and
    # how many libraries' kernels are loaded (lazy loading, CUDA_MODULE_LOADING=LAZY).
    cuda_context_bytes: int = 512 * MiB
    # The caching allocator reserves segments of 2 MiB (small pool) and 20 MiB+ (large) and
    # keeps freed blocks cached: max_memory_reserved / max_memory_allocated - 1, measured.
    allocator_slack_fraction: float = 0.05
    # NCCL: per process, buffers per channel and peer (NCCL_BUFFSIZE 4 MiB default) plus
    # its own CUDA kernels' context: a few hundred MiB (NCCL docs, env NCCL_BUFFSIZE).
    nccl_bytes: int = 400 * MiB
    # vLLM's CUDA graph capture for decode batch sizes (vllm/worker: "Graph capturing
    # finished ... took 0.5-1 GiB"), reserved outside the KV cache budget.
    cuda_graph_bytes: int = 512 * MiB


DEFAULT_OVERHEADS = OverheadModel()


def overhead_terms(peak_bytes: int, *, world_size: int = 1, engine: str = "hf",
                   model: OverheadModel = DEFAULT_OVERHEADS) -> list[Term]:
    """The overhead terms for one GPU of a run whose tensors peak at ``peak_bytes``."""
    terms = [
        Term("cuda_context", model.cuda_context_bytes, "C_ctx", f"{model.cuda_context_bytes}",
             "measured: validation/gpu (nvidia-smi after torch.cuda.init() and one matmul)"),
        Term("allocator_slack", int(peak_bytes * model.allocator_slack_fraction),
             "s * peak", f"{model.allocator_slack_fraction} * {peak_bytes}",
             "measured: max_memory_reserved / max_memory_allocated - 1 (validation/gpu)"),
    ]
    if world_size > 1:
        terms.append(Term("nccl_buffers", model.nccl_bytes, "C_nccl", f"{model.nccl_bytes}",
                          "NCCL user guide: NCCL_BUFFSIZE (4 MiB) per channel and peer"))
    if engine == "vllm":
        terms.append(Term("cuda_graphs", model.cuda_graph_bytes, "C_graphs",
                          f"{model.cuda_graph_bytes}",
                          "vLLM worker log 'Graph capturing finished' (0.5-1 GiB typical)"))
    return terms
