"""The derivation of a training estimate (``--explain``): one :class:`Term` per quantity the
parts used, with its formula, its numbers and its source. Built only when read
(``Estimate.terms`` is ``LazyTerms``)."""

from __future__ import annotations

from typing import Any

from ..memory.activations import korthikanti_per_layer
from ..memory.breakdown import Term
from .context import Stage

__all__ = ["terms"]

_SRC_STATES = "ZeRO (Rajbhandari et al. 2020) sec. 3.1; torch/optim; memory/model_states.py"


def _state_formula(opt: Any) -> str:
    if opt.eight_bit:
        return "2 * P + 8 * ceil(P_t / 2048) per tensor (fp32 under 4096 elements)"
    if opt.factored:
        return "sum over matrices (rows + cols) * b_s + vectors * b_s"
    return f"{opt.states} * P * b_s / N"


def _model_state_terms(s: Stage) -> list[Term]:
    o, recipe, sb, opt, P, N = s.o, s.recipe, s.sb, s.opt, s.P, s.N
    W = s.xin.weight_bytes
    t = [
        Term("weights", sb.weights, "W / N" if N > 1 else "P_all * b_w",
             f"{W} / {N}" if N > 1 else f"{W}", _SRC_STATES,
             "QLoRA: base linears NF4 with double quantization, the rest fp32" if o.qlora
             else recipe.convention),
        Term("gradients", sb.gradients, "P * b_g / N" if N > 1 else "P * b_g",
             f"{P} * {recipe.grad_bytes if o.lora_rank is None else s.c.lora_bytes}"
             + (f" / {N}" if N > 1 else ""),
             _SRC_STATES),
        Term("master_weights", sb.master, "P * b_m / N", f"{P} * {recipe.master_bytes} / {N}",
             _SRC_STATES),
        Term("optimizer_state", sb.optimizer, _state_formula(opt), f"P={P}, N={N}",
             opt.source),
        Term("optimizer_temporaries", sb.temporaries,
             {"foreach": "P * b_s (one state copied)", "fused": "0",
              "forloop": "2 * max_tensor * b_s"}.get(o.optimizer_impl, ""),
             f"impl={o.optimizer_impl}", opt.source),
    ]
    if o.fsdp is not None and sb.gathered:
        t.append(Term("gathered_params", sb.gathered + sb.gathered_grad_op,
                      "c R (root) + 2 c U (a layer's flat all-gather buffer and parameters; "
                      "3 c U at a copy-out)" + (" + L c U (grad-op)" if sb.gathered_grad_op
                                                else ""),
                      f"{sb.gathered} + {sb.gathered_grad_op}",
                      "torch FSDP2 _fsdp_param_group.py / _fsdp_collectives.py; checked op by "
                      "op on the tracer (memfit.step.fsdp)"))
    elif sb.gathered or sb.gathered_grad_op:
        t.append(Term("gathered_params", sb.gathered + sb.gathered_grad_op,
                      "unsharded working set (16-bit)", f"{sb.gathered} + {sb.gathered_grad_op}",
                      "DeepSpeed stage3.py (prefetch, persistence); torch FSDP2 fully_shard"))
    if o.fsdp is not None and sb.grad_buffers:
        # LoRA: only the adapters (all of them in the layers) are reduce-scattered
        rs = (P // max(1, len(s.layers)) * recipe.grad_bytes if o.lora_rank is not None
              else sb.grad_buffers)
        t.append(Term("comm_buffers", rs, "r U (a layer's flat reduce-scatter input of its "
                      "parameters with gradients, alive until the next layer's)", f"{rs}",
                      "torch FSDP2 foreach_reduce (_fsdp_collectives.py)"))
    elif sb.grad_buffers:
        t.append(Term("comm_buffers", sb.grad_buffers, "bucket elements * b_g",
                      f"{sb.grad_buffers}", "DeepSpeed reduce_bucket_size 5e8; torch DDP buckets"))
    return t


def _layer_terms(s: Stage) -> list[Term]:
    o, spec, inflight, T = s.o, s.spec, s.inflight, s.T
    L = len(s.layers)
    if not L:
        return []
    t = []
    # by layer kind in order of first appearance: the same parts in the same order as a walk
    # over every layer
    parts: dict[str, int] = {}
    for act, n in zip(s.acts, s.kind_count, strict=True):
        for k, v in act.saved.items():
            parts[k] = parts.get(k, 0) + v * n
    for k, v in parts.items():
        t.append(Term(f"activations/{k}", v * inflight if o.checkpointing == "none" else 0,
                      "sum over layers of T * (per-token bytes)",
                      f"T={T}, layers={L}, micro-batches in flight={inflight}",
                      "transformers modeling_*.py saved tensors; memory/activations.py"))
    t.append(Term("activations/layers_kept", s.A_layers * inflight,
                  {"none": "sum of saved", "full": "L * T * b_r * h (layer inputs)",
                   "selective": "sum of saved minus the S x S part",
                   "op-selective": "L * (T * b_r * h + every other matmul's and SDPA's output)"
                   }[o.checkpointing],
                  f"{s.A_layers} * {inflight}", "Korthikanti et al. 2022 (recompute)"))
    k = korthikanti_per_layer(spec, o.seq // o.cp, o.batch, o.tp, o.sp, s.ckpt)
    t.append(Term("activations/korthikanti_check", k, "s*b*h*(34 + 5*a*s/h) per layer",
                  f"{o.seq // o.cp}*{o.batch}*{spec.hidden_size}*(34 + 5*{spec.num_heads}"
                  f"*{o.seq // o.cp}/{spec.hidden_size})",
                  "Korthikanti et al. 2022, eq. 1 (GPT, 16-bit, no flash attention)",
                  "cross-check only; memfit counts the real saved tensors "
                  f"({s.kind_total[s.layer_kind[0]]} for layer 0)"))
    return t


def _edge_terms(s: Stage) -> list[Term]:
    T, V = s.T, s.V
    t = []
    for k, v in {**s.emb, **s.head}.items():
        t.append(Term(f"activations/{k}", v, "T * bytes", f"T={T}",
                      "transformers ForCausalLMLoss (fp32 upcast + log_softmax)"))
    if s.shared:
        t.append(Term("activations/rotary_and_masks", s.shared, "2 S d_rope b_r + masks",
                      f"{s.shared}", "transformers rotary embedding / masking_utils"))
    if s.copies_all:
        t.append(Term("autocast_weight_copies", s.copies_all, "2 * (matmul weights)",
                      f"{s.copies_all}",
                      "torch.autocast cast cache (leaf weights, cleared at exit)"))
    if s.logits or s.upcast:
        t.append(Term("logits", s.logits + s.upcast, "T * V * (b + 4)",
                      f"{T} * {V} * ...", "transformers ForCausalLMLoss: logits.float()"))
    if s.loss_grads:
        t.append(Term("loss_gradients", s.loss_grads, "2 * 4 * T * V", f"2 * 4 * {T} * {V}",
                      "nll_loss / log_softmax backward (fp32)"))
    if s.tied_extra:
        t.append(Term("backward_end_extra", s.tied_extra,
                      "T * h * b_r (the embedding output's gradient); tied tables: max(2 * V * h "
                      "* b_g, V * h * b_g + T * h * b_r)", f"{s.tied_extra}",
                      "embedding backward; autograd InputBuffer: two partial gradients summed"))
    return t


def terms(s: Stage) -> list[Term]:
    """Every term of the stage's rank, in the order the report lists them."""
    return _model_state_terms(s) + _layer_terms(s) + _edge_terms(s)
