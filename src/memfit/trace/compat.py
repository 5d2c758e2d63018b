"""Where a CPU trace would take another road than a GPU run, and how the tracer steers it back.

Each fix applies to the fake run and the real CPU run alike (so the tests' fake == real
comparison still covers it) unless it is marked fake-only; ``docs/tracer.md`` lists them.

1. ``masking_utils.is_tracing`` treats fake tensors as "tracing" (it is meant for
   ``torch.export``) and would then build an explicit ``[B, 1, S, S]`` mask where the real run
   relies on SDPA's ``is_causal=True``. Patched to ignore fake tensors.
2. (fake only) ``aten._grouped_mm``'s meta kernel accepts bf16 only; the CPU kernel and CUDA
   (through its fallback) take fp32/fp16 too. Other dtypes get the same output allocation
   the meta kernel makes for bf16.
3. (fake only) ``Tensor.item()`` on a fake tensor has no value (Adafactor reads
   ``param.norm().item()``); it returns 1 of the tensor's kind. Values never decide an
   allocation on the paths the tracer runs (MoE routing uses static-shape grouped GEMMs).
4. (fake only) Ops FakeTensorMode cannot fake it runs on zero-filled *real* copies of their
   inputs (its "fallback": ``_fused_sgd_`` did, with every parameter of the model). The
   tracer refuses that fallback and gives the in-place fused SGD kernel a no-op instead.
5. Dropout: on CUDA ``F.dropout`` runs the fused ``native_dropout`` (a 1-byte bool mask kept
   for backward); on CPU it builds a mask in the input's dtype (2 or 4 bytes). SDPA with
   ``dropout_p > 0`` falls back on CPU to the math kernel that materialises the ``S x S``
   scores, while CUDA's flash/memory-efficient kernels drop inside the kernel and keep no
   mask. The tracer calls ``native_dropout`` and runs SDPA with ``dropout_p=0`` (same outputs
   and saved tensors as the CUDA kernels; only the random numbers differ). SDPA in fp32 with
   grouped KV heads (``enable_gqa``) has no fused CUDA kernel and runs CUDA's math kernel
   (``S x S`` scores); the tracer calls that math kernel too, where CPU would use its flash.
   The other way round, SDPA with ``d_qk != d_v`` (DeepSeek's MLA) has no fused CPU kernel
   and runs the math kernel on CPU, while CUDA runs a fused one; the tracer runs
   ``memfit::fused_attention``, an op that allocates what a fused kernel does.
6. Autocast: CPU and CUDA autocast cast different op lists. CUDA runs ``pow``, ``exp``,
   ``rsqrt``, ``layer_norm``, ... in fp32 and gives ``softmax``, ``log_softmax``, ``sum``,
   ``cumsum``, ... an fp32 ``dtype``; CPU autocast leaves them in 16 bits (GPT-2's
   ``gelu_new`` and eager ``softmax`` then keep half the bytes a GPU keeps). For the mixed
   recipes the tracer registers CUDA's policy for those ops on the ``AutocastCPU`` key
   (``CUDA_FP32_OPS``, ``CUDA_FP32_SET_DTYPE_OPS``, ``CUDA_LOWER_OPS``, from ATen's
   ``autocast_mode.h``) and lets ``cross_entropy_loss`` fall through as CUDA does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["cuda_autocast_policy", "fake_overrides", "gpu_semantics", "no_real_fallback",
           "transformers_patches"]


# -- 1. transformers' mask decisions ---------------------------------------------------------
@contextlib.contextmanager
def transformers_patches() -> Iterator[None]:
    """Make transformers decide masks for fake tensors as it does for real ones."""
    from transformers import masking_utils
    from transformers.utils import import_utils

    original = masking_utils.is_tracing

    def is_tracing(tensor: Any = None) -> bool:
        # The same test without the fake-tensor clause (torch.compile/jit/fx still count).
        return original(None) or (tensor is not None and import_utils.is_torch_fx_proxy(tensor))

    masking_utils.is_tracing = is_tracing
    try:
        yield
    finally:
        masking_utils.is_tracing = original


# -- 2, 3 and 4. fake-only fixes, as dispatch overrides -------------------------------------------
def _grouped_mm_any_dtype(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    mat_a, mat_b = args[0], args[1]
    if mat_a.dtype == torch.bfloat16 and mat_b.dtype == torch.bfloat16:
        return func(*args, **kwargs)
    from torch._meta_registrations import _create_grouped_mm_output_tensor

    offs = args[2] if len(args) > 2 else kwargs.get("offs")
    out_dtype = args[4] if len(args) > 4 else kwargs.get("out_dtype")
    # Runs under the fake mode (the tracker is popped while it dispatches): a fake output.
    return _create_grouped_mm_output_tensor(mat_a, mat_b, offs, out_dtype)


def _item_placeholder(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    from torch._subclasses.fake_tensor import DataDependentOutputException

    try:
        return func(*args, **kwargs)  # a fake tensor built from a constant still has its value
    except DataDependentOutputException:
        dtype = args[0].dtype
        if dtype == torch.bool:
            return True
        return 1.0 if dtype.is_floating_point or dtype.is_complex else 1


def _fake_device(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # ``tensor.device`` of a fake tensor is an op (prim.device): two in three ops of a fake
    # trace. Answer it as FakeTensor.__torch_dispatch__ does, without the mode's dispatch.
    return args[0].fake_device


def _in_place_no_op(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    # A fused optimizer kernel updates its tensor lists in place and allocates nothing:
    # on fake tensors (no values, no metadata change) there is nothing to do.
    return None


def fake_overrides() -> dict[Any, Any]:
    """ATen overloads the tracker runs differently on fake tensors."""
    aten = torch.ops.aten
    return {
        aten._grouped_mm.default: _grouped_mm_any_dtype,
        aten._local_scalar_dense.default: _item_placeholder,
        torch.ops.prim.device.default: _fake_device,
        # FakeTensorMode runs these through its "fallback": the CPU kernel on zero-filled
        # real copies of every input (all parameters, gradients and buffers of the model).
        aten._fused_sgd_.default: _in_place_no_op,
        aten._fused_sgd_.tensor_lr: _in_place_no_op,
    }


@contextlib.contextmanager
def no_real_fallback() -> Iterator[None]:
    """Refuse FakeTensorMode's fallback, which materialises real inputs for ops it cannot
    fake: a full-size model would need its real memory. Fails loudly instead, naming the op
    (give it an entry in :func:`fake_overrides`)."""
    from torch._subclasses import fake_tensor

    original = fake_tensor.run_fallback_kernel

    def refuse(fake_mode: Any, func: Any, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"memfit.trace: fake tensors cannot run {func} without real memory "
            "(FakeTensorMode's fallback); it needs an override in memfit.trace.compat")

    fake_tensor.run_fallback_kernel = refuse
    try:
        yield
    finally:
        fake_tensor.run_fallback_kernel = original


# -- 5. CUDA kernels' memory behaviour for dropout and attention ----------------------------------
def _native_dropout(original: Any) -> Any:
    def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True,
                inplace: bool = False) -> torch.Tensor:
        if training and 0.0 < p < 1.0 and not inplace:
            return torch.native_dropout(input, p, True)[0]
        return original(input, p, training, inplace)

    return dropout


# A fused attention kernel for d_qk != d_v (MLA), which CPU SDPA lacks (it runs the math
# kernel there, materialising the scores) and CUDA has (memory-efficient / cuDNN). Its
# allocations are a fused kernel's: the output and an fp32 log-sum-exp per query and head,
# saving q, k, v, out, lse for backward, whose own outputs are dq, dk, dv. The values are
# SDPA's, computed in fp32 *inside* the op, where no dispatch mode sees the scratch.
def _scores(query: torch.Tensor, key: torch.Tensor, attn_mask: torch.Tensor | None,
            is_causal: bool, scale: float | None) -> tuple[torch.Tensor, float]:
    scale = scale if scale is not None else query.shape[-1] ** -0.5
    scores = (query.float() @ key.float().transpose(-2, -1)) * scale
    if is_causal:
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = (scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool
                  else scores + attn_mask)
    return scores, scale


@torch.library.custom_op("memfit::fused_attention", mutates_args=())
def _fused_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attn_mask: torch.Tensor | None, is_causal: bool,
                     scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    scores, _ = _scores(query, key, attn_mask, is_causal, scale)
    out = (scores.softmax(-1) @ value.float()).to(query.dtype)
    return out, scores.logsumexp(-1)


@_fused_attention.register_fake
def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
      attn_mask: torch.Tensor | None, is_causal: bool,
      scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    return (query.new_empty((*query.shape[:-1], value.shape[-1])),
            query.new_empty(query.shape[:-1], dtype=torch.float32))


@torch.library.custom_op("memfit::fused_attention_backward", mutates_args=())
def _fused_attention_backward(grad: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                              value: torch.Tensor, attn_mask: torch.Tensor | None,
                              is_causal: bool, scale: float | None
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scores, scale = _scores(query, key, attn_mask, is_causal, scale)
    probs, g = scores.softmax(-1), grad.float()
    dv = probs.transpose(-2, -1) @ g
    dp = g @ value.float().transpose(-2, -1)
    ds = probs * (dp - (dp * probs).sum(-1, keepdim=True)) * scale
    dq, dk = ds @ key.float(), ds.transpose(-2, -1) @ query.float()
    return dq.to(query.dtype), dk.to(key.dtype), dv.to(value.dtype)


@_fused_attention_backward.register_fake
def _(grad: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
      attn_mask: torch.Tensor | None, is_causal: bool,
      scale: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


def _fused_attention_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    query, key, value, attn_mask, is_causal, scale = inputs
    ctx.save_for_backward(query, key, value, *output)  # what the CUDA kernels save
    ctx.attn_mask, ctx.is_causal, ctx.scale = attn_mask, is_causal, scale


def _fused_attention_grad(ctx: Any, grad_out: torch.Tensor, grad_lse: Any) -> tuple[Any, ...]:
    query, key, value, _out, _lse = ctx.saved_tensors
    dq, dk, dv = _fused_attention_backward(grad_out, query, key, value, ctx.attn_mask,
                                           ctx.is_causal, ctx.scale)
    return dq, dk, dv, None, None, None


_fused_attention.register_autograd(_fused_attention_grad, setup_context=_fused_attention_setup)


def _sdpa_as_cuda(original: Any) -> Any:
    def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
             is_causal: bool = False, scale: float | None = None,
             enable_gqa: bool = False) -> torch.Tensor:
        dtype = query.dtype
        device = query.device.type
        if dtype == torch.float32 and torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)  # autocast casts SDPA's inputs
        if enable_gqa and dtype == torch.float32 and key.shape[-3] != query.shape[-3]:
            # CUDA has no fused fp32 kernel with grouped KV heads: the math kernel, which
            # repeats K/V and materialises the scores (checked on H100, torch 2.11).
            return torch.ops.aten._scaled_dot_product_attention_math(
                query, key, value, attn_mask, 0.0, is_causal, scale=scale, enable_gqa=True)[0]
        if query.shape[-1] != value.shape[-1] and key.shape[-3] == query.shape[-3]:
            # MLA: no fused CPU kernel for d_qk != d_v; CUDA's are fused (see above).
            if dtype != query.dtype:
                query, key, value = (t.to(dtype) for t in (query, key, value))
            return _fused_attention(query, key, value, attn_mask, is_causal, scale)[0]
        return original(query, key, value, attn_mask, 0.0, is_causal, scale=scale,
                        enable_gqa=enable_gqa)

    return sdpa


@contextlib.contextmanager
def gpu_semantics(enabled: bool = True) -> Iterator[None]:
    """Run dropout and attention as the CUDA kernels do (module docstring, item 5).

    Patches the ``torch.nn.functional`` attributes that ``nn.Dropout`` and transformers look
    up at call time (a torch-function mode would not reach the recomputation that activation
    checkpointing runs inside the autograd engine, and costs a Python call per torch call).
    """
    if not enabled:
        yield
        return
    saved = (F.dropout, F.scaled_dot_product_attention)
    F.dropout = _native_dropout(saved[0])
    F.scaled_dot_product_attention = _sdpa_as_cuda(saved[1])
    try:
        yield
    finally:
        F.dropout, F.scaled_dot_product_attention = saved


# -- 6. CUDA's autocast op lists on the AutocastCPU key -------------------------------------------
#: ATen's ``AT_FORALL_FP32`` (CUDA): inputs cast to fp32 (upsampling ops left out).
CUDA_FP32_OPS = (
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p",
    "reciprocal", "rsqrt", "sinh", "tan", "pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar",
    "softplus", "layer_norm", "native_layer_norm", "group_norm", "frobenius_norm.dim",
    "nuclear_norm", "nuclear_norm.dim", "cosine_similarity", "poisson_nll_loss",
    "cosine_embedding_loss", "nll_loss", "nll_loss2d", "hinge_embedding_loss", "kl_div",
    "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss", "margin_ranking_loss",
    "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss", "multi_margin_loss",
    "binary_cross_entropy_with_logits", "dist", "pdist", "cdist", "renorm", "logsumexp",
)
#: ``AT_FORALL_FP32_SET_OPT_DTYPE`` (CUDA): run with ``dtype=float32`` unless one is given
#: (the output is fp32; the input is not copied).
CUDA_FP32_SET_DTYPE_OPS = (
    "prod", "prod.dim_int", "softmax.int", "log_softmax.int", "cumprod", "cumsum",
    "linalg_vector_norm", "linalg_matrix_norm", "sum", "sum.dim_IntList",
)
#: ``AT_FORALL_LOWER_PRECISION_FP`` entries (CUDA) that CPU autocast lacks.
CUDA_LOWER_OPS = ("addmv", "addr", "einsum", "mv", "chain_matmul", "linalg_multi_dot",
                  "convolution")
#: CPU autocast casts these; CUDA has no entry (its decomposition is autocast op by op).
CUDA_FALLTHROUGH_OPS = ("cross_entropy_loss",)

_AUTOCAST_CPU = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)
_LOW = (torch.float16, torch.bfloat16)


def _map_tensors(value: Any, fn: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(v, fn) for v in value)
    return value


def _eligible(t: torch.Tensor) -> bool:
    # ATen's is_eligible for CPU: a floating tensor that is not double.
    return t.is_floating_point() and t.dtype != torch.float64


def _fp32_kernel(op: Any) -> Any:
    def to_fp32(t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.float32) if _eligible(t) and t.dtype in _LOW else t

    def kernel(*args: Any, **kwargs: Any) -> Any:
        with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
            return op(*_map_tensors(args, to_fp32), **_map_tensors(kwargs, to_fp32))

    return kernel


def _set_dtype_kernel(op: Any) -> Any:
    names = [a.name for a in op._schema.arguments]
    index = names.index("dtype")

    def kernel(*args: Any, **kwargs: Any) -> Any:
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
            if first is not None and _eligible(first):
                if len(args) > index:
                    if args[index] is None:
                        args = (*args[:index], torch.float32, *args[index + 1:])
                elif kwargs.get("dtype") is None:
                    kwargs = {**kwargs, "dtype": torch.float32}
            return op(*args, **kwargs)

    return kernel


def _lower_kernel(op: Any) -> Any:
    def kernel(*args: Any, **kwargs: Any) -> Any:
        low = torch.get_autocast_dtype("cpu")

        def to_low(t: torch.Tensor) -> torch.Tensor:
            return t.to(low) if _eligible(t) and t.dtype == torch.float32 else t

        with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
            return op(*_map_tensors(args, to_low), **_map_tensors(kwargs, to_low))

    return kernel


def _overload(name: str) -> Any:
    base, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, base), overload or "default")


@contextlib.contextmanager
def cuda_autocast_policy(enabled: bool = True) -> Iterator[None]:
    """While active, CPU autocast casts as CUDA autocast does (module docstring, item 6)."""
    if not enabled:
        yield
        return
    import warnings

    lib = torch.library.Library("aten", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "overriding a previously registered kernel"
            for group, make in ((CUDA_FP32_OPS, _fp32_kernel),
                                (CUDA_FP32_SET_DTYPE_OPS, _set_dtype_kernel),
                                (CUDA_LOWER_OPS, _lower_kernel)):
                for name in group:
                    lib.impl(name, make(_overload(name)), "AutocastCPU")
            for name in CUDA_FALLTHROUGH_OPS:
                lib.impl(name, torch.library.fallthrough_kernel, "AutocastCPU")
        yield
    finally:
        lib._destroy()
