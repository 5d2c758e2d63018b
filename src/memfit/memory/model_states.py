"""Model states of training: weights, gradients, master weights and optimizer state, per GPU.

Symbols: P parameters (on this GPU before sharding), N data-parallel ranks that shard them,
K optimizer-state bytes per parameter, b_w / b_g / b_m / b_s the bytes per element of the
weights, gradients, master copy and one optimizer-state tensor.

* **Precision recipes** (:data:`RECIPES`): bytes per parameter of each of the four, written
  out, for the contract's recipes; :data:`CONVENTIONS` names the published totals (16 bytes
  of the ZeRO paper, 18 of Megatron-LM's bf16 runs, 20 of Megatron-LM / MT-NLG's fp16 runs).
* **Optimizers** (:data:`OPTIMIZERS`): state per parameter tensor, exact per shape (Adafactor's
  factored moments, bitsandbytes' 8-bit blocks), and the temporaries of one ``step()`` in each
  implementation (``foreach`` / ``fused`` / ``forloop``), read off ``torch/optim``.
* **Tensors on one rank** (:func:`rank_tensors`): every parameter tensor's shape after tensor,
  pipeline and expert parallelism split the model (Megatron-LM's column/row split,
  vocab-parallel embedding and head, replicated norms).
* **Sharding** (:func:`shard_states`): DeepSpeed ZeRO 1/2/3 and PyTorch FSDP2, with their
  buckets and gathered working sets, and CPU offload.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

from ..arch import ModelSpec
from ..errors import MemfitError
from .params import count_params

__all__ = [
    "Recipe", "RECIPES", "CONVENTIONS", "get_recipe",
    "OptimizerSpec", "OPTIMIZERS", "get_optimizer",
    "TensorGroup", "rank_tensors", "tensor_elements", "layer_tensors",
    "optimizer_state_bytes", "optimizer_temporary_bytes", "optimizer_host_step_bytes",
    "ZeroConfig", "DEEPSPEED_DEFAULTS", "FsdpConfig",
    "deepspeed_zero2_estimate", "deepspeed_zero3_estimate", "zero_paper_model_states",
    "BNB_BLOCK", "BNB_MIN_8BIT_SIZE", "StateInputs", "StateBytes", "shard_states",
    "fused_projections", "V4_EXPERTS", "per_expert_linears",
]


# ---------------------------------------------------------------------------------------
# Precision recipes
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """Bytes per parameter of each model state, and the dtypes the step computes in.

    ``grad_bytes`` is the ``.grad`` the backward leaves (b_g); ``step_grad_bytes`` what the
    optimizer reads (bf16-master casts each 16-bit gradient to an fp32 one on its master copy
    just before the step, freeing the 16-bit one); ``extra_grad_bytes`` a second gradient
    copy kept beside the first (Megatron-LM's fp32 ``main_grad`` for fp16 runs).
    """

    name: str
    weight_bytes: int  # b_w
    grad_bytes: int  # b_g (the backward's .grad)
    master_bytes: int  # b_m (0: the optimizer steps the weights themselves)
    state_bytes: int  # b_s: one optimizer-state element (Adam's m or v)
    compute_bytes: int  # activations / matmul dtype
    autocast: bool  # forward and backward under torch.autocast (16-bit copies of weights)
    step_grad_bytes: int  # gradient bytes per parameter the optimizer reads
    extra_grad_bytes: int = 0
    compute_dtype: str = "bf16"
    convention: str = ""

    def bytes_per_param(self, optimizer_states: int = 2) -> int:
        """Weights + gradients + master + states, the figure papers quote (K = states*b_s)."""
        return (self.weight_bytes + self.grad_bytes + self.extra_grad_bytes + self.master_bytes
                + optimizer_states * self.state_bytes)


RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("fp32", 4, 4, 0, 4, 4, False, 4, compute_dtype="fp32",
           convention="fp32: 4 + 4 + 4K/4 (AdamW: 16 bytes/param)"),
    Recipe("bf16-true", 2, 2, 0, 2, 2, False, 2,
           convention="pure 16-bit: 2 + 2 + 2 + 2 (AdamW: 8 bytes/param, the seed's 56 GB for 7B)"),
    Recipe("fp16-true", 2, 2, 0, 2, 2, False, 2, compute_dtype="fp16",
           convention="pure 16-bit: 2 + 2 + 2 + 2 (AdamW: 8 bytes/param)"),
    Recipe("bf16-mixed", 4, 4, 0, 4, 2, True, 4,
           convention="torch.autocast: fp32 weights, grads, states 4 + 4 + 8 = 16 bytes/param, "
                      "plus autocast's 16-bit weight copies during forward/backward"),
    Recipe("fp16-mixed", 4, 4, 0, 4, 2, True, 4, compute_dtype="fp16",
           convention="torch.autocast: fp32 weights, grads, states 4 + 4 + 8 = 16 bytes/param, "
                      "plus autocast's 16-bit weight copies during forward/backward"),
    Recipe("bf16-master", 2, 2, 4, 4, 2, False, 4,
           convention="zero-16: 2 + 2 + 12 (ZeRO paper: 16-bit weights and gradients, fp32 "
                      "master + m + v); the fp32 gradient cast at the step makes it 2 + 4 + 12 "
                      "for the step itself"),
]}

#: Published bytes-per-parameter conventions for mixed-precision Adam, as recipes.
#: ``zero-16``: Rajbhandari et al. 2020 (ZeRO), sec. 3.1: 2 + 2 + 12 (K = 12).
#: ``megatron-18``: Megatron-LM docs (distributed optimizer table, "bf16 param, fp32 grads"):
#: 2 + 4 + 12; the fp32 ``main_grad`` replaces the 16-bit gradient.
#: ``mtnlg-20``: Megatron-LM docs ("fp16 param, fp16 grads": 20) and Smith et al. 2022 (MT-NLG,
#: "20 bytes per parameter"): 2 + 2 + 4 + 12, an fp32 gradient copy beside the 16-bit one.
CONVENTIONS: dict[str, Recipe] = {
    "zero-16": RECIPES["bf16-master"],
    "megatron-18": replace(RECIPES["bf16-master"], grad_bytes=4, step_grad_bytes=4,
                           convention="megatron-18: 2 + 4 + 12 (16-bit weights, fp32 main_grad, "
                                      "fp32 master + m + v; Megatron-LM bf16)"),
    "mtnlg-20": replace(RECIPES["bf16-master"], extra_grad_bytes=4, step_grad_bytes=4,
                        convention="mtnlg-20: 2 + 2 + 4 + 12 (16-bit weights and gradients, an "
                                   "fp32 gradient copy, fp32 master + m + v; MT-NLG, "
                                   "Megatron fp16)"),
}


def get_recipe(precision: str, convention: str | None = None) -> Recipe:
    """The recipe for ``precision``; ``convention`` picks a published total for bf16-master."""
    if precision not in RECIPES:
        raise MemfitError.bad_value("precision", precision, ", ".join(RECIPES))
    if convention is None:
        return RECIPES[precision]
    if convention not in CONVENTIONS:
        raise MemfitError.bad_value("states-convention", convention, ", ".join(CONVENTIONS))
    if precision != "bf16-master":
        raise MemfitError.bad_value("states-convention", convention,
                                    "only with --precision bf16-master (16-bit weights, fp32 "
                                    "master weights)")
    return CONVENTIONS[convention]


# ---------------------------------------------------------------------------------------
# Optimizers
# ---------------------------------------------------------------------------------------

#: bitsandbytes 8-bit optimizers: block-wise quantization over blocks of 2048 elements with
#: one fp32 absmax each; tensors under 4096 elements keep fp32 states
#: (bitsandbytes/optim/optimizer.py ``Optimizer2State.init_state``: ``blocks = n // 2048``,
#: ``min_8bit_size=4096``). The two 256-entry fp32 quantization maps are shared.
BNB_BLOCK = 2048
BNB_MIN_8BIT_SIZE = 4096
_BNB_QMAPS_BYTES = 2 * 256 * 4


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer's state per parameter and what its ``step()`` allocates."""

    name: str
    states: int  # full-size state tensors per parameter (Adam: m and v)
    factored: bool = False  # Adafactor: row + column second moment per matrix
    eight_bit: bool = False  # bitsandbytes block-wise 8-bit states
    impls: tuple[str, ...] = ("foreach", "fused", "forloop")
    source: str = ""
    paged: bool = False  # bitsandbytes paged: large states in CUDA unified memory
    state_bytes: int | None = None  # fixed state dtype bytes (bitsandbytes 32-bit: fp32)


OPTIMIZERS: dict[str, OptimizerSpec] = {o.name: o for o in [
    OptimizerSpec("adamw", 2, source="torch/optim/adam.py (_multi_tensor_adam, _fused_adam, "
                  "_single_tensor_adam; AdamW = Adam(decoupled_weight_decay=True))"),
    OptimizerSpec("adamw-8bit", 2, eight_bit=True, impls=("foreach", "fused", "forloop"),
                  source="bitsandbytes/optim/optimizer.py Optimizer2State (one fused CUDA "
                         "kernel per tensor: the impl option does not apply)"),
    OptimizerSpec("paged-adamw", 2, paged=True, state_bytes=4,
                  source="bitsandbytes/optim/adamw.py PagedAdamW (Optimizer2State, "
                         "optim_bits=32, is_paged=True: fp32 m and v, one fused CUDA kernel "
                         "per tensor; the impl option does not apply)"),
    OptimizerSpec("paged-adamw-8bit", 2, eight_bit=True, paged=True,
                  source="bitsandbytes/optim/adamw.py PagedAdamW8bit (Optimizer2State, "
                         "optim_bits=8, is_paged=True; one fused kernel per tensor)"),
    OptimizerSpec("sgd", 0, source="torch/optim/sgd.py (momentum=0: no state)"),
    OptimizerSpec("sgd-momentum", 1, source="torch/optim/sgd.py (momentum_buffer)"),
    OptimizerSpec("adafactor", 0, factored=True, impls=("foreach", "forloop"),
                  source="torch/optim/_adafactor.py (row_var, col_var; variance for vectors)"),
    OptimizerSpec("lion", 1, impls=("foreach", "forloop"),
                  source="Chen et al. 2023, Alg. 2 (exp_avg); memfit/trace/optim.py Lion"),
]}


def get_optimizer(name: str, impl: str) -> OptimizerSpec:
    if name not in OPTIMIZERS:
        raise MemfitError.bad_value("optimizer", name, ", ".join(OPTIMIZERS))
    opt = OPTIMIZERS[name]
    if impl not in opt.impls:
        raise MemfitError.bad_value("optimizer-impl", impl,
                                    f"{' or '.join(opt.impls)} for {name} (it has no {impl} "
                                    "implementation)")
    return opt


# ---------------------------------------------------------------------------------------
# Parameter tensors, per rank
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorGroup:
    """``count`` parameter tensors of one ``shape`` (per rank).

    ``part``: "embed" (first pipeline stage), "layer" (one decoder layer; ``count`` per
    layer), "head" (last stage: final norm, LM head). ``lora``: the LoRA target name
    (q, k, v, o, gate, up, down) for the linears peft wraps; "" otherwise. ``linear``: a 2-D+
    matmul weight (QLoRA quantizes these when ``lora`` is set).
    """

    name: str
    shape: tuple[int, ...]
    count: int = 1
    part: str = "layer"
    lora: str = ""
    linear: bool = False
    fp32: bool = False  # kept in fp32 whatever the recipe (DeepSeek-V3's router)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def elements(self) -> int:
        return self.numel * self.count


# Families whose projections are fused into one Linear (transformers 5.x modeling files):
# (fused q/k/v, fused gate/up). GPT-2's Conv1D stores (in, out); the shape order does not
# change any count here.
_FUSED: dict[str, tuple[bool, bool]] = {
    "gpt2": (True, False),  # c_attn (h, 3h), c_fc
    "gpt_neox": (True, False),  # query_key_value (3h, h)
    "phi3": (True, True),  # qkv_proj, gate_up_proj
}


def fused_projections(spec: ModelSpec) -> tuple[bool, bool]:
    """(q/k/v fused in one Linear, gate/up fused in one Linear) for ``spec``'s family."""
    return _FUSED.get(spec.model_type, (False, False))


def _split(n: int, tp: int) -> int:
    """``n`` split over ``tp`` ranks (the layout check guarantees divisibility where needed)."""
    return -(-n // tp)


def _norm(spec: ModelSpec, name: str, width: int, count: int = 1, part: str = "layer"
          ) -> list[TensorGroup]:
    out = [TensorGroup(name, (width,), count, part)]
    if spec.norm_bias:
        out.append(TensorGroup(name + ".bias", (width,), count, part))
    return out


def _linear(name: str, n_out: int, n_in: int, bias: bool, *, lora: str = "",
            part: str = "layer", fp32: bool = False) -> list[TensorGroup]:
    out = [TensorGroup(name, (n_out, n_in), 1, part, lora, True, fp32)]
    if bias:
        out.append(TensorGroup(name + ".bias", (n_out,), 1, part, "", False, fp32))
    return out


def _attention_tensors(spec: ModelSpec, tp: int) -> list[TensorGroup]:
    """One layer's attention, per TP rank: q/k/v column-parallel, o row-parallel
    (Megatron-LM); KV heads are replicated when TP > a_kv (one head per rank)."""
    h, a, d = spec.hidden_size, spec.num_heads, spec.head_dim
    out: list[TensorGroup] = []
    m = spec.mla
    if m is not None:
        a_r = a // tp
        if m.q_lora_rank is None:
            out += _linear("q_proj", a_r * m.qk_head_dim, h, False, lora="q")
        else:
            out += _linear("q_a_proj", m.q_lora_rank, h, spec.qkv_bias)
            out += [TensorGroup("q_a_layernorm", (m.q_lora_rank,))]
            out += _linear("q_b_proj", a_r * m.qk_head_dim, m.q_lora_rank, False, lora="q")
        out += _linear("kv_a_proj_with_mqa", m.kv_lora_rank + m.qk_rope_head_dim, h,
                       spec.qkv_bias)
        out += [TensorGroup("kv_a_layernorm", (m.kv_lora_rank,))]
        out += _linear("kv_b_proj", a_r * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank,
                       False)
        out += _linear("o_proj", h, a_r * m.v_head_dim, spec.o_bias, lora="o")
        return out
    q = a // tp * d
    kv = max(1, spec.num_kv_heads // tp) * d
    fused_qkv, _ = fused_projections(spec)
    if fused_qkv:
        out += _linear("qkv_proj", q + 2 * kv, h, spec.qkv_bias, lora="q")
    else:
        out += _linear("q_proj", q, h, spec.qkv_bias, lora="q")
        out += _linear("k_proj", kv, h, spec.qkv_bias, lora="k")
        out += _linear("v_proj", kv, h, spec.qkv_bias, lora="v")
    out += _linear("o_proj", h, q, spec.o_bias, lora="o")
    if spec.qk_norm == "head":
        out += [TensorGroup("q_norm", (d,)), TensorGroup("k_norm", (d,))]
    elif spec.qk_norm == "full":
        out += [TensorGroup("q_norm", (q,)), TensorGroup("k_norm", (kv,))]
    if spec.attention_sinks:
        out.append(TensorGroup("sinks", (a // tp,)))
    return out


def _mlp_tensors(spec: ModelSpec, width: int, tp: int, prefix: str = "mlp") -> list[TensorGroup]:
    """A dense MLP per TP rank: gate/up column-parallel, down row-parallel."""
    h, i = spec.hidden_size, _split(width, tp)
    _, fused_gate_up = fused_projections(spec)
    out: list[TensorGroup] = []
    if spec.mlp_gated and fused_gate_up:
        out += _linear(f"{prefix}.gate_up_proj", 2 * i, h, spec.mlp_bias, lora="gate")
    elif spec.mlp_gated:
        out += _linear(f"{prefix}.gate_proj", i, h, spec.mlp_bias, lora="gate")
        out += _linear(f"{prefix}.up_proj", i, h, spec.mlp_bias, lora="up")
    else:
        out += _linear(f"{prefix}.up_proj", i, h, spec.mlp_bias, lora="up")
    out += _linear(f"{prefix}.down_proj", h, i, spec.mlp_bias, lora="down")
    return out


def _moe_tensors(spec: ModelSpec, tp: int, ep: int) -> list[TensorGroup]:
    """Router (replicated), routed experts (E/EP per rank, each split by TP as Megatron-Core's
    expert tensor parallelism does), shared experts (like a dense MLP)."""
    assert spec.moe is not None
    m, h = spec.moe, spec.hidden_size
    e_r, i_r = m.num_experts // ep, _split(m.expert_intermediate_size, tp)
    n_in = 2 if spec.mlp_gated else 1
    out = [TensorGroup("router", (m.num_experts, h), 1, "layer", "", False, m.router_fp32)]
    if m.router_bias:
        out.append(TensorGroup("router.bias", (m.num_experts,)))
    out.append(TensorGroup("experts.gate_up_proj", (e_r, n_in * i_r, h), 1, "layer", "", True))
    out.append(TensorGroup("experts.down_proj", (e_r, h, i_r), 1, "layer", "", True))
    if m.expert_bias:
        out.append(TensorGroup("experts.gate_up_proj_bias", (e_r, n_in * i_r)))
        out.append(TensorGroup("experts.down_proj_bias", (e_r, h)))
    if m.shared_intermediate_size:
        out += _mlp_tensors(spec, m.shared_intermediate_size, tp, "shared_expert")
    if m.shared_expert_gate:
        out.append(TensorGroup("shared_expert_gate", (1, h), 1, "layer", "", True))
    return out


#: transformers 4.x MoE blocks whose routed experts are one ``nn.Linear`` module each (what
#: bitsandbytes quantizes and peft targets by name), by model type: the (gate, up, down)
#: module names and whether the router is an ``nn.Linear`` too. modeling_mixtral.py 4.57
#: ``MixtralBlockSparseTop2MLP`` (w1, w3, w2) and ``gate = nn.Linear(h, E)``;
#: modeling_qwen2_moe.py / modeling_qwen3_moe.py ``Qwen2MoeMLP`` experts and
#: ``gate = nn.Linear``; modeling_deepseek_v2/v3.py ``DeepseekV2MLP`` experts and ``MoEGate``
#: (a bare weight Parameter). transformers 5 fuses them into 3-D ``gate_up_proj`` /
#: ``down_proj`` tensors (``*Experts``); GraniteMoE's ``input_linear``/``output_linear`` and
#: gpt-oss's experts were 3-D in transformers 4 already (absent here: the same layout).
V4_EXPERTS: dict[str, tuple[tuple[str, str, str], bool]] = {
    "mixtral": (("w1", "w3", "w2"), True),
    "qwen2_moe": (("gate_proj", "up_proj", "down_proj"), True),
    "qwen3_moe": (("gate_proj", "up_proj", "down_proj"), True),
    "deepseek_v2": (("gate_proj", "up_proj", "down_proj"), False),
    "deepseek_v3": (("gate_proj", "up_proj", "down_proj"), False),
}


def per_expert_linears(spec: ModelSpec, groups: tuple[TensorGroup, ...]
                       ) -> tuple[TensorGroup, ...]:
    """transformers 4's layout of ``groups``: each fused 3-D expert tensor as ``E`` 2-D
    ``nn.Linear`` weights (gate and up separate), tagged ``expert_gate`` / ``expert_up`` /
    ``expert_down`` for the LoRA targets, and an ``nn.Linear`` router tagged ``router``;
    bytes and elements are unchanged, the shapes are what NF4 quantizes block by block."""
    names, router_linear = V4_EXPERTS[spec.model_type]
    out: list[TensorGroup] = []
    for g in groups:
        if g.name == "experts.gate_up_proj":
            e, n, h = g.shape
            if spec.mlp_gated:
                out.append(TensorGroup(f"experts.{names[0]}", (n // 2, h), g.count * e,
                                       g.part, "expert_gate", True))
                out.append(TensorGroup(f"experts.{names[1]}", (n // 2, h), g.count * e,
                                       g.part, "expert_up", True))
            else:
                out.append(TensorGroup(f"experts.{names[1]}", (n, h), g.count * e, g.part,
                                       "expert_up", True))
        elif g.name == "experts.down_proj":
            e, h, i = g.shape
            out.append(TensorGroup(f"experts.{names[2]}", (h, i), g.count * e, g.part,
                                   "expert_down", True))
        elif g.name == "router" and router_linear:
            out.append(replace(g, lora="router", linear=True))
        else:
            out.append(g)
    return tuple(out)


@lru_cache(maxsize=512)
def layer_tensors(spec: ModelSpec, moe: bool, tp: int = 1, ep: int = 1) -> tuple[TensorGroup, ...]:
    """The parameter tensors of one decoder layer (dense or MoE) on one TP/EP rank."""
    out = _attention_tensors(spec, tp)
    out += _norm(spec, "norms", spec.hidden_size, spec.norms_per_layer)
    if moe:
        out += _moe_tensors(spec, tp, ep)
    else:
        out += _mlp_tensors(spec, spec.intermediate_size, tp)
    return tuple(out)


@lru_cache(maxsize=512)
def rank_tensors(spec: ModelSpec, *, tp: int = 1, ep: int = 1, dense_layers: int | None = None,
                 moe_layers: int | None = None, first: bool = True, last: bool = True
                 ) -> tuple[TensorGroup, ...]:
    """Every parameter tensor one rank holds, with counts.

    ``dense_layers`` / ``moe_layers``: how many of each layer kind this pipeline stage holds
    (default: the whole model). ``first`` holds the embeddings, ``last`` the final norm and
    the LM head (both on one stage for tied embeddings, as Megatron-LM keeps a copy of the
    tied table on the last stage). The vocabulary is split over TP (vocab-parallel embedding
    and LM head, Megatron-LM ``VocabParallelEmbedding``); norms are replicated.
    """
    h = spec.hidden_size
    n_dense = spec.num_dense_layers if dense_layers is None else dense_layers
    n_moe = spec.num_moe_layers if moe_layers is None else moe_layers
    v = _split(spec.vocab_size, tp)
    out: list[TensorGroup] = []
    if first or (last and spec.tie_word_embeddings):
        out.append(TensorGroup("embed_tokens", (v, h), 1, "embed", "", False))
        if spec.learned_positions and first:
            out.append(TensorGroup("embed_positions", (spec.learned_positions, h), 1, "embed"))
    for n, moe in ((n_dense, False), (n_moe, True)):
        if n:
            out += [replace(t, count=t.count * n) for t in layer_tensors(spec, moe, tp, ep)]
    if last:
        out += _norm(spec, "final_norm", h, 1, "head")
        if not spec.tie_word_embeddings:
            out.append(TensorGroup("lm_head", (v, h), 1, "head", "", False))
    return tuple(out)


def tensor_elements(groups: tuple[TensorGroup, ...]) -> int:
    """Total elements of ``groups``."""
    return sum(g.elements for g in groups)


def _check_total(spec: ModelSpec) -> None:  # used by tests
    assert tensor_elements(rank_tensors(spec)) == count_params(spec).total


# ---------------------------------------------------------------------------------------
# Optimizer state and step temporaries
# ---------------------------------------------------------------------------------------

def _bnb_state_bytes(numel: int) -> int:
    """bitsandbytes 8-bit Adam state of one tensor: 2 x 1 byte + 2 fp32 absmax per 2048
    elements, or 2 x fp32 below 4096 elements."""
    if numel < BNB_MIN_8BIT_SIZE:
        return 2 * 4 * numel
    blocks = -(-numel // BNB_BLOCK)
    return 2 * numel + 2 * 4 * blocks


def _adafactor_state_elements(shape: tuple[int, ...]) -> int:
    """torch.optim.Adafactor: a matrix keeps row_var (shape[:-1]) and col_var
    (shape[:-2] + shape[-1:]); a vector keeps a full ``variance``."""
    if len(shape) < 2:
        return math.prod(shape)
    lead = math.prod(shape[:-2])
    return lead * (shape[-2] + shape[-1])


#: bitsandbytes pages a state only for tensors of at least 1e5 elements
#: (bitsandbytes/optim/optimizer.py ``Optimizer8bit.get_state_buffer``: ``if not
#: self.is_paged or p.numel() < 1e5: return torch.zeros_like(p, ...)``, else
#: ``F.get_paged``: cudaMallocManaged, outside PyTorch's caching allocator).
BNB_PAGED_MIN = 100_000


def paged_state_bytes(groups: tuple[TensorGroup, ...], opt: OptimizerSpec) -> int:
    """The part of a paged optimizer's state that lives in CUDA unified memory: the state
    buffers of tensors of at least 1e5 elements (8-bit: their uint8 states; their fp32
    block absmax stays in ordinary device memory)."""
    if not opt.paged:
        return 0
    big = tuple(g for g in groups if g.numel >= BNB_PAGED_MIN)
    if opt.eight_bit:
        return sum(opt.states * g.numel * g.count for g in big)
    return opt.states * tensor_elements(big) * (opt.state_bytes or 4)


def optimizer_state_bytes(groups: tuple[TensorGroup, ...], opt: OptimizerSpec,
                          state_bytes: int) -> int:
    """Bytes of the optimizer state kept between steps for ``groups``.

    AdamW: 2 P b_s; Lion, SGD-momentum: P b_s; SGD: 0; Adafactor: sum over matrices of
    (rows + columns) b_s plus vectors' full size; 8-bit AdamW: 2 P + 8 ceil(n / 2048) per
    tensor (fp32 states under 4096 elements) plus the two shared 1 KiB quantization maps.
    """
    if opt.eight_bit:
        return sum(_bnb_state_bytes(g.numel) * g.count for g in groups) + _BNB_QMAPS_BYTES
    if opt.state_bytes:
        state_bytes = opt.state_bytes
    if opt.factored:
        return sum(_adafactor_state_elements(g.shape) * g.count for g in groups) * state_bytes
    return opt.states * tensor_elements(groups) * state_bytes


def optimizer_temporary_bytes(groups: tuple[TensorGroup, ...], opt: OptimizerSpec, impl: str,
                              state_bytes: int) -> int:
    """Bytes the optimizer's ``step()`` allocates on top of the states and gradients.

    Read off torch/optim (2.x):

    * AdamW ``foreach``: ``torch._foreach_sqrt(exp_avg_sqs)`` materialises a copy of every
      second moment of the group: P b_s. ``forloop``: ``(exp_avg_sq.sqrt() / c).add_(eps)``
      holds two tensors the size of the largest parameter. ``fused``: none.
    * Lion ``foreach``: ``_foreach_mul(exp_avgs, beta1)``: P b_s; ``forloop``: one parameter.
    * Adafactor ``foreach``: ``var_estimates`` (row_var @ col_var) for every matrix of the
      group at once: sum of matrix sizes x b_s; ``forloop``: the largest matrix (or twice the
      largest vector: grad * grad, then variance.clone()).
    * SGD (weight_decay=0), 8-bit AdamW (one fused kernel per tensor): none.
    """
    if not groups:
        return 0
    if opt.eight_bit or opt.paged or opt.name in ("sgd", "sgd-momentum") or impl == "fused":
        return 0
    largest = max(g.numel for g in groups)
    if opt.factored:
        matrices = [g for g in groups if len(g.shape) >= 2]
        vectors = [g for g in groups if len(g.shape) < 2]
        if impl == "foreach":
            return max(sum(g.elements for g in matrices),
                       sum(g.elements for g in vectors)) * state_bytes
        big_m = max((g.numel for g in matrices), default=0)
        big_v = max((g.numel for g in vectors), default=0)
        return max(big_m, 2 * big_v) * state_bytes
    if impl == "foreach":
        return tensor_elements(groups) * state_bytes
    if opt.name == "adamw":
        return 2 * largest * state_bytes
    return largest * state_bytes


def optimizer_host_step_bytes(groups: tuple[TensorGroup, ...], opt: OptimizerSpec,
                              impl: str) -> int:
    """Device bytes of the per-tensor ``step`` counters: torch keeps them on the host unless
    the group is ``fused`` (one fp32 scalar per tensor on the device)."""
    if impl == "fused" and not opt.eight_bit and opt.name not in ("sgd", "sgd-momentum"):
        return 4 * sum(g.count for g in groups)
    return 0


# ---------------------------------------------------------------------------------------
# Sharding: DeepSpeed ZeRO and PyTorch FSDP2
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ZeroConfig:
    """DeepSpeed's ZeRO buffer sizes (elements), with DeepSpeed's defaults
    (deepspeed/runtime/zero/config.py): ``reduce_bucket_size`` 5e8, ``allgather_bucket_size``
    5e8, ``stage3_prefetch_bucket_size`` 5e7, ``stage3_max_live_parameters`` 1e9,
    ``stage3_param_persistence_threshold`` 1e5; ``overlap_comm`` False for stages 1/2 and
    True for stage 3 (a second bucket); ``contiguous_gradients`` True."""

    reduce_bucket_size: int = 500_000_000
    allgather_bucket_size: int = 500_000_000
    stage3_prefetch_bucket_size: int = 50_000_000
    stage3_max_live_parameters: int = 1_000_000_000
    stage3_param_persistence_threshold: int = 100_000
    overlap_comm_stage12: bool = False
    overlap_comm_stage3: bool = True


DEEPSPEED_DEFAULTS = ZeroConfig()


@dataclass(frozen=True)
class FsdpConfig:
    """PyTorch FSDP2 (``fully_shard``) as torchtitan applies it: every decoder layer, then the
    root; one layer's all-gather prefetched ahead (forward and backward); ``hybrid`` shards
    within ``gpus_per_node`` ranks and replicates across nodes (HSDP)."""

    gpus_per_node: int = 8
    prefetch_layers: int = 1


def zero_paper_model_states(P: int, N: int, stage: int, K: int = 12) -> int:
    """Model-state bytes per GPU in the ZeRO paper (Rajbhandari et al. 2020, Fig. 1 / sec. 5):
    stage 0: (2 + 2 + K) P; stage 1: 4P + K P / N; stage 2: 2P + (2 + K) P / N;
    stage 3: (4 + K) P / N. Integer bytes, rounded down like the paper's tables."""
    if stage == 0:
        return (4 + K) * P
    if stage == 1:
        return 4 * P + K * P // N
    if stage == 2:
        return 2 * P + (2 + K) * P // N
    if stage == 3:
        return (4 + K) * P // N
    raise MemfitError.bad_value("zero", stage, "0, 1, 2, 3")


def deepspeed_zero2_estimate(total_params: int, num_gpus_per_node: int = 1, num_nodes: int = 1,
                             cpu_offload: bool = True,
                             additional_buffer_factor: float = 1.5) -> tuple[int, int]:
    """DeepSpeed's ``estimate_zero2_model_states_mem_needs`` (stage_1_and_2.py), re-derived
    from memfit's parts: (cpu bytes, gpu bytes).

    GPU: 16-bit weights 2P and 16-bit gradients 2P held whole, plus the fp32 gradient,
    master, m and v partitions (4 + 12) P / N: ``4P + 16P/N``; with the optimizer offloaded
    only the 16-bit weights, ``2P``. CPU: ``P * max(4N, 16) * 1.5`` offloaded, else
    ``4P * gpus_per_node * 1.5`` (the fp32 copy each process loads).
    """
    P, N = total_params, num_gpus_per_node * num_nodes
    r = CONVENTIONS["mtnlg-20"]  # 2 + 2 + (4 + 12): DeepSpeed's fp16 + fp32 gradient partition
    if cpu_offload:
        gpu = r.weight_bytes * P
        cpu = P * max(4 * N, r.extra_grad_bytes + r.master_bytes + 2 * r.state_bytes) \
            * additional_buffer_factor
    else:
        gpu = (r.weight_bytes + r.grad_bytes) * P + int(
            (r.extra_grad_bytes + r.master_bytes + 2 * r.state_bytes) * P / N)
        cpu = P * r.master_bytes * num_gpus_per_node * additional_buffer_factor
    return int(cpu), int(gpu)


def deepspeed_zero3_estimate(total_params: int, largest_layer_params: int,
                             num_gpus_per_node: int = 1, num_nodes: int = 1,
                             cpu_offload: bool = True, cpu_offload_params: bool = True,
                             zero_init: bool = True, additional_buffer_factor: float = 1.5
                             ) -> tuple[int, int, int]:
    """DeepSpeed's ``estimate_zero3_model_states_mem_needs`` (stage3.py), from memfit's parts:
    (cpu bytes, gpu bytes, largest layer bytes).

    The gathered working set is the largest module's 16-bit weights and gradients,
    ``4 * largest_layer``; the partitions are 2 (16-bit weights) + 16 (fp32 gradient, master,
    m, v) bytes per parameter over N: ``4 L_max + 18 P / N``; offloading the optimizer leaves
    ``2P/N`` on the GPU, offloading parameters too leaves only the working set.
    """
    P, N = total_params, num_gpus_per_node * num_nodes
    r = CONVENTIONS["mtnlg-20"]
    nodes_factor = 1 / num_nodes
    largest = (r.weight_bytes + r.grad_bytes) * largest_layer_params
    fp32_part = r.extra_grad_bytes + r.master_bytes + 2 * r.state_bytes  # 16
    if cpu_offload:
        if cpu_offload_params:
            gpu = largest
            per = (fp32_part + r.weight_bytes) * nodes_factor
        else:
            gpu = largest + int(r.weight_bytes * P / N)
            per = fp32_part * nodes_factor
        cpu = P * (per if zero_init else max(4 * num_gpus_per_node, per)) \
            * additional_buffer_factor
    else:
        gpu = largest + int((fp32_part + r.weight_bytes) * P / N)
        cpu = (largest_layer_params if zero_init else P) * 4 * num_gpus_per_node \
            * additional_buffer_factor
    return int(cpu), int(gpu), largest


# ---------------------------------------------------------------------------------------
# Per-GPU model states under data-parallel sharding and offload
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StateInputs:
    """What :func:`shard_states` needs about one rank's share of the model (bytes/elements
    before data-parallel sharding)."""

    weight_bytes: int  # every weight on the rank, each in its own dtype (frozen base included)
    trainable: int  # P: trainable elements
    compute_bytes: int  # 16-bit copy size per element (2) for gathered/unsharded params
    state_bytes: int  # optimizer state bytes (full, before sharding)
    temporaries: int  # optimizer step temporaries (full)
    step_counters: int  # fused step counters on the device
    largest_module: int  # elements of the largest single parameter tensor (ZeRO-3 working set)
    persistent: int  # elements of tensors under ZeRO-3's persistence threshold
    layer_elements: int  # one decoder layer (an FSDP unit)
    root_elements: int  # embeddings + final norm + LM head (FSDP root unit)
    layers: int  # decoder layers on this rank
    fp32_trainable: int = 0  # trainable elements kept in fp32 whatever the recipe (routers)


@dataclass(frozen=True)
class StateBytes:
    """Model-state bytes on one GPU, by phase role, with their host share."""

    weights: int  # resident weights (sharded or whole)
    gathered: int  # unsharded working set during forward/backward (ZeRO-3, FSDP)
    gathered_grad_op: int  # FSDP grad-op: all layers stay unsharded from forward to backward
    gradients: int  # .grad held at the end of backward
    step_gradients: int  # gradients live during optimizer.step()
    grad_buffers: int  # DDP buckets, ZeRO reduce buckets (through backward and step)
    master: int
    optimizer: int  # optimizer state (master excluded)
    temporaries: int
    host: int  # CPU memory of offloaded states
    shards: int  # N: ranks the states are split over (1 = none)
    notes: tuple[str, ...] = ()


def fsdp_padded_elements(groups: tuple[TensorGroup, ...], shards: int) -> int:
    """Elements of ``groups`` once FSDP2 pads each tensor's first dimension to a multiple of
    ``shards`` (``fully_shard`` chunks dim 0, ``torch.chunk`` with padding): 60 experts on
    8 ranks hold 8 x 8 slots."""
    return sum(g.count * -(-g.shape[0] // shards) * shards * (g.numel // max(1, g.shape[0]))
               if g.shape else g.count for g in groups)


def _fsdp_states(x: StateInputs, recipe: Recipe, *, dp: int, fsdp: str, offload: str,
                 fsdp_cfg: FsdpConfig, padded: int, grad: int, extra: int, master: int,
                 temps: int, step_grad: int) -> StateBytes:
    """FSDP2's model states on one rank (see :func:`shard_states`)."""
    P = x.trainable
    W = x.weight_bytes
    state = x.state_bytes
    notes: list[str] = []
    N = min(dp, fsdp_cfg.gpus_per_node) if fsdp == "hybrid" else dp
    unit = x.layer_elements * x.compute_bytes
    gathered = x.root_elements * x.compute_bytes + (1 + fsdp_cfg.prefetch_layers) * unit
    grad_op = x.layers * unit if fsdp == "grad-op" else 0
    host = 0
    # ``padded``: the trainable elements with each dim 0 padded to a multiple of N
    def per_rank(n: int) -> int:
        return -(-n * max(padded, P) // (max(P, 1) * N))
    weights, grads = per_rank(W), per_rank(grad)
    st, ms, sg = per_rank(state), per_rank(master), per_rank(step_grad)
    tmp = per_rank(temps)
    if offload != "none":
        host = weights + grads + st + ms
        weights = grads = st = ms = sg = tmp = 0
        notes.append("FSDP2 CPUOffloadPolicy: sharded parameters, gradients and optimizer "
                     "state on the host; the step runs on the CPU")
    return StateBytes(weights=weights, gathered=gathered, gathered_grad_op=grad_op,
                      gradients=grads + -(-extra // N), step_gradients=max(sg, grads),
                      grad_buffers=x.layer_elements * recipe.grad_bytes if dp > 1 else 0,
                      master=ms, optimizer=st, temporaries=tmp, host=host, shards=N,
                      notes=tuple(notes))


def _ddp_states(x: StateInputs, *, dp: int, offload: str, grad: int, extra: int,
                master: int, temps: int, step_grad: int) -> StateBytes:
    """Unsharded model states (one GPU, or DDP's replicas; see :func:`shard_states`)."""
    notes = []
    buffers = grad if dp > 1 else 0
    if dp > 1:
        notes.append("DDP: flat gradient buckets the size of the gradients "
                     "(gradient_as_bucket_view=False)")
    if offload != "none":
        raise MemfitError.bad_value("offload", offload,
                                    "none without --zero or --fsdp (DeepSpeed offload "
                                    "needs ZeRO >= 1; offloading parameters needs ZeRO-3)")
    return StateBytes(weights=x.weight_bytes, gathered=0, gathered_grad_op=0,
                      gradients=grad + extra, step_gradients=max(step_grad, grad) + extra,
                      grad_buffers=buffers, master=master, optimizer=x.state_bytes,
                      temporaries=temps, host=0, shards=1, notes=tuple(notes))


def shard_states(x: StateInputs, recipe: Recipe, *, dp: int, zero: int, fsdp: str | None,
                 offload: str, zero_cfg: ZeroConfig = DEEPSPEED_DEFAULTS,
                 fsdp_cfg: FsdpConfig = FsdpConfig(), padded: int = 0) -> StateBytes:
    """Model states on one data-parallel rank.

    Symbols: P trainable elements, N shards, W the weights' bytes, b_g / b_m / K as in
    :class:`Recipe`. Closed forms (no offload):

    * DDP (``zero=0``, dp > 1): W + P b_g + P b_g (DDP's flat gradient buckets,
      ``gradient_as_bucket_view=False``) + (b_m + K) P.
    * ZeRO-1: W + P b_g + (b_m + K) P / N, plus one reduce bucket min(5e8, P) b_g; at the step
      the fp32 gradient partition 4P/N (DeepSpeed ``single_partition_of_fp32_groups``).
    * ZeRO-2: W + P b_g / N + reduce bucket(s) + (b_m + K) P / N (+ 4P/N at the step).
    * ZeRO-3: W / N + gathered (largest module + prefetch bucket 5e7 + persistent params, in
      16 bits) + P b_g / N + bucket + (b_m + K) P / N.
    * FSDP2: W / N + P b_g / N + (b_m + K) P / N (each tensor's dim 0 padded to a multiple
      of N: ``padded`` elements instead of P); unsharded: the root (embeddings, LM head)
      and (1 + prefetch) layers in the 16-bit param dtype; ``grad-op`` keeps every layer
      unsharded from forward to backward; ``hybrid`` shards over min(dp, gpus_per_node).

    Offload ``optimizer`` moves master weights, optimizer state and fp32 gradient
    partitions to the host (DeepSpeed ZeRO-Offload; FSDP's CPUOffloadPolicy also moves the
    sharded parameters and gradients); ``params`` moves the sharded weights too (ZeRO-3
    ``offload_param``).
    """
    P = x.trainable
    W = x.weight_bytes
    # tensors kept in fp32 (DeepSeek's router) have fp32 gradients, and under bf16-master
    # their "master" is the parameter itself (``p.float()`` returns it)
    f32 = x.fp32_trainable
    grad = P * recipe.grad_bytes + f32 * max(0, 4 - recipe.grad_bytes)
    extra = P * recipe.extra_grad_bytes
    master = (P - f32) * recipe.master_bytes
    state = x.state_bytes
    temps = x.temporaries + x.step_counters
    step_grad = P * recipe.step_grad_bytes
    notes: list[str] = []
    if fsdp is not None:
        return _fsdp_states(x, recipe, dp=dp, fsdp=fsdp, offload=offload, fsdp_cfg=fsdp_cfg,
                            padded=padded, grad=grad, extra=extra, master=master,
                            temps=temps, step_grad=step_grad)
    N = dp if zero else 1
    bucket = min(zero_cfg.reduce_bucket_size, P) * recipe.grad_bytes
    if zero == 0:
        return _ddp_states(x, dp=dp, offload=offload, grad=grad, extra=extra, master=master,
                           temps=temps, step_grad=step_grad)
    weights, gathered = W, 0
    grads = grad if zero == 1 else -(-grad // N)
    n_buckets = 2 if (zero == 3 and zero_cfg.overlap_comm_stage3) or (
        zero < 3 and zero_cfg.overlap_comm_stage12) else 1
    buffers = n_buckets * bucket
    fp32_part = -(-P * 4 // N) if recipe.master_bytes or recipe.extra_grad_bytes else 0
    step_grads = grads + fp32_part
    ms, st, tmp = -(-master // N), -(-state // N), -(-temps // N)
    if zero == 3:
        weights = -(-W // N)
        live = min(x.largest_module + zero_cfg.stage3_prefetch_bucket_size,
                   zero_cfg.stage3_max_live_parameters)
        gathered = (live + x.persistent) * x.compute_bytes
    host = 0
    if offload in ("optimizer", "params"):
        host = ms + st + fp32_part
        ms = st = tmp = 0
        step_grads = grads
        notes.append("ZeRO-Offload: fp32 master, optimizer state and gradient partition on "
                     "the host; the step runs on the CPU (DeepSpeedCPUAdam)")
    if offload == "params":
        if zero != 3:
            raise MemfitError.bad_value("offload", offload,
                                        "optimizer or none with --zero 1/2 (offloading "
                                        "parameters needs ZeRO-3 or FSDP)")
        host += weights
        weights = 0
    return StateBytes(weights=weights, gathered=gathered, gathered_grad_op=0, gradients=grads,
                      step_gradients=step_grads, grad_buffers=buffers, master=ms, optimizer=st,
                      temporaries=tmp, host=host, shards=N, notes=tuple(notes))
