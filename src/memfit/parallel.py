"""A parallel layout, validated up front, and how it splits a model across GPUs.

Degrees: DP (data), TP (tensor, Megatron column/row split), PP (pipeline stages), CP (context:
sequence split), EP (expert parallel, carved out of the DP x CP ranks as in Megatron-Core),
SP (sequence parallel, a TP option). World size = DP x TP x PP x CP. Every violated rule is
reported with the factor it concerns, as torchtitan's ``ParallelDims`` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from .arch import ModelSpec
from .errors import MemfitError

__all__ = ["ParallelPlan", "stage_layers", "most_loaded_stage"]


@dataclass(frozen=True)
class ParallelPlan:
    """Parallel degrees of one run."""

    tp: int = 1
    pp: int = 1
    dp: int = 1
    cp: int = 1
    ep: int = 1
    sp: bool = False

    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    def validate(self, spec: ModelSpec, *, gpus: int | None = None) -> ParallelPlan:
        """Raise :class:`MemfitError` naming the factor that does not divide; return self."""
        for name in ("tp", "pp", "dp", "cp", "ep"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise MemfitError.bad_value(name, value, "a positive integer")
        if gpus is not None and self.world_size != gpus:
            raise MemfitError.bad_value(
                "gpus", gpus, f"dp*tp*pp*cp = {self.dp}*{self.tp}*{self.pp}*{self.cp} = "
                f"{self.world_size}")
        if spec.num_heads % self.tp:
            raise MemfitError.bad_value("tp", self.tp,
                                        f"a divisor of num_attention_heads={spec.num_heads}")
        if spec.mla is None and self.tp > spec.num_kv_heads and self.tp % spec.num_kv_heads:
            raise MemfitError.bad_value(
                "tp", self.tp, f"a divisor or multiple of num_key_value_heads={spec.num_kv_heads}")
        if spec.mla is None and self.tp <= spec.num_kv_heads and spec.num_kv_heads % self.tp:
            raise MemfitError.bad_value(
                "tp", self.tp, f"a divisor of num_key_value_heads={spec.num_kv_heads}")
        if self.pp > spec.num_layers:
            raise MemfitError.bad_value("pp", self.pp,
                                        f"at most num_hidden_layers={spec.num_layers}")
        if self.sp and self.tp == 1:
            raise MemfitError.bad_value("sp", True, "only with tp > 1")
        if self.ep > 1:
            if spec.moe is None:
                raise MemfitError.bad_value("ep", self.ep, "1 for a dense model")
            if spec.moe.num_experts % self.ep:
                raise MemfitError.bad_value(
                    "ep", self.ep, f"a divisor of the expert count {spec.moe.num_experts}")
            if (self.dp * self.cp) % self.ep and self.dp * self.cp > 1:
                raise MemfitError.bad_value(
                    "ep", self.ep, f"a divisor of dp*cp = {self.dp * self.cp}")
        return self

    # -- per-rank shares ---------------------------------------------------------------
    def kv_heads_per_rank(self, spec: ModelSpec) -> int:
        """KV heads on one TP rank: a_kv / TP, or 1 (replicated) when TP > a_kv (Megatron)."""
        return max(1, spec.num_kv_heads // self.tp)

    def experts_per_rank(self, spec: ModelSpec) -> int:
        assert spec.moe is not None
        return spec.moe.num_experts // self.ep


def stage_layers(num_layers: int, pp: int) -> list[int]:
    """Decoder layers per pipeline stage: as even as possible, earlier stages take the extra
    (Megatron-LM's default uneven split puts the remainder on the first stages)."""
    base, extra = divmod(num_layers, pp)
    return [base + (1 if i < extra else 0) for i in range(pp)]


def most_loaded_stage(num_layers: int, pp: int) -> int:
    """Index of the stage with the most layers (the first, with the extra layer)."""
    counts = stage_layers(num_layers, pp)
    return counts.index(max(counts))
