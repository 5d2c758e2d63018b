"""The training losses the tracer runs besides transformers' own (``--loss``).

``hf``: ``model(input_ids, labels=labels).loss``, transformers' ``ForCausalLMLoss``: the full
``B x S x V`` logits from the LM head, their fp32 copy (``logits.float()``) and
``cross_entropy``'s fp32 log-softmax (saved for backward).

``chunked``: torchtune's ``CEWithChunkedOutputLoss``
(torchtune/modules/loss/ce_chunked_output_loss.py, v0.6) with
``TransformerDecoder.chunked_output`` (torchtune/modules/transformer.py): the decoder body
runs as usual, then the output projection is applied to each of ``num_output_chunks`` pieces
of the last hidden state (``h.tensor_split(n, dim=1)``), giving a *list* of logits chunks in
the compute dtype that the training loop holds until the loss is done; the loss
upcasts one chunk at a time (``logits_chunk.float()``) into ``F.cross_entropy(...,
reduction="sum")`` and divides by the count of unmasked labels. The labels are shifted as
torchtune's recipes do (``torch.hstack((labels[..., 1:], ignore))``).

``liger``: Liger-Kernel's ``LigerFusedLinearCrossEntropyFunction``
(liger_kernel/ops/fused_linear_cross_entropy.py, ``fused_linear_cross_entropy_forward``),
which ``LigerForCausalLMLoss`` calls with the last hidden state flattened to ``BT x H`` and
the LM head's weight. Its forward computes the gradients too, so no logits outlive a chunk:
``grad_input = zeros_like(input)``, ``grad_weight = zeros_like(weight)`` when the head is
trained, ``loss_1d`` (fp32, ``BT``); then per chunk of ``chunk_size =
next_power_of_2(cdiv(BT, cdiv(V, H)))`` rows the chunk's logits (``chunk x V`` in the matmul's
dtype), the Triton cross-entropy kernel writing the loss and, *in place*, the logits' gradient,
``grad_input[chunk] = grad_logits @ weight`` and ``grad_weight.addmm_(grad_logits.T, x)``. It
saves ``grad_input`` and ``grad_weight`` for backward, which only scales them by the
incoming gradient (``element_mul_kernel``, in place, skipped when it is 1). :class:`FusedLinearCE`
is a PyTorch reference of exactly those storages; the Triton kernel is the custom op
``memfit::ce_loss_grad_`` (in place, no outputs: its scratch lives in registers on a GPU).
Cut Cross-Entropy (Wijmans et al., 2024) keeps less (no ``grad_input``/``grad_weight`` from the
forward; it recomputes logits blockwise in backward): not traced, see docs/tracer.md.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["FusedLinearCE", "chunked_loss", "fused_linear_loss", "liger_chunk_size"]

IGNORE_INDEX = -100


def _parts(model: Any) -> tuple[Any, Any, float | None]:
    """The decoder body, the LM head and the final logit soft-cap of a (peft-wrapped) model."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(hf, hf.base_model_prefix)
    cap = getattr(hf.config, "final_logit_softcapping", None)
    return body, hf.get_output_embeddings(), cap


def _softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    if cap is None:
        return logits
    return torch.tanh(logits / cap) * cap  # transformers' Gemma 2 head, per chunk


def _shifted(labels: torch.Tensor) -> torch.Tensor:
    """torchtune's recipes: ``hstack((labels[..., 1:], ignore_labels_cache[:b]))``."""
    ignore = torch.full((labels.shape[0], 1), IGNORE_INDEX, dtype=labels.dtype)
    return torch.hstack((labels[..., 1:], ignore))


def chunked_loss(model: Any, input_ids: torch.Tensor, labels: torch.Tensor, chunks: int,
                 on_outputs: Any = None) -> torch.Tensor:
    """torchtune's chunked output + ``CEWithChunkedOutputLoss`` (see the module doc).

    ``on_outputs(body_outputs, logits_chunks)`` lets the caller tag what the step holds.
    """
    body, head, cap = _parts(model)
    outputs = body(input_ids=input_ids)
    hidden = outputs.last_hidden_state
    logits = [_softcap(head(chunk), cap) for chunk in hidden.tensor_split(chunks, dim=1)]
    del hidden
    if on_outputs is not None:
        on_outputs(outputs, logits)
    del outputs
    target = _shifted(labels)
    targets = [t.reshape(-1) for t in target.tensor_split(chunks, dim=1)]
    flat = [chunk.reshape(-1, chunk.size(-1)) for chunk in logits]
    del logits
    total: Any = 0.0
    for logits_chunk, labels_chunk in zip(flat, targets, strict=True):
        total = total + torch.nn.functional.cross_entropy(
            logits_chunk.float(), labels_chunk, ignore_index=IGNORE_INDEX, reduction="sum")
    count = (target != IGNORE_INDEX).sum()
    del flat, targets
    return total / count


# -- Liger's fused linear cross-entropy ------------------------------------------------------

@torch.library.custom_op("memfit::ce_loss_grad_", mutates_args=("logits", "loss"))
def _ce_loss_grad_(logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor,
                   n_non_ignore: int) -> None:
    """``liger_cross_entropy_kernel``: per row, the loss into ``loss`` and the gradient of the
    mean loss with respect to the logits written over ``logits`` (same dtype)."""
    x = logits.float()
    lse = x.logsumexp(-1)
    valid = target != IGNORE_INDEX
    safe = target.clamp(min=0)
    picked = x.gather(-1, safe[:, None])[:, 0]
    loss.copy_(torch.where(valid, lse - picked, torch.zeros_like(lse)))
    grad = (x - lse[:, None]).exp()
    grad.scatter_add_(-1, safe[:, None], -torch.ones_like(grad[:, :1]))
    grad = grad * (valid[:, None] / max(n_non_ignore, 1))
    logits.copy_(grad.to(logits.dtype))


@_ce_loss_grad_.register_fake
def _(logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor,
      n_non_ignore: int) -> None:
    return None


def liger_chunk_size(rows: int, hidden: int, vocab: int) -> int:
    """Liger's rows per chunk: ``next_power_of_2(cdiv(BT, cdiv(V, H)))``, at most ``BT``."""
    inc = -(-vocab // hidden)
    size = -(-rows // inc)
    return min(1 << (size - 1).bit_length(), rows)


class FusedLinearCE(torch.autograd.Function):
    """``LigerFusedLinearCrossEntropyFunction`` (mean reduction, no bias/z-loss/softcap
    storage: the soft-cap runs inside the Triton kernel), storage for storage."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor,  # type: ignore[override]
                target: torch.Tensor, weight_grad: bool) -> torch.Tensor:
        rows, hidden = x.shape
        vocab = weight.shape[0]
        chunk = liger_chunk_size(rows, hidden, vocab)
        grad_input = torch.zeros_like(x)
        grad_weight = torch.zeros_like(weight) if weight_grad else None
        loss_1d = torch.zeros(rows, dtype=torch.float32)
        n_valid = rows  # the labels' count of non-ignored rows (.item() in Liger)
        for start in range(0, rows, chunk):
            end = min(start + chunk, rows)
            x_chunk = x[start:end]
            logits_chunk = (x_chunk @ weight.t()).contiguous()
            _ce_loss_grad_(logits_chunk, target[start:end].contiguous(),
                           loss_1d[start:end], n_valid)
            grad_input[start:end] = logits_chunk @ weight
            if grad_weight is not None:
                torch.addmm(grad_weight, logits_chunk.t().to(x_chunk.dtype), x_chunk,
                            out=grad_weight)
            del logits_chunk, x_chunk
        loss = loss_1d.sum() / n_valid
        ctx.save_for_backward(grad_input.detach(),
                              grad_weight.detach() if grad_weight is not None else None)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        grad_input, grad_weight = ctx.saved_tensors
        # Liger: ``if not torch.equal(grad_output, 1.0)``: ``element_mul_kernel`` in place
        return grad_input, grad_weight, None, None


def fused_linear_loss(model: Any, input_ids: torch.Tensor, labels: torch.Tensor,
                      on_outputs: Any = None) -> torch.Tensor:
    """Liger's ``lce_forward``: the body, then ``LigerForCausalLMLoss`` on the hidden state."""
    body, head, _cap = _parts(model)
    if hasattr(head, "base_layer") or getattr(head, "bias", None) is not None:
        from ..errors import MemfitError

        raise MemfitError.bad_value("loss", "liger", "hf or chunked for a model whose "
                                    "LM head has adapters or a bias (the reference takes the "
                                    "head's plain weight, as LigerForCausalLMLoss does)")
    outputs = body(input_ids=input_ids)
    hidden = outputs.last_hidden_state
    if on_outputs is not None:
        on_outputs(outputs, [])
    del outputs
    hidden = hidden.contiguous()
    padded = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)
    target = padded[..., 1:].contiguous().view(-1)
    del padded
    flat = hidden.view(-1, hidden.shape[-1])
    del hidden
    weight = head.weight
    return FusedLinearCE.apply(flat, weight, target, weight.requires_grad)
