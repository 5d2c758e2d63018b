"""What the parts of one training step share: the scenario (:class:`Ctx`) and one pipeline
stage's rank (:class:`Stage`), filled in by the parts' ``build`` functions in turn."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..arch import ModelSpec
from ..memory.model_states import Recipe, layer_tensors, tensor_elements
from ..memory.weights import memo_table
from ..workload import TrainingOptions

__all__ = ["Ctx", "Stage", "Layout"]


@dataclass
class Ctx:
    """One training scenario, resolved."""

    spec: ModelSpec
    o: TrainingOptions
    recipe: Recipe
    runtime: str  # "autocast", "deepspeed", "fsdp", "plain"
    gpus_per_node: int
    attn: str = "sdpa"  # the attention that runs (Gemma 2 falls back to eager)
    lora_bytes: int = 4  # LoRA adapter dtype bytes
    # the projections with LoRA adapters (memfit's names, memfit.step.knobs.lora_targets)
    lora_targets: frozenset[str] = frozenset(("q", "k", "v", "o", "gate", "up", "down"))


_EARLY = ("q_proj", "k_proj", "v_proj", "qkv_proj", "q_norm", "k_norm", "q_a_proj",
          "q_a_layernorm", "q_b_proj", "kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj")
_MLP = ("mlp", "experts", "router", "shared_expert", "shared_expert_gate")


class Layout:
    """A stage's layers as kinds (memoised per model, stage and TP/EP degrees): the kinds in
    first-appearance order, each layer's kind index, the count of each kind, the runs of
    identical layers ``[(kind index, layers), ...]``, and per kind its elements and the
    shares of its parameters whose gradients its backward has made when it reaches the
    attention scores (``late``) and the second norm (``mlp``)."""

    def __init__(self, spec: ModelSpec, start: int, n: int, tp: int, ep: int,
                 every: int = 1) -> None:
        self.layers = layers = spec.layers[start:start + n]
        self.n_moe = sum(1 for x in layers if x.moe)
        self.n_dense = len(layers) - self.n_moe
        # with checkpointing every N-th layer (transformers' every_n_layers: layer indices
        # 0, N, 2N... are checkpointed), a kind is a layer kind and whether it is checkpointed
        keys = [(x, (start + i) % every == 0) for i, x in enumerate(layers)]
        pairs = list(dict.fromkeys(keys))
        self.kind_list = kinds = [x for x, _ in pairs]
        self.checkpointed = [flag for _, flag in pairs]
        index = {key: i for i, key in enumerate(pairs)}
        self.layer_kind = [index[key] for key in keys]
        self.kind_count = [self.layer_kind.count(i) for i in range(len(kinds))]
        runs: list[tuple[int, int]] = []
        for k in self.layer_kind:
            if runs and runs[-1][0] == k:
                runs[-1] = (k, runs[-1][1] + 1)
            else:
                runs.append((k, 1))
        self.kind_runs = tuple(runs)
        self.elements, self.late, self.mlp = [], [], []
        for x in kinds:
            groups = layer_tensors(spec, x.moe, tp, ep)
            total = tensor_elements(groups) or 1
            by_module: dict[str, int] = {}
            for g in groups:
                module = g.name.split(".")[0]
                by_module[module] = by_module.get(module, 0) + g.elements
            # everything but the q/k/v projections, their norms and the input norm
            early = (sum(by_module.get(m, 0) for m in _EARLY)
                     + spec.hidden_size * (2 if spec.norm_bias else 1))
            self.elements.append(tensor_elements(groups))
            self.late.append(max(0.0, 1 - early / total))
            # the MLP (or routed and shared experts, router)
            self.mlp.append(sum(by_module.get(m, 0) for m in _MLP) / total)

    @staticmethod
    def of(spec: ModelSpec, start: int, n: int, tp: int, ep: int, every: int = 1) -> Layout:
        memo = memo_table(spec)
        key = ("step-layout", start, n, tp, ep, every)
        v = memo.get(key)
        if v is None:
            v = memo[key] = Layout(spec, start, n, tp, ep, every)
        return v  # type: ignore[no-any-return]


class Stage:
    """One pipeline stage's rank: its layers and every quantity the parts derive from them
    (bytes unless said otherwise). Attributes are set by the parts' ``build`` functions:
    :mod:`.states` (model states), :mod:`.layers` (activations, checkpointing, autocast
    copies, the loss' tensors)."""

    def __init__(self, c: Ctx, stage: int, counts: list[int]) -> None:
        self.c, self.o, self.spec, self.recipe = c, c.o, c.spec, c.recipe
        self.stage = stage
        self.first, self.last = stage == 0, stage == c.o.pp - 1
        self.start = sum(counts[:stage])
        every = c.o.checkpoint_every if c.o.checkpointing in ("full", "op-selective") else 1
        self.layout = lay = Layout.of(c.spec, self.start, counts[stage], c.o.tp, c.o.ep, every)
        self.layers, self.n_moe, self.n_dense = lay.layers, lay.n_moe, lay.n_dense
        self.kind_list, self.layer_kind, self.kind_count = (lay.kind_list, lay.layer_kind,
                                                            lay.kind_count)
        self.kind_runs = lay.kind_runs
        self.lora = c.o.lora_rank is not None
        self.autocast = c.runtime == "autocast"
        self.accumulating = c.o.microbatches > 1
        # torchtitan's op-level selective checkpointing recomputes as full checkpointing does;
        # it only keeps more (see memfit.step.layers._op_sac_saved)
        self.ckpt = "full" if c.o.checkpointing == "op-selective" else c.o.checkpointing
        # each kind: checkpointed (recomputed in backward) or not
        self.recomputed = [self.ckpt == "full" and f for f in lay.checkpointed]

    def __getattr__(self, name: str) -> Any:  # pragma: no cover - a part read too early
        raise AttributeError(f"Stage.{name} is not built yet")

    if TYPE_CHECKING:  # the parts add their quantities (no runtime cost)
        def __setattr__(self, name: str, value: Any) -> None: ...
