"""The training estimate's memo (memfit.training's plan per model and options other than batch
and sequence, memfit.step's prepared stage): a warm estimate equals a cold one, field for
field, whatever ran before it; estimates made earlier keep their own derivation; the memo
stays bounded."""

from __future__ import annotations

import json
from typing import Any

import pytest

from memfit import training
from memfit.catalog import get_entry, resolve_model
from memfit.memory import weights
from memfit.step import Ctx, stage_estimate
from memfit.step.events import FRAME, Program, Sweep, sweep
from memfit.training import train


def _cfg(name: str, layers: int) -> dict[str, Any]:
    cfg = dict(get_entry(name).config)
    cfg["n_layer" if "n_layer" in cfg else "num_hidden_layers"] = layers
    if "layer_types" in cfg:
        cfg["layer_types"] = cfg["layer_types"][:layers]
    return cfg


# Structures (models and options other than batch/seq) covering each part: autocast, LoRA,
# QLoRA, FSDP2 (full, grad-op, LoRA), ZeRO, pipeline stages, TP/SP, checkpointing kinds,
# every-N checkpointing, the losses, offload, the optimizer in backward, MoE, sliding layers.
_GRID: list[tuple[str, int, dict[str, Any]]] = [
    ("llama-3.2-1b", 2, {}),
    ("llama-3.2-1b", 3, dict(precision="bf16-true", lora_rank=8, lora_targets="attention")),
    ("llama-3.2-1b", 2, dict(qlora=True, lora_dropout=0.05)),
    ("llama-3.2-1b", 4, dict(dp=4, fsdp="full", checkpointing="full", checkpoint_every=2,
                             precision="bf16-true")),
    ("qwen3-0.6b", 2, dict(dp=2, fsdp="grad-op", lora_rank=16, precision="fp32")),
    ("qwen3-0.6b", 4, dict(dp=2, zero=3, offload="optimizer", microbatches=2)),
    ("gemma-3-1b", 4, dict(pp=2, microbatches=4, checkpointing="selective")),
    ("gpt2", 2, dict(tp=2, sp=True, attn="eager", precision="fp32")),
    ("gemma-2-2b", 2, dict(loss="chunked", loss_chunks=4, activation_offload=True)),
    ("qwen2.5-0.5b", 2, dict(loss="liger", checkpointing="op-selective")),
    ("qwen2.5-0.5b", 2, dict(loss="cce", precision="bf16-true", optimizer_in_backward=True)),
    ("qwen3-30b-a3b", 1, dict(dp=4, ep=4, zero=1, optimizer="adamw-8bit")),
    ("mixtral-8x7b", 1, dict(dp=2, fsdp="full", precision="bf16-true")),
]
_SHAPES = [(1, 512), (3, 1000), (2, 256)]


def _json(e: Any) -> str:
    return json.dumps(e.to_dict())  # key order included


def _clear(spec: Any) -> None:
    weights.memo_table(spec).clear()
    training._CHECKED.clear()
    training._PLANS.clear()


def _cold(model: dict[str, Any], opts: dict[str, Any]) -> str:
    spec, _ = resolve_model(model)
    _clear(spec)
    return _json(train(model, **opts))


@pytest.mark.parametrize("name,layers,opts", _GRID)
def test_warm_estimate_equals_cold(name: str, layers: int, opts: dict[str, Any]) -> None:
    model = _cfg(name, layers)
    spec, _ = resolve_model(model)
    cold = {shape: _cold(model, dict(opts, batch=shape[0], seq=shape[1])) for shape in _SHAPES}
    # warm: the same spec object, the plan made by another batch and sequence, and another
    # structure's estimates in between
    _clear(spec)
    made = []
    for batch, seq in reversed(_SHAPES):
        train(spec, batch=batch, seq=seq, checkpointing="full")
        made.append(((batch, seq), training._estimate(
            spec, training._options(dict(opts, batch=batch, seq=seq)), {})))
    # each estimate's lazily built derivation is its own, whatever came after it
    for shape, e in made:
        assert _json(e) == cold[shape]


def test_memoised_plan_equals_the_unmemoised_stage() -> None:
    """The plan's prepared stage, run for a batch and sequence, gives the phases the
    one-shot :func:`memfit.step.stage_estimate` gives."""
    spec, _ = resolve_model(_cfg("llama-3.2-1b", 3))
    for opts in ({}, dict(dp=2, fsdp="full", lora_rank=8), dict(pp=3, microbatches=3)):
        for batch, seq in _SHAPES:
            o = training._options(dict(opts, batch=batch, seq=seq))
            e = training._estimate(spec, o, {})
            plan = training._plan_of(spec, o, {})
            c = Ctx(**{**plan.ctx.__dict__, "o": o})
            best = [stage_estimate(c, b.stage, _counts(spec.num_layers, o.pp))
                    for b in plan.bases]
            peaks = [max(p.peak_bytes for p in r["phases"]) for r in best]
            assert e.phases == best[peaks.index(max(peaks))]["phases"]


def _counts(n: int, pp: int) -> list[int]:
    from memfit.parallel import stage_layers

    return stage_layers(n, pp)


def test_memo_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(training, "_CHECKED_MAX", 8)
    monkeypatch.setattr(training, "_PLANS_MAX", 16)
    monkeypatch.setattr(weights, "_MEMO_PER_SPEC", 40)
    spec, _ = resolve_model(_cfg("llama-3.2-1b", 2))
    first = _json(train(spec, batch=2, seq=300, lora_rank=4))
    for rank in range(1, 120):  # 119 structures, each a plan and an options entry
        train(spec, batch=1 + rank % 3, seq=128 + rank, lora_rank=rank)
        assert len(training._CHECKED) <= 8 and len(training._PLANS) <= 16
        assert len(weights.memo_table(spec)) <= 40
    assert _json(train(spec, batch=2, seq=300, lora_rank=4)) == first


def test_frame_is_a_moment_of_the_first_six_owners() -> None:
    values = (5, 7, 11, 13, 17, 19)
    a, b = Program(), Program()
    for p in (a, b):
        p.phase("x", (0, 1, 2, 3, 4, 5, 6))
        p.alloc(6, 3)
    a.frame(values)
    b.moment(*enumerate(values))
    assert sweep(a.ops) == sweep(b.ops)
    assert a.ops[-1][0] == FRAME


def test_sweep_as_emitted_equals_the_sweep_of_the_program() -> None:
    """:class:`Sweep` (what an estimate uses) gives what :func:`sweep` gives over the same
    operations, on random programs of every kind of operation."""
    import random

    rng = random.Random(13)
    for _ in range(300):
        a, b = Program(), Sweep()
        for _ in range(rng.randrange(1, 30)):
            kind = rng.randrange(7)
            owner, n, reps = rng.randrange(7), rng.randrange(-50, 100), rng.randrange(4)
            for p in (a, b):
                if kind == 0:
                    p.alloc(owner, n)
                elif kind == 1:
                    p.free(owner, abs(n))
                elif kind == 2:
                    p.moment((owner, abs(n)), ((owner + 3) % 7, abs(n) // 2))
                elif kind == 3:
                    p.frame(tuple(abs(n) * k % 97 for k in range(1, 7)))  # type: ignore[arg-type]
                elif kind == 5 and isinstance(p, Sweep):  # the FSDP2 timeline's moments
                    p.framer(n + 60, 7)(owner, 3, abs(n), 11, n % 5)
                elif kind == 5:
                    p.frame((n + 60 + owner, 7, abs(n), 11, n % 5, 3))
                elif kind == 4:
                    p.repeat(((owner, n), ((owner + 1) % 7, -n // 2)), reps)
                else:
                    p.phase(f"p{n}", tuple(sorted({owner, 3})))
        assert b.phases() == sweep(a.ops)
