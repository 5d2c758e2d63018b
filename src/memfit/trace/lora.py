"""LoRA (and QLoRA) through peft, on fake tensors.

``--lora-rank R``: peft's ``LoraConfig(r=R, target_modules=...)`` on the transformers model
built in the recipe's weight dtype, with ``--lora-targets`` resolved as :func:`lora_targets`
says, ``lora_dropout`` and ``use_dora`` as asked; peft's defaults otherwise (``lora_alpha=8``,
no bias, ``autocast_adapter_dtype=True``: the adapters are fp32 whatever the base's dtype,
unless ``--lora-dtype`` names another). The base is frozen; the optimizer steps the adapters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import MemfitError

__all__ = ["LORA_TARGETS", "QLORA_PRECISIONS", "apply_lora", "apply_qlora", "fake_swappable",
           "lora_targets", "nf4_storages", "quantize_nf4"]

#: The projections LoRA adapts (Llama/Mistral/Qwen names; transformers' other families use
#: the same names for these, where they have them).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION_TARGETS = LORA_TARGETS[:4]
MLP_TARGETS = LORA_TARGETS[4:]
_ADAPTER_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _drop_fake_weakrefs(*tensors: torch.Tensor) -> None:
    """Forget FakeTensorMode's memo entries for ``tensors``.

    ``Module.to`` swaps each fake parameter with its converted copy
    (``torch.utils.swap_tensors``), which refuses a tensor with a weak reference; the fake
    mode's converter memo holds one for the fake tensors it made. The memo only caches
    conversions to fake tensors: dropping entries changes nothing else.
    """
    from torch._guards import active_fake_mode

    mode = active_fake_mode()
    if mode is None:
        return
    ids = {id(t) for t in tensors}
    memo = mode.fake_tensor_converter.meta_converter.tensor_memo
    for key, value in list(memo.items()):
        if id(value) in ids:
            del memo[key]


@contextlib.contextmanager
def fake_swappable() -> Iterator[None]:
    """Let peft move its new adapter modules with ``.to()`` on fake tensors."""
    import torch.utils

    original = torch.utils.swap_tensors

    def swap_tensors(t1: torch.Tensor, t2: torch.Tensor) -> None:
        _drop_fake_weakrefs(t1, t2)
        return original(t1, t2)

    torch.utils.swap_tensors = swap_tensors
    try:
        yield
    finally:
        torch.utils.swap_tensors = original


def require_peft() -> Any:
    try:
        import peft
    except ImportError as exc:
        raise MemfitError.bad_value("lora-rank", "peft missing",
                                    "peft installed to trace LoRA (pip install peft)") from exc
    return peft


def lora_targets(model: Any, spec: str) -> list[str] | str | None:
    """``--lora-targets`` as peft's ``target_modules``.

    ``peft-default``: peft's own default for the model type
    (``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``, ``q_proj, v_proj`` for Llama,
    Mistral, Mixtral, Qwen); ``all-linear``: peft's own shorthand (every
    ``nn.Linear``/``Conv1D`` but the output embedding: the seven projections of a Llama);
    ``attention`` / ``mlp``: the q/k/v/o or gate/up/down projections the model has; else a
    comma list of module names.
    """
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
             if isinstance(m, torch.nn.Linear)}
    if spec == "peft-default":
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in mapping:
            raise MemfitError.bad_value("lora-targets", spec,
                                        "all-linear, attention, mlp or module names (peft has "
                                        f"no default targets for {model_type!r})")
        # what peft's _prepare_adapter_config sets for target_modules=None, passed explicitly:
        # peft 0.21 with transformers 5's MoE weight conversions leaves None unresolved for
        # Mixtral (NoMatchingPeftModuleError), while the mapping names q_proj, v_proj
        return list(mapping[model_type])
    if spec == "all-linear":
        return spec
    wanted = {"attention": ATTENTION_TARGETS, "mlp": MLP_TARGETS}.get(spec)
    if wanted is None:
        wanted = tuple(n.strip() for n in spec.split(",") if n.strip())
    targets = [t for t in wanted if t in names]
    if not targets or (spec not in ("attention", "mlp") and len(targets) != len(wanted)):
        missing = sorted(set(wanted) - names) or sorted(wanted)
        raise MemfitError.bad_value("lora-targets", spec,
                                    "module names the model has as linear layers (missing: "
                                    f"{', '.join(missing)}; it has {', '.join(sorted(names))})")
    return targets


def expert_parameters(model: Any) -> list[str]:
    """The fused 3-D MoE expert tensors of transformers 5 (``mlp.experts.gate_up_proj``,
    ``mlp.experts.down_proj``), named as peft's ``target_parameters`` takes them."""
    names = set()
    for name, p in model.named_parameters():
        parts = name.split(".")
        if p.dim() == 3 and "experts" in parts and "layers" in parts:
            names.add(".".join(parts[parts.index("layers") + 2:]))
    if not names:
        raise MemfitError.bad_value("lora-experts", True, "off for a model without fused 3-D "
                                    f"expert tensors ({type(model).__name__} has none)")
    return sorted(names)


def apply_lora(model: Any, rank: int, targets: str = "all-linear", dropout: float = 0.0,
               dtype: str | None = None, dora: bool = False, experts: bool = False) -> Any:
    """``get_peft_model`` with LoRA of rank ``rank`` on ``targets`` (see :func:`lora_targets`).

    ``dropout``: peft's ``lora_dropout`` (an ``nn.Dropout`` on each adapter's input).
    ``dtype``: the adapters' dtype; ``None``/``fp32`` is peft's ``autocast_adapter_dtype=True``
    (fp32 adapters); ``bf16``/``fp16`` casts every adapter parameter (``lora_A``, ``lora_B``,
    DoRA's magnitude) after ``get_peft_model``, as a run that loads the adapters in the
    model's dtype holds them. ``dora``: peft's ``use_dora=True``. ``experts``: adapters on the
    fused expert tensors too, peft's ``target_parameters`` (its ``ParamWrapper``, which adds
    the low-rank delta to the whole 3-D weight each forward).
    """
    peft = require_peft()
    extra = {"target_parameters": expert_parameters(model)} if experts else {}
    config = peft.LoraConfig(r=rank, target_modules=lora_targets(model, targets),
                             lora_dropout=dropout, use_dora=dora, task_type="CAUSAL_LM",
                             **extra)
    with fake_swappable():
        model = peft.get_peft_model(model, config)
    if dtype not in (None, "fp32"):
        for name, p in model.named_parameters():
            if p.requires_grad and "lora_" in name:
                p.data = p.data.to(_ADAPTER_DTYPES[dtype])
    return model


def apply_lora_options(model: Any, options: Any) -> Any:
    """:func:`apply_lora` with ``TrainingOptions``' LoRA fields."""
    return apply_lora(model, options.lora_rank or 16, options.lora_targets,
                      options.lora_dropout, options.lora_dtype, options.dora,
                      options.lora_experts)


# -- QLoRA ------------------------------------------------------------------------------------
#
# bitsandbytes' ``Params4bit`` cannot wrap a FakeTensor (``_make_subclass``) and quantizing
# reads values (``.tolist()`` in its quantization map), so the tracer does not quantize with
# bitsandbytes: it puts :class:`NF4Linear`, a stand-in whose storages are bitsandbytes' to the
# byte, where ``replace_with_bnb_linear`` puts ``bnb.nn.Linear4bit``. The stand-in *is* a
# ``bnb.nn.Linear4bit`` subclass, so peft dispatches its own QLoRA layer
# (``peft.tuners.lora.bnb.Linear4bit``, with its defensive ``result.clone()``) onto it, and
# its forward is ``Linear4bit.forward``'s, line for line, but for the matmul (see
# :class:`_MatMul4Bit`).

#: ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
#: bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)``, the QLoRA
#: paper's and peft's recipe; the checkpoint loaded with ``torch_dtype=torch.bfloat16``.
QLORA_COMPUTE_DTYPE = torch.bfloat16
QLORA_PRECISIONS = ("bf16-true", "bf16-mixed")
NF4_BLOCK = 64          # values per first-level absmax (bnb's default blocksize for 4-bit)
NF4_BLOCK2 = 256        # first-level absmaxes per second-level fp32 absmax (compress_statistics)


def nf4_storages(out_features: int, in_features: int) -> dict[str, tuple[tuple[int, ...],
                                                                          torch.dtype]]:
    """Shape and dtype of each storage bitsandbytes keeps for one NF4 double-quant weight.

    ``quantize_4bit(W, blocksize=64, compress_statistics=True, quant_type="nf4")``: the packed
    values ``((n + 1) // 2, 1)`` uint8, the absmax per 64 values quantized to uint8
    (``quantize_blockwise(absmax - offset, blocksize=256)``), its fp32 absmax per 256 blocks,
    the fp32 ``offset`` (``absmax.mean()``) and the 16-entry fp32 NF4 code.
    """
    n = out_features * in_features
    blocks = -(-n // NF4_BLOCK)
    return {"weight": (((n + 1) // 2, 1), torch.uint8),
            "absmax": ((blocks,), torch.uint8),
            "absmax2": ((-(-blocks // NF4_BLOCK2),), torch.float32),
            "offset": ((), torch.float32),
            "code": ((16,), torch.float32)}


class _MatMul4Bit(torch.autograd.Function):
    """``bnb.matmul_4bit`` for more than a few tokens, as its CUDA kernel runs it.

    Forward: bitsandbytes' ``gemm_4bit`` op takes ``_dequant_linear_fallback`` on CUDA for
    more than 1536 rows (and, on an H100, for most smaller ones): fp32 absmax dequantized,
    plus the offset, the whole weight dequantized to ``(out, in)`` in the input's dtype, then
    ``F.linear``; all inside one op, freed when it returns. Here the same allocations are
    separate ops (the tracker sees what the CUDA op hides). Saved for backward: nothing new
    (``MatMul4Bit`` keeps ``ctx.tensors = (None, B)``, the packed weight, which lives anyway;
    not the input). Backward: ``F.dequantize_4bit`` (the fp32 absmax, offset added in place,
    the weight in the quantized-from dtype) cast to the gradient's dtype, then a matmul.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, module: Any,
                bias: torch.Tensor | None) -> torch.Tensor:
        ctx.module = module
        absmax_dq = torch.empty(module.absmax.shape, dtype=torch.float32)
        absmax = absmax_dq + module.offset
        weight = torch.zeros((module.out_features, module.in_features), dtype=x.dtype)
        out = torch.nn.functional.linear(x, weight, bias)
        del absmax_dq, absmax, weight
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, None, None]:
        module = ctx.module
        grad_x = None
        if ctx.needs_input_grad[0]:
            absmax = torch.empty(module.absmax.shape, dtype=torch.float32)
            absmax += module.offset
            weight = torch.zeros((module.out_features, module.in_features),
                                 dtype=module.quant_dtype).to(grad.dtype)
            del absmax
            grad_x = torch.matmul(grad, weight)
        return grad_x, None, None


def _linear4bit_base() -> type:
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise MemfitError.bad_value("qlora", True, "bitsandbytes installed to trace QLoRA "
                                    "(pip install bitsandbytes)") from exc
    return bnb.nn.Linear4bit


def _make_nf4_class() -> type:
    base = _linear4bit_base()

    class NF4Linear(base):  # type: ignore[misc, valid-type]
        """A ``bnb.nn.Linear4bit`` (NF4, double quantization) holding bitsandbytes' storages."""

        def __init__(self, linear: torch.nn.Linear, shared_code2: torch.Tensor) -> None:
            torch.nn.Module.__init__(self)  # not Linear4bit's: no Params4bit
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.compute_dtype = QLORA_COMPUTE_DTYPE
            self.compute_type_is_set = True
            self.quant_storage = torch.uint8
            self.quant_dtype = torch.bfloat16  # the dtype quantized from (the checkpoint's)
            self.support_avx512bf16_for_cpu = False
            spec = nf4_storages(self.out_features, self.in_features)
            shape, dtype = spec.pop("weight")
            weight = torch.nn.Parameter(torch.zeros(shape, dtype=dtype), requires_grad=False)
            weight.compress_statistics = True  # type: ignore[attr-defined]
            weight.quant_type = "nf4"  # type: ignore[attr-defined]
            weight.quant_state = None  # type: ignore[attr-defined]
            self.weight = weight
            for name, (shape, dtype) in spec.items():
                self.register_buffer(name, torch.zeros(shape, dtype=dtype), persistent=False)
            # quantize_blockwise's 256-entry fp32 "dynamic" map: cached once by bitsandbytes
            self.register_buffer("code2", shared_code2, persistent=False)
            self.bias = (None if linear.bias is None else
                         torch.nn.Parameter(linear.bias.detach().to(self.quant_dtype),
                                            requires_grad=False))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            inp_dtype = x.dtype
            if self.compute_dtype is not None:
                x = x.to(self.compute_dtype)
            bias: torch.Tensor | None = self.bias
            if self.bias is not None:
                if self.bias.dtype != x.dtype:
                    self.bias.data = self.bias.data.to(x.dtype)
                bias = self.bias.to(self.compute_dtype)
            return _MatMul4Bit.apply(x, self, bias).to(inp_dtype)

    return NF4Linear


_NF4_CLASS: type | None = None


def nf4_linear_class() -> type:
    """The stand-in class (made on first use: it subclasses ``bnb.nn.Linear4bit``)."""
    global _NF4_CLASS
    if _NF4_CLASS is None:
        _NF4_CLASS = _make_nf4_class()
    return _NF4_CLASS


def quantize_nf4(model: Any) -> Any:
    """Every ``nn.Linear`` but the LM head -> :class:`NF4Linear`, as ``replace_with_bnb_linear``
    does (its ``modules_to_not_convert`` is the output embedding); the rest in bf16 (the
    checkpoint loaded with ``torch_dtype=torch.bfloat16``); ``is_loaded_in_4bit`` set."""
    cls = nf4_linear_class()
    head = model.get_output_embeddings()
    code2 = torch.zeros((256,), dtype=torch.float32)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is torch.nn.Linear and child is not head:
                setattr(module, child_name, cls(child, code2))
    for p in model.parameters():
        if p.dtype.is_floating_point and p.dtype != torch.bfloat16:
            p.data = p.data.to(torch.bfloat16)
    model.is_loaded_in_4bit = True
    model.is_quantized = True
    return model


def apply_qlora(model: Any, options: Any, checkpointing: Any = None) -> Any:
    """NF4 base, peft's ``prepare_model_for_kbit_training``, then LoRA as :func:`apply_lora`.

    ``prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)``: freezes
    everything and casts every 16-bit parameter that is not ``Params4bit`` to fp32 (the
    embeddings, norms, LM head: our packed weights are uint8, untouched). With
    ``no_kbit_prepare=True`` that step is skipped: the base stays bf16 (what torchtune,
    Unsloth and axolotl keep, and peft without the prepare step). Checkpointing, when asked,
    is ``checkpointing(model)``, transformers' non-reentrant one: what peft's own
    ``use_gradient_checkpointing=True`` does with ``use_reentrant=False`` (it then skips
    ``enable_input_require_grads``). ``options`` is ``TrainingOptions`` or a rank.
    """
    peft = require_peft()
    model = quantize_nf4(model)
    if not getattr(options, "no_kbit_prepare", False):
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if checkpointing is not None:
        checkpointing(model)
    if isinstance(options, int):
        return apply_lora(model, options)
    return apply_lora_options(model, options)
