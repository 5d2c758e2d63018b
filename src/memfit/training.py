"""Training memory per GPU: ``train()`` builds the timeline of one optimizer step, ``fit_train()``
answers the inverse questions (largest micro-batch, longest sequence, layouts that fit).

One step, steady state (the optimizer state already exists), on the most loaded rank:

* **forward**: resident model states + saved activations of every layer + (mixed recipes)
  autocast's 16-bit weight copies, peaking at the loss, where the logits, their fp32 copy
  and ``log_softmax``'s fp32 output are live together;
* **backward**: it starts with two more fp32 B x S x V tensors (the gradients of the loss and
  of ``log_softmax``), then walks the layers backwards: each layer's gradients appear as its
  saved activations go; it ends with every gradient and, for tied embeddings, the two
  partial gradients of the shared table being summed;
* **optimizer**: weights, gradients (fp32 ones for bf16-master), optimizer state and the
  step's temporaries (``foreach`` copies a whole state, ``fused`` none).

The peak is the largest of the three. Model states come from
:mod:`memfit.memory.model_states`, activations from :mod:`memfit.memory.activations`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from operator import itemgetter
from pathlib import Path
from typing import Any

from .arch import ModelSpec
from .catalog import resolve_model
from .errors import MemfitError
from .memory.activations import NO_SDPA
from .memory.breakdown import Estimate, LazyTerms
from .memory.model_states import Recipe, get_recipe
from .memory.overhead import overhead_bytes, overhead_terms
from .memory.weights import memo_table
from .parallel import ParallelPlan, stage_layers
from .solve import largest_true
from .step import Ctx, stage_base, stage_run
from .step.knobs import check_knobs, target_names
from .step.states import LORA_TARGETS
from .workload import MAX_COUNT, TrainingOptions, default_within, make_options

__all__ = ["train", "fit_train", "FitResult", "LayoutFit", "LORA_TARGETS"]

ModelLike = str | Path | Mapping[str, Any] | ModelSpec


# Extra keyword options of the Python API (beside TrainingOptions' fields).
_API_OPTIONS = ("states_convention", "gpus_per_node")


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------

def _validate(spec: ModelSpec, o: TrainingOptions) -> ParallelPlan:
    """The layout rules beyond each option's own range; errors name the field."""
    plan = _validate_layout(spec, o)
    _validate_seq(spec, o)
    return plan


def _validate_layout(spec: ModelSpec, o: TrainingOptions) -> ParallelPlan:
    """:func:`_validate`'s rules that do not read the sequence length."""
    plan = ParallelPlan(tp=o.tp, pp=o.pp, dp=o.dp, cp=o.cp, ep=o.ep, sp=o.sp)
    try:
        plan.validate(spec)
    except MemfitError as exc:
        raise MemfitError(f"{exc} (layout dp={o.dp} tp={o.tp} pp={o.pp} cp={o.cp} ep={o.ep})",
                          field=exc.field, value=exc.value, allowed=exc.allowed) from None
    if o.zero >= 2 and o.pp > 1:
        raise MemfitError.bad_value("zero", o.zero, "0 or 1 with --pp > 1 (DeepSpeed runs "
                                    "pipeline parallelism with ZeRO stage 0 or 1 only)")
    if o.fsdp is not None and o.dp == 1:
        raise MemfitError.bad_value("fsdp", o.fsdp, "only with --dp > 1 (one rank has nothing "
                                    "to shard with)")
    if o.offload != "none" and not o.zero and o.fsdp is None:
        raise MemfitError.bad_value("offload", o.offload, "none without --zero or --fsdp "
                                    "(DeepSpeed offload needs ZeRO >= 1, parameters ZeRO-3)")
    if o.offload == "params" and o.zero in (1, 2):
        raise MemfitError.bad_value("offload", o.offload, "optimizer or none with --zero "
                                    f"{o.zero} (offloading parameters needs ZeRO-3 or FSDP)")
    return plan


def _validate_seq(spec: ModelSpec, o: TrainingOptions) -> None:
    """:func:`_validate`'s rules on the sequence length (checked on every call)."""
    if o.cp > 1 and o.seq % o.cp:
        raise MemfitError.bad_value("seq", o.seq, f"a multiple of --cp={o.cp}")
    if spec.learned_positions and o.seq > spec.learned_positions:
        raise MemfitError.bad_value("seq", o.seq, f"<= {spec.learned_positions} (the model's "
                                    "learned position table n_positions)")


# ---------------------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------------------

def _runtime(o: TrainingOptions, recipe: Recipe) -> tuple[Recipe, str]:
    """How the recipe runs: autocast (plain PyTorch), DeepSpeed's or FSDP2's mixed precision.

    With ``--zero`` the mixed recipes are DeepSpeed's ``bf16``/``fp16`` modes: 16-bit weights
    and gradients, fp32 master and state (2 + 2 + 12). With ``--fsdp`` they are FSDP2's
    ``MixedPrecisionPolicy(param_dtype=16-bit, reduce_dtype=fp32)`` on fp32 sharded params:
    no autocast, 16-bit compute everywhere (contract).
    """
    if recipe.autocast and o.zero:
        r = replace(recipe, weight_bytes=2, grad_bytes=2, master_bytes=4, state_bytes=4,
                    step_grad_bytes=4, autocast=False,
                    convention="DeepSpeed mixed precision: 2 + 2 + 12 (ZeRO paper)")
        return r, "deepspeed"
    if recipe.autocast and o.fsdp:
        return replace(recipe, autocast=False,
                       convention="FSDP2 MixedPrecisionPolicy: fp32 sharded params, grads and "
                                  "state (16 bytes/param / N), 16-bit unsharded compute copies"
                       ), "fsdp"
    if recipe.autocast:
        return recipe, "autocast"
    return recipe, "fsdp" if o.fsdp else ("deepspeed" if o.zero else "plain")


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    if not (_API_SET & options.keys()):
        return options, {}
    extra = {k: options.pop(k) for k in list(options) if k in _API_OPTIONS}
    return options, extra


_API_SET = frozenset(_API_OPTIONS)


class _Plan:
    """What an estimate needs that does not depend on the batch or the sequence (memoised per
    model and options other than ``batch``/``seq``): the scenario, each stage's model states,
    the assumptions' fixed entries."""

    __slots__ = ("ctx", "bases", "world_size", "assumptions", "gpu_name", "gpu_bytes")

    def __init__(self, ctx: Ctx, bases: list[Any], world_size: int,
                 assumptions: dict[str, Any], gpu_name: str | None,
                 gpu_bytes: int | None) -> None:
        self.ctx, self.bases, self.world_size = ctx, bases, world_size
        self.assumptions, self.gpu_name, self.gpu_bytes = assumptions, gpu_name, gpu_bytes


def _make_plan(spec: ModelSpec, o: TrainingOptions, extra: Mapping[str, Any],
               world_size: int) -> _Plan:
    """The scenario resolved (recipe, runtime, knobs), each stage's model states and the
    assumptions' fixed entries, for ``o`` (its layout and sequence already validated)."""
    recipe = get_recipe(o.precision, extra.get("states_convention"))
    recipe, runtime = _runtime(o, recipe)
    gpn = extra.get("gpus_per_node", 8)
    if not isinstance(gpn, int) or isinstance(gpn, bool) or gpn < 1:
        raise MemfitError.bad_value("gpus-per-node", gpn, "a positive integer")
    attn = "eager" if (o.attn == "sdpa" and spec.model_type in NO_SDPA) else o.attn
    lora_dtype = o.lora_dtype or "fp32"
    if o.lora_dtype is not None and o.lora_rank is None:
        raise MemfitError.bad_value("lora-dtype", lora_dtype, "only with --lora-rank or --qlora")
    targets = check_knobs(spec, o)
    c = Ctx(spec, o, recipe, runtime, gpn, attn, 4 if lora_dtype == "fp32" else 2,
            targets)
    counts = stage_layers(spec.num_layers, o.pp)
    stages = [0] if o.pp == 1 else sorted({0, o.pp - 1})
    bases = [stage_base(c, s, counts) for s in stages]
    gpu_name = gpu_bytes = None
    if o.gpu is not None:
        from .hardware import get_gpu

        g = get_gpu(o.gpu)
        gpu_name, gpu_bytes = g.name, g.usable_bytes
    return _Plan(c, bases, world_size, _assumptions(spec, o, recipe, runtime, attn, targets,
                                                    lora_dtype), gpu_name, gpu_bytes)


def _assumptions(spec: ModelSpec, o: TrainingOptions, recipe: Recipe, runtime: str, attn: str,
                 targets: frozenset[str], lora_dtype: str) -> dict[str, Any]:
    """The assumptions of every estimate of a plan, in the report's order (the stage's
    entries, filled in per estimate, as None)."""
    assumptions = {
        "precision_recipe": recipe.name,
        "model_states_convention": recipe.convention,
        "bytes_per_param": {"weights": recipe.weight_bytes, "gradients": recipe.grad_bytes,
                            "master": recipe.master_bytes, "optimizer_state_element":
                            recipe.state_bytes, "extra_gradient_copy": recipe.extra_grad_bytes},
        "runtime": runtime,
        "optimizer": f"{o.optimizer} ({o.optimizer_impl})",
        "attention": ("sdpa: flash/memory-efficient kernels, (B, a, S) fp32 log-sum-exp, no "
                      "S x S" if attn == "sdpa" else "eager: fp32 softmax of B x a x S x S"
                      + (" (the family cannot run SDPA: transformers falls back to eager)"
                         if attn != o.attn else "")),
        "checkpointing": o.checkpointing,
        "steady_state": "optimizer state exists; zero_grad(set_to_none=True)",
        "most_loaded_stage": None,
        "layers_on_rank": None,
        "shards": None,
        "trainable_params_on_rank": None,
        "notes": None,
    }
    if o.fsdp is not None and o.fsdp_version == 1:
        assumptions["fsdp_version"] = (
            "FSDP1 (FullyShardedDataParallel, use_orig_params, FULL_SHARD) estimated with "
            "FSDP2's timeline: traced FSDP1 peaks agree within 0.001% (its forward, which "
            "all-gathers straight into the unsharded flat parameter, is 0.5-2% lower)")
    if o.pp > 1:
        assumptions["pipeline"] = ("1F1B: the first stage holds min(pp, micro-batches) "
                                   "micro-batches of activations; the last the LM head and loss")
    if o.lora_rank is not None:
        assumptions["lora"] = (
            f"rank {o.lora_rank} on {', '.join(target_names(spec, targets))} "
            f"(--lora-targets {o.lora_targets}); adapters, their gradients and optimizer "
            f"state in {lora_dtype} (torch.optim's state is zeros_like(param))"
            + (f"; dropout {o.lora_dropout} on each adapter's input" if o.lora_dropout else "")
            + ("; transformers 4's per-expert nn.Linear layout" if o.transformers == 4
               and spec.moe is not None else ""))
    return assumptions


def _plan_of(spec: ModelSpec, o: TrainingOptions, extra: Mapping[str, Any]) -> _Plan:
    """The plan of ``o`` (memoised per spec object and options other than batch and
    sequence; errors are raised as :func:`_validate` and :func:`_make_plan` raise them, in
    the same order, and never memoised)."""
    sc, gpn = extra.get("states_convention"), extra.get("gpus_per_node", 8)
    key: tuple[Any, ...] | None = (id(spec), _STRUCTURE(o.__dict__), type(sc), sc,
                                   type(gpn), gpn)
    try:
        slot = _PLANS.get(key)  # type: ignore[arg-type]
    except TypeError:  # an unhashable extra option: no memo (the plan refuses it)
        key, slot = None, None
    if slot is not None and slot[0] is spec:
        _validate_seq(spec, o)
        return slot[1]
    layout = _validate(spec, o)
    plan = _make_plan(spec, o, extra, layout.world_size)
    if key is not None:
        if len(_PLANS) >= _PLANS_MAX:
            _PLANS.clear()
        _PLANS[key] = (spec, plan)  # (the spec held: its id is not reused while it lives)
    return plan


#: The plans, by spec object and options other than batch/seq: bounded (a plan holds each
#: stage's model states, a few kB).
_PLANS: dict[tuple[Any, ...], tuple[ModelSpec, _Plan]] = {}
_PLANS_MAX = 2048


def _estimate(spec: ModelSpec, o: TrainingOptions, extra: Mapping[str, Any]) -> Estimate:
    seq_note = None
    if spec.learned_positions:
        o, seq_note = default_within(o, "seq", spec.learned_positions, 0,
                                     "the learned position table (n_positions)")
    plan = _plan_of(spec, o, extra)
    c = object.__new__(Ctx)  # the plan's scenario with this call's options
    c.__dict__.update(plan.ctx.__dict__)
    c.o = o
    results = [stage_run(base, c) for base in plan.bases]
    if len(results) == 1:
        best = results[0]
        peak = best["peak"]
    else:
        peaks = [r["peak"] for r in results]
        peak = max(peaks)
        best = results[peaks.index(peak)]
    world_size = plan.world_size
    assumptions = plan.assumptions.copy()
    assumptions["bytes_per_param"] = dict(assumptions["bytes_per_param"])
    assumptions["most_loaded_stage"] = best["stage"]
    assumptions["layers_on_rank"] = best["layers"]
    assumptions["shards"] = best["shards"]
    assumptions["trainable_params_on_rank"] = best["trainable"]
    assumptions["notes"] = list(best["notes"]) + ([seq_note] if seq_note else [])
    stage_terms = best["terms"]
    return Estimate(mode="train", model=spec.name, options=_options_dict(o, extra),
                    phases=best["phases"],
                    overheads=overhead_bytes(peak, world_size=world_size, mode="train"),
                    terms=LazyTerms(lambda: (*stage_terms(), *overhead_terms(
                        peak, world_size=world_size, mode="train"))),
                    assumptions=assumptions,
                    gpu=plan.gpu_name, gpu_memory_bytes=plan.gpu_bytes, host_bytes=best["host"],
                    extras={"world_size": world_size})


def _options_dict(o: TrainingOptions, extra: Mapping[str, Any]) -> dict[str, Any]:
    d = o.__dict__  # the fields' values (a frozen dataclass), read without getattr
    # (every way an options object is made sets its fields in declaration order)
    out = dict(d) if list(d) == _OPTION_LIST else {k: d[k] for k in _OPTION_NAMES}
    if extra:
        out.update({k: v for k, v in extra.items() if v is not None})
    return out


_OPTION_NAMES = tuple(f.name for f in fields(TrainingOptions))
_OPTION_LIST = list(_OPTION_NAMES)
#: The options' values that a plan depends on: all but the batch and the sequence.
_STRUCTURE = itemgetter(*(n for n in _OPTION_NAMES if n not in ("batch", "seq")))

def _memo(spec: ModelSpec) -> dict[Any, Any]:
    """Per-model memo (tensor lists, layer activations): the spec's table of
    :func:`memfit.memory.weights.memo_table`, keyed by the spec object's identity so a call
    does not re-hash the whole ModelSpec, and bounded."""
    return memo_table(spec)


def train(model: ModelLike, **options: Any) -> Estimate:
    """Per-GPU memory of one training step of ``model`` (see the module docstring).

    ``options`` are :class:`~memfit.workload.TrainingOptions`' fields (the CLI's names with
    underscores), plus ``states_convention`` ("zero-16", "megatron-18", "mtnlg-20", with
    ``precision="bf16-master"``) and ``gpus_per_node`` (HSDP shard group, default 8).
    """
    spec, _ = resolve_model(model)
    opts, extra = _split_options(dict(options))
    return _estimate(spec, _options(opts), extra)


#: Options checked before, by the options other than ``batch`` and ``seq`` (with their
#: types: ``True`` is not ``1`` to the checks); bounded.
_CHECKED: dict[tuple[Any, ...], TrainingOptions] = {}
_CHECKED_MAX = 1024


def _options(opts: dict[str, Any]) -> TrainingOptions:
    """``make_options(TrainingOptions, **opts)``, the checks of the options other than the
    batch and the sequence done once per set of them: the same object (the batch and the
    sequence the very objects given, or the defaults' when not given), the same errors."""
    batch, seq = opts.get("batch", _NOT_GIVEN), opts.get("seq", _NOT_GIVEN)
    if ((batch is not _NOT_GIVEN and not (type(batch) is int and 1 <= batch <= MAX_COUNT))
            or (seq is not _NOT_GIVEN and not (type(seq) is int and 1 <= seq <= MAX_COUNT))
            or not isinstance(opts.get("gpu", ""), str)):
        return make_options(TrainingOptions, **opts)  # (it names what is wrong)
    try:
        key = tuple((k, v.__class__, v) for k, v in opts.items() if k != "batch" and k != "seq")
        base = _CHECKED.get(key)
    except TypeError:  # an unhashable value: checked (and refused) as it comes
        return make_options(TrainingOptions, **opts)
    if base is None:
        o = make_options(TrainingOptions, **opts)
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()
        base = object.__new__(TrainingOptions)  # o with the defaults' batch and sequence
        base.__dict__.update(o.__dict__)
        base.__dict__.update(batch=_BATCH_DEFAULT, seq=_SEQ_DEFAULT)
        _CHECKED[key] = base
        return o  # type: ignore[no-any-return]
    o = object.__new__(TrainingOptions)
    d = o.__dict__
    d.update(base.__dict__)
    if batch is not _NOT_GIVEN:
        d["batch"] = batch
    if seq is not _NOT_GIVEN:
        d["seq"] = seq
    return o


_NOT_GIVEN = object()

_BATCH_DEFAULT = next(f.default for f in fields(TrainingOptions) if f.name == "batch")
_SEQ_DEFAULT = next(f.default for f in fields(TrainingOptions) if f.name == "seq")


# ---------------------------------------------------------------------------------------
# Inverse questions
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayoutFit:
    """One parallel layout that fits, with its peak and headroom."""

    dp: int
    tp: int
    pp: int
    cp: int
    ep: int
    zero: int
    fsdp: str | None
    checkpointing: str
    offload: str
    peak_bytes: int
    total_bytes: int
    headroom_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class FitResult:
    """What fits on ``gpus`` x ``gpu``: the largest micro-batch and longest sequence for the
    given layout (None when even 1 does not fit), and the layouts that fit, best first."""

    model: str
    gpu: str
    gpus: int
    gpu_memory_bytes: int
    max_batch: int | None
    max_seq: int | None
    estimate: Estimate | None  # at max_batch
    layouts: tuple[LayoutFit, ...] = field(default_factory=tuple)
    notes: tuple[str, ...] = ()
    """What the sweep left out (a GPU count with too many layouts to try them all)."""
    min_gpus: int | None = None
    """The fewest GPUs with a layout that fits the options (DP free; None past 65,536)."""

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "gpu": self.gpu, "gpus": self.gpus,
                "gpu_memory_bytes": self.gpu_memory_bytes, "min_gpus": self.min_gpus,
                "max_batch": self.max_batch, "max_seq": self.max_seq,
                "estimate": self.estimate.to_dict() if self.estimate else None,
                "layouts": [x.to_dict() for x in self.layouts], "notes": list(self.notes)}


#: Layouts (DP x TP x PP x CP) a fit sweep tries, and estimates it makes for them: 720,720
#: GPUs have 89,600 ordered factorizations (times the ZeRO, checkpointing, offload and EP
#: choices); the ones tried are the likeliest (small TP, PP, CP first) and the result says
#: when the sweep stopped short.
MAX_FACTORIZATIONS = 256
MAX_LAYOUT_ESTIMATES = 2_000  # ~0.3-0.8 ms each today: a sweep stays near 1 s


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _factorizations(n: int, k: int) -> list[tuple[int, ...]]:
    """Every ordered ``k``-tuple of positive integers whose product is ``n``."""
    if k == 1:
        return [(n,)]
    return [(d, *rest) for d in _divisors(n) for rest in _factorizations(n // d, k - 1)]


def _likely_layouts(n: int) -> tuple[list[tuple[int, ...]], int]:
    """The DP x TP x PP x CP factorizations of ``n`` to try, likeliest first (no CP, TP within
    a node of 8, then the smallest TP x PP x CP), at most :data:`MAX_FACTORIZATIONS`; and how
    many there are in all."""
    every = _factorizations(n, 4)
    every.sort(key=lambda f: (f[3] > 1, f[1] > 8, f[1] * f[2] * f[3], f[2], f[1]))
    return every[:MAX_FACTORIZATIONS], len(every)


def _layouts(spec: ModelSpec, base: TrainingOptions,
             extra: Mapping[str, Any], gpus: int) -> tuple[list[LayoutFit], list[str]]:
    """The layouts of ``gpus`` GPUs that fit at ``base``'s batch and sequence, best first,
    and what the sweep left out."""
    layouts: list[LayoutFit] = []
    moe = spec.moe is not None
    tried, total = _likely_layouts(gpus)
    budget = MAX_LAYOUT_ESTIMATES
    started = 0
    for dp, tp, pp, cp in tried:
        if budget <= 0:
            break
        started += 1
        eps = (_divisors(dp * cp) if moe else [1])[:budget // 9 + 1]
        shardings: list[tuple[int, str | None]] = [(0, None)]
        if dp > 1:
            shardings += [(1, None), (2, None), (3, None), (0, "full"), (0, "grad-op")]
        for ep, (zero, fsdp), ckpt, off in itertools.product(
                eps, shardings, ("none", "selective", "full"), ("none", "optimizer", "params")):
            if off != "none" and not zero and fsdp is None:
                continue
            if off == "params" and zero in (1, 2):
                continue
            budget -= 1
            try:
                o = replace(base, dp=dp, tp=tp, pp=pp, cp=cp, ep=ep, zero=zero, fsdp=fsdp,
                            checkpointing=ckpt, offload=off, sp=base.sp and tp > 1,
                            microbatches=max(base.microbatches, pp))
                e = _estimate(spec, o, extra)
            except MemfitError:
                continue
            if e.fits:
                layouts.append(LayoutFit(dp, tp, pp, cp, ep, zero, fsdp, ckpt, off,
                                         e.peak_bytes, e.total_bytes, e.headroom_bytes or 0))
    rank_off = {"none": 0, "optimizer": 1, "params": 2}
    rank_ck = {"none": 0, "selective": 1, "full": 2}
    layouts.sort(key=lambda x: (rank_off[x.offload], rank_ck[x.checkpointing],
                                x.tp * x.pp * x.cp > 1, -x.headroom_bytes))
    notes = []
    if started < total or budget < 0:
        notes.append(f"layouts: {gpus} GPUs have {total:,} DP x TP x PP x CP splits; the sweep "
                     f"tried the {started:,} likeliest (small TP, PP, CP first), within "
                     f"{MAX_LAYOUT_ESTIMATES:,} estimates and {MAX_FACTORIZATIONS} splits")
    return layouts, notes


def _lean_fits(spec: ModelSpec, base: TrainingOptions,
               extra: Mapping[str, Any], n: int, given: frozenset[str]) -> bool:
    """Whether some memory-lean layout of ``n`` GPUs fits: FSDP full over all of them, or TP
    within a node of 8 with FSDP across nodes, each with full checkpointing; options the
    user gave (``given``) are kept."""
    lean: dict[str, Any] = {"pp": 1, "cp": 1, "ep": 1}
    if "zero" not in given:
        lean["zero"] = 0
        if "fsdp" not in given:
            lean["fsdp"] = "full"
    if "checkpointing" not in given:
        lean["checkpointing"] = "full"
    tries: list[dict[str, Any]] = [{"dp": n, "tp": 1}]
    for tp in (2, 4, 8):
        if n % tp == 0:
            tries.append({"dp": n // tp, "tp": tp, "sp": True})
    for kw in tries:
        kw.update(lean)
        if kw["dp"] == 1:
            kw.update(fsdp=None, zero=0)
        try:
            o = replace(base, **kw)
            if _estimate(spec, o, extra).fits:
                return True
        except MemfitError:
            continue
    return False


def _fewest_gpus(spec: ModelSpec, base: TrainingOptions,
                 extra: Mapping[str, Any], given: frozenset[str]) -> int | None:
    """The fewest GPUs with a lean layout that fits (powers of two, then the smallest
    multiple of 8 below the first power of two that fits); None past 65,536."""
    from .inference import MAX_GPUS

    n = 1
    while n <= MAX_GPUS and not _lean_fits(spec, base, extra, n, given):
        n *= 2
    if n > MAX_GPUS:
        return None
    if n > 16:  # between n/2 and n, in steps of 8: the smallest that fits
        lo = next((m for m in range(n // 2 + 8, n, 8)
                   if _lean_fits(spec, base, extra, m, given)), n)
        n = min(n, lo)
    return n


#: What ``fit_train`` tries, the user's other options kept, when nothing fits as given.
_RESCUES = (("optimizer_impl", "fused"), ("optimizer", "adamw-8bit"),
            ("checkpointing", "full"), ("loss", "chunked"))


def _rescues(spec: ModelSpec, base: TrainingOptions,
             extra: Mapping[str, Any], gpus: int) -> list[str]:
    """Hints when no layout of ``gpus`` GPUs fits: each change (one at a time, then all
    together) that makes one fit, with the flags the user gave kept."""
    out = []
    changes = [(k, v) for k, v in _RESCUES if getattr(base, k) != v
               and not (k == "optimizer_impl" and base.optimizer in ("lion", "adafactor"))]
    trials: list[dict[str, Any]] = [dict([c]) for c in changes]
    if len(changes) > 1:
        trials.append(dict(changes))
    for kw in trials:
        try:
            o = replace(base, **kw)
        except MemfitError:
            continue
        found, _ = _layouts(spec, o, extra, gpus)
        if found:
            flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in kw.items())
            x = found[0]
            out.append(f"fits with {flags} ({_layout_text(x)})")
            break
    return out


def _layout_text(x: LayoutFit) -> str:
    parts = [f"dp={x.dp}"] + [f"{k}={getattr(x, k)}" for k in ("tp", "pp", "cp", "ep")
                              if getattr(x, k) > 1]
    shard = f"fsdp {x.fsdp}" if x.fsdp else f"zero {x.zero}" if x.zero else ""
    return " ".join(parts + ([shard] if shard else []) + [f"checkpointing {x.checkpointing}"]
                    + ([f"offload {x.offload}"] if x.offload != "none" else []))


def _gpu_count(spec: ModelSpec, opts: dict[str, Any],
               extra: Mapping[str, Any], gpus: int | None) -> tuple[int, list[str]]:
    """The GPU count of a fit: ``gpus`` as given, else the layout's (``dp*tp*pp*cp``) when
    one is given, else the fewest that fit."""
    from .inference import MAX_GPUS

    if gpus is not None:
        if not isinstance(gpus, int) or isinstance(gpus, bool) or not 1 <= gpus <= MAX_GPUS:
            raise MemfitError.bad_value("gpus", gpus, f"an integer in [1, {MAX_GPUS}]")
        return gpus, []
    if any(k in opts for k in ("dp", "tp", "pp", "cp")):
        return make_options(TrainingOptions, **opts).world_size, []
    fewest = _min_gpus(spec, opts, extra)
    if fewest is None:
        return 1, ["no layout fits on up to 65,536 GPUs"]
    notes = [f"fewest GPUs: {fewest} (the smallest count with a layout that fits without "
             "offloading; powers of two, then multiples of 8)"]
    if "offload" not in opts and fewest > 1:
        off = _min_gpus(spec, {**opts, "offload": "optimizer"}, extra)
        if off is not None and off < fewest:
            notes.append(f"with --offload optimizer (CPU offload of the optimizer state, "
                         f"FSDP's CPUOffloadPolicy or ZeRO-Offload): {off} GPUs")
    return fewest, notes


def _min_gpus(spec: ModelSpec, opts: dict[str, Any],
              extra: Mapping[str, Any]) -> int | None:
    """The fewest GPUs with a lean layout that fits the user's options, the data-parallel
    degree left free (tp/pp/cp/ep and the other options as given)."""
    free = {k: v for k, v in opts.items() if k != "dp"}
    return _fewest_gpus(spec, make_options(TrainingOptions, **free), extra,
                        frozenset(free))


def fit_train(model: ModelLike, gpu: str, gpus: int | None = None, *, max_layouts: int = 20,
              **options: Any) -> FitResult:
    """The largest micro-batch and longest sequence that fit the given layout on ``gpu``
    (exact: the answer fits, one more does not), and a ranked list of layouts of ``gpus``
    GPUs (DP x TP x PP x CP x EP, ZeRO stage or FSDP, checkpointing, offload) that fit at the
    given batch and sequence, ranked by fewest compromises (no offload, no recomputation),
    then most headroom. Without ``gpus``: the layout's GPU count when ``dp``/``tp``/``pp``/
    ``cp`` are given, else the fewest GPUs that fit. When nothing fits, the notes name the
    changes (optimizer implementation, 8-bit state, checkpointing, chunked loss) that make a
    layout fit, the other options kept."""
    from .hardware import get_gpu

    spec, _ = resolve_model(model)
    g = get_gpu(gpu)
    opts, extra = _split_options(dict(options))
    opts["gpu"] = g.name
    counted = gpus is None and not any(k in opts for k in ("dp", "tp", "pp", "cp"))
    gpus, notes = _gpu_count(spec, opts, extra, gpus)
    counted = counted and not any("no layout fits" in n for n in notes)
    if "dp" not in opts and gpus > 1 and all(k not in opts for k in ("tp", "pp", "cp")):
        opts["dp"] = gpus
    base = make_options(TrainingOptions, **opts)
    if base.world_size != gpus:
        raise MemfitError.bad_value("gpus", gpus, f"dp*tp*pp*cp = {base.world_size} for the "
                                    "given layout (or leave the layout out)")

    def fits(o: TrainingOptions) -> bool:
        try:
            return bool(_estimate(spec, o, extra).fits)
        except MemfitError:
            return False

    max_batch = largest_true(lambda n: fits(replace(base, batch=n)), 1, MAX_COUNT)
    step = base.cp
    max_seq_units = largest_true(lambda n: fits(replace(base, seq=n * step)), 1,
                                 MAX_COUNT // step)
    max_seq = max_seq_units * step if max_seq_units else None
    est = _estimate(spec, replace(base, batch=max_batch), extra) if max_batch else None
    layouts, more = _layouts(spec, base, extra, gpus)
    notes += more
    if not layouts:
        notes += _rescues(spec, base, extra, gpus)
    min_gpus = gpus if counted else _min_gpus(spec, opts, extra)
    return FitResult(model=spec.name, gpu=g.name, gpus=gpus, gpu_memory_bytes=g.usable_bytes,
                     max_batch=max_batch, max_seq=max_seq, estimate=est,
                     layouts=tuple(layouts[:max_layouts]), notes=tuple(notes),
                     min_gpus=min_gpus)
