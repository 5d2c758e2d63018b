"""The optimizers a traced training step runs, and the bf16-master weight loop."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from ..errors import MemfitError

__all__ = ["Lion", "make_optimizer", "MasterWeights", "OptimizerInBackward", "state_tensors",
           "host_step_tensors"]


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms", Alg. 2).

    ``c = sign(b1*m + (1-b1)*g)``; ``p = p*(1 - lr*wd) - lr*c``; ``m = b2*m + (1-b2)*g``.
    One state tensor (``exp_avg``) per parameter, in the parameter's dtype. ``foreach=True``
    runs the same update over the whole list with ``torch._foreach_*`` ops (one scratch list
    the size of the parameters), ``foreach=False`` one parameter at a time (one scratch tensor
    the size of a parameter).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-4,
                 betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0,
                 foreach: bool = False) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay,
                                  "foreach": foreach})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            params, grads, exp_avgs = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
            if not params:
                continue
            if group["foreach"]:
                if wd:
                    torch._foreach_mul_(params, 1 - lr * wd)
                updates = torch._foreach_mul(exp_avgs, beta1)
                torch._foreach_add_(updates, grads, alpha=1 - beta1)
                torch._foreach_sign_(updates)
                torch._foreach_add_(params, updates, alpha=-lr)
                del updates
                torch._foreach_mul_(exp_avgs, beta2)
                torch._foreach_add_(exp_avgs, grads, alpha=1 - beta2)
            else:
                for p, g, m in zip(params, grads, exp_avgs, strict=True):
                    if wd:
                        p.mul_(1 - lr * wd)
                    update = m.mul(beta1).add_(g, alpha=1 - beta1).sign_()
                    p.add_(update, alpha=-lr)
                    del update
                    m.mul_(beta2).add_(g, alpha=1 - beta2)
        return loss


#: bitsandbytes' ``Optimizer8bit.get_state_buffer``: tensors of at least this many elements get
#: paged (``cudaMallocManaged``) state buffers in a paged optimizer
BNB_PAGED_MIN = 100_000


def _paged(cls: type, host: Callable[[], Any] | None) -> type:
    """A bitsandbytes paged optimizer whose paged state buffers are made as host memory.

    ``Optimizer8bit.get_state_buffer`` (bitsandbytes 0.50): a tensor of at least 1e5 elements
    gets ``F.get_paged(...)``, unified memory from ``cudaMallocManaged`` through its CUDA
    library, outside PyTorch's allocator (``max_memory_allocated`` does not count it; the
    driver keeps it on the GPU while memory allows and pages it out under pressure); smaller
    ones ``torch.zeros_like`` on the device. On a CPU bitsandbytes falls back to unpaged
    buffers, so this subclass makes the same choice and allocates the paged buffers under
    ``host()`` (:meth:`MemoryTracker.host`: tracked, not counted); the update kernels are
    bitsandbytes' own.
    """

    class Paged(cls):  # type: ignore[misc, valid-type]
        def get_state_buffer(self, p: Any, dtype: Any = torch.float32) -> Any:
            if self.is_paged and p.numel() >= BNB_PAGED_MIN and host is not None:
                with host():
                    return torch.zeros_like(p, dtype=dtype)
            return torch.zeros_like(p, dtype=dtype, device=p.device)

    Paged.__name__ = Paged.__qualname__ = cls.__name__
    return Paged


def make_optimizer(name: str, impl: str, params: Sequence[Any],
                   host: Callable[[], Any] | None = None) -> Any:
    """The optimizer ``name`` over ``params`` in implementation ``impl`` (foreach/fused/forloop).

    Hyperparameters are PyTorch's defaults: they change values, never allocations. ``host``
    makes a storage host memory (the paged optimizers' unified-memory state, see
    :func:`_paged`).
    """
    foreach, fused = impl == "foreach", impl == "fused"
    if name == "adamw":
        return torch.optim.AdamW(params, foreach=foreach, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3, foreach=foreach, fused=fused)
    if name == "sgd-momentum":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9, foreach=foreach, fused=fused)
    if name == "adafactor":
        if impl == "fused":
            raise MemfitError.bad_value("optimizer-impl", impl,
                                        "foreach or forloop (torch.optim.Adafactor has no "
                                        "fused implementation)")
        return torch.optim.Adafactor(params, foreach=foreach)
    if name == "lion":
        if impl == "fused":
            raise MemfitError.bad_value("optimizer-impl", impl,
                                        "foreach or forloop (Lion has no fused implementation)")
        return Lion(params, foreach=foreach)
    if name in ("adamw-8bit", "paged-adamw", "paged-adamw-8bit"):
        try:
            import bitsandbytes as bnb  # type: ignore[import-not-found]
        except ImportError as exc:
            raise MemfitError.bad_value("optimizer", name,
                                        "adamw, sgd, sgd-momentum, adafactor or lion (tracing "
                                        f"{name} needs bitsandbytes installed)") from exc
        if name == "adamw-8bit":
            return bnb.optim.AdamW8bit(params)
        cls = bnb.optim.PagedAdamW if name == "paged-adamw" else bnb.optim.PagedAdamW8bit
        return _paged(cls, host)(params)
    raise MemfitError.bad_value("optimizer", name, "adamw, adamw-8bit, sgd, sgd-momentum, "
                                "adafactor, lion")


def state_tensors(optimizer: Any) -> list[torch.Tensor]:
    """Every tensor the optimizer keeps between steps."""
    out: list[torch.Tensor] = []
    for state in optimizer.state.values():
        out.extend(v for v in state.values() if isinstance(v, torch.Tensor))
    return out


def host_step_tensors(optimizer: Any) -> list[torch.Tensor]:
    """The step counters PyTorch keeps in host memory on a GPU run.

    ``torch.optim`` creates ``state["step"]`` with ``torch.tensor(0.0)`` (CPU) unless the
    group is ``fused`` or ``capturable``; those live beside the parameters on the device.
    """
    out = []
    for group in optimizer.param_groups:
        if group.get("fused") or group.get("capturable"):
            continue
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if isinstance(step, torch.Tensor):
                out.append(step)
    return out


class MasterWeights:
    """bf16-master: the optimizer steps fp32 copies of 16-bit parameters.

    Per step: each 16-bit gradient is cast to an fp32 gradient on its master copy and freed at
    once (so fp32 and 16-bit gradients of one tensor coexist only briefly), the optimizer steps
    the masters, the masters are copied back into the 16-bit parameters, and the fp32
    gradients are dropped with ``zero_grad(set_to_none=True)``. Steady state holds 2 + 4 + 4
    + state bytes per parameter at the optimizer step (16-bit weights, fp32 gradients, fp32
    masters, fp32 state), 2 + 2 + 4 + state in backward (the ZeRO paper's 2 + 2 + 12).
    """

    def __init__(self, params: Sequence[torch.nn.Parameter]) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.masters = [torch.nn.Parameter(p.detach().float()) for p in self.params]

    def grads_to_masters(self, on_grad: Callable[[torch.Tensor], None]) -> None:
        for p, m in zip(self.params, self.masters, strict=True):
            if p.grad is None:
                continue
            m.grad = p.grad.float()
            on_grad(m.grad)
            p.grad = None

    @torch.no_grad()
    def masters_to_params(self) -> None:
        for p, m in zip(self.params, self.masters, strict=True):
            p.copy_(m)


class OptimizerInBackward:
    """The optimizer step inside backward, as torchtune's ``optimizer_in_bwd=True`` runs it.

    torchtune (recipes/full_finetune_single_device.py, ``_setup_optimizer``;
    torchtune/training/memory.py, ``register_optim_in_bwd_hooks``, v0.6): one optimizer per
    parameter (``{p: optimizer([p]) for p in model.parameters()}``) and, on each parameter, a
    ``register_post_accumulate_grad_hook`` that runs ``optim_dict[p].step()`` and
    ``optim_dict[p].zero_grad()`` (``set_to_none``) as soon as that gradient is accumulated:
    one parameter's gradient exists at a time, never the full set. ``on_grad(grad)`` is called
    before each step (the tracer tags it). ``step``/``zero_grad`` of this object do nothing
    (the loop's optimizer phase is empty); ``state`` and ``param_groups`` gather the
    per-parameter optimizers' own.
    """

    def __init__(self, name: str, impl: str, params: Sequence[Any],
                 on_grad: Callable[[torch.Tensor], None],
                 host: Callable[[], Any] | None = None) -> None:
        self.optimizers = {p: make_optimizer(name, impl, [p], host) for p in params}
        self.on_grad = on_grad
        self.handles = [p.register_post_accumulate_grad_hook(self._step) for p in params]

    def _step(self, param: Any) -> None:
        optimizer = self.optimizers[param]
        self.on_grad(param.grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @property
    def state(self) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for optimizer in self.optimizers.values():
            out.update(optimizer.state)
        return out

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for optimizer in self.optimizers.values() for g in optimizer.param_groups]

    def step(self) -> None:
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        return None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
