"""The hf engine's speed-ups change no answer: a memoised (warm) estimate equals one computed
from empty tables, the closed-form KV cache equals the per-layer sum, a decode moment moved
onto its resident bytes equals the one evaluated there, and the moments a decode step asks
for alone equal those of the full evaluation. (benchmarks/speed.py times them; the caches are
per-spec tables, :func:`memfit.memory.weights.memo`, and one last-model slot.)
"""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest

from memfit import engines
from memfit.catalog import resolve_model
from memfit.inference import estimate_inference
from memfit.memory import inference_activations as ia
from memfit.memory.kv_cache import (
    HFCacheRows,
    hf_cache_bytes,
    resolve_kv_dtype,
    token_bytes_by_kind,
)
from memfit.memory.weights import layer_kind_counts
from memfit.workload import InferenceOptions, make_options

# models with every kind of layer: sliding windows (Gemma 2/3, Mistral, gpt-oss), MoE (dense
# and MoE layers mixed: Qwen2-MoE, DeepSeek), MLA (DeepSeek-V2-Lite), learned positions (GPT-2)
MODELS = ["llama-3.1-8b", "gemma-2-9b", "gemma-3-1b", "mistral-7b-v0.1", "gpt-oss-20b",
          "qwen1.5-moe-a2.7b", "deepseek-v2-lite", "gpt2", "phi-3-mini-4k", "olmo-2-7b",
          "pythia-160m", "qwen3-0.6b"]
SCENARIOS = [
    dict(batch=1, prompt=1, generate=1),
    dict(batch=3, prompt=777, generate=513),
    dict(batch=2, prompt=300, generate=7, attn="eager"),
    dict(batch=1, prompt=900, generate=100, weights="fp32"),
    dict(batch=4, prompt=64, generate=0, logits="all"),
    dict(batch=2, prompt=600, generate=64, pp=2, kv_dtype="fp8"),
]


def _models() -> list[str]:
    return list(MODELS)


def _json(est) -> str:  # type: ignore[no-untyped-def]
    return json.dumps(est.to_dict(), sort_keys=True, default=repr)


def _fresh(spec):  # type: ignore[no-untyped-def]
    """An equal spec that is a new object: every per-spec memo table starts empty for it."""
    return replace(spec)


@pytest.mark.parametrize("name", _models())
def test_warm_estimates_equal_cold_ones(name: str) -> None:
    spec, config = resolve_model(name)
    warm = []
    for kw in SCENARIOS:  # one spec object: the structure and constants are reused
        opts = make_options(InferenceOptions, **kw)
        warm.append(_json(estimate_inference(spec, opts)) if _valid(spec, opts) else None)
    for kw, got in zip(SCENARIOS, warm, strict=True):
        if got is None:
            continue
        cold = estimate_inference(_fresh(spec), make_options(InferenceOptions, **kw))
        assert _json(cold) == got, (name, kw)


def _valid(spec, opts) -> bool:  # type: ignore[no-untyped-def]
    from memfit.errors import MemfitError

    try:
        estimate_inference(_fresh(spec), opts)
    except MemfitError:
        return False
    return True


def test_interleaved_models_keep_their_own_answers() -> None:
    """Alternating models (the last-model slot is swapped every call) gives each model the
    answer it gets alone."""
    specs = [resolve_model(m) for m in _models()]
    opts = make_options(InferenceOptions, batch=2, prompt=500, generate=20)
    alone = [_json(estimate_inference(_fresh(s), opts)) for s, _c in specs]
    for _ in range(2):
        for (s, _c), want in zip(specs, alone, strict=True):
            assert _json(estimate_inference(s, opts)) == want


@pytest.mark.parametrize("name", _models())
def test_closed_form_cache_equals_layer_sum(name: str) -> None:
    spec, _ = resolve_model(name)
    rng = random.Random(name)
    for kv in (None, "fp8", "fp32"):
        dt = resolve_kv_dtype(kv, "bf16", "hf")
        for tp in (1, 2):
            counts = layer_kind_counts(spec, 0, spec.num_layers)
            rows = token_bytes_by_kind(spec, counts, dt, tp)
            for _ in range(5):
                a = rng.randrange(0, spec.num_layers)
                b = rng.randrange(a, spec.num_layers + 1)
                part = layer_kind_counts(spec, a, b)
                closed = HFCacheRows(part, rows)
                for B, P, step in ((1, 1, 0), (3, 5000, 0), (2, 4095, 1), (2, 4095, 2),
                                   (7, 100, 9000), (1, 33000, 5)):
                    assert closed.bytes(B, P, step) == hf_cache_bytes(spec, part, B, P, step,
                                                                       dt, tp, rows)


@pytest.mark.parametrize("name", _models())
def test_shifted_decode_moment_equals_direct(name: str) -> None:
    spec, _ = resolve_model(name)
    prof = ia.profile_for(spec)
    for attn in ("sdpa", "eager"):
        for b in (2, 4):
            s1 = engines._shapes(spec, 3, 1, b, 1, 4, (False, False))
            for kind in dict.fromkeys(spec.layers):
                for tokens in (1, 700, 5000):
                    zero = ia.decode_attention(spec, prof, s1, attn=attn, layer=kind,
                                               tokens=tokens, resident=0)
                    for res in (0, 12345):
                        direct = ia.decode_attention(spec, prof, s1, attn=attn, layer=kind,
                                                     tokens=tokens, resident=res)
                        moved = [engines._shifted(m, res, spec, prof, s1, attn, True, kind,
                                                  tokens, False) for m in zero]
                        assert ([(m.name, m.activations, m.formula, m.substituted)
                                 for m in moved]
                                == [(m.name, m.activations, m.formula, m.substituted)
                                    for m in direct])


@pytest.mark.parametrize("name", _models())
def test_attention_only_equals_filtered_full(name: str) -> None:
    spec, _ = resolve_model(name)
    prof = ia.profile_for(spec)
    s = engines._shapes(spec, 2, 1, 2, 1, 3, (False, False))
    for attn in ("sdpa", "eager"):
        for kind in dict.fromkeys(spec.layers):
            full = ia.prefill_moments(spec, prof, s, attn=attn, layer=kind, kv_len=900,
                                      resident=77)
            only = ia.prefill_moments(spec, prof, s, attn=attn, layer=kind, kv_len=900,
                                      resident=77, attention_only=True)
            keep = ("prefill/attention", "prefill/attention_out", "prefill/attention_v")
            assert ([(m.name, m.activations, m.substituted) for m in only]
                    == [(m.name, m.activations, m.substituted) for m in full
                        if m.name in keep])


def test_moment_text_is_formatted_once() -> None:
    calls = []

    def text() -> str:
        calls.append(1)
        return "R 1 + 2"

    m = ia.Moment("prefill/x", 3, substituted=text)
    assert calls == []
    assert m.substituted == "R 1 + 2" and m.substituted == "R 1 + 2"
    assert calls == [1]


def test_last_model_slot_holds_one_model() -> None:
    a, _ = resolve_model("llama-3.1-8b")
    b, _ = resolve_model("gemma-2-9b")
    ia._consts(a, ia.profile_for(a))
    ia._consts(b, ia.profile_for(b))
    assert ia._LAST_CONSTS[0] is b  # one slot, swapped: it cannot grow


@pytest.mark.parametrize("engine", ["vllm", "llamacpp"])
def test_memoised_model_weights_equal_cold_ones(engine: str) -> None:
    """vLLM's and llama.cpp's weights come from the per-model memo: warm estimates equal
    estimates from empty tables (and a second resolved format object is not confused with
    the first)."""
    for name in ("llama-3.1-8b", "gemma-2-9b", "qwen1.5-moe-a2.7b", "gpt2"):
        spec, config = resolve_model(name)
        for kw in (dict(batch=2, prompt=512, weights="q6_k"),
                   dict(batch=1, prompt=100, weights="q8_0"),
                   dict(batch=4, prompt=64, weights="q4_k_m", n_gpu_layers=3)
                   if engine == "llamacpp" else dict(batch=4, prompt=64, tp=2)):
            kw = dict(kw, engine=engine, gpu="h100")
            opts = make_options(InferenceOptions, **kw)
            warm = [_json(estimate_inference(spec, opts)) for _ in range(2)]
            cold = _json(estimate_inference(_fresh(spec), opts))
            assert warm == [cold, cold], (name, kw)


def test_integer_tensor_bytes_equal_exact_rationals() -> None:
    """dtypes.tensor_bytes in integers equals the rational-bits formula over every format
    (20 of them have fractional element bits) and a made-up format with odd numbers."""
    import math
    from fractions import Fraction

    from memfit import dtypes as D

    def rational(shape, f):  # type: ignore[no-untyped-def]
        cols, rows = shape[-1], (shape[-2] if len(shape) >= 2 else 1)
        mats = math.prod(shape[:-2])
        n = mats * rows * cols
        if f.flat_blocks:
            blocks = -(-n // f.block_elements)
            supers = -(-n // f.super_block_size) if f.super_block_size else 0
        else:
            blocks = mats * -(-rows // f.block_rows) * -(-cols // f.block_size)
            supers = mats * rows * -(-cols // f.super_block_size) if f.super_block_size else 0
        bits = (Fraction(blocks * f.block_bits) if f.pad_blocks
                else n * f.element_bits + blocks * f.block_metadata_bits)
        bits += supers * f.super_block_bits
        bits += mats * (rows * f.row_bits + cols * f.col_bits + f.matrix_bits)
        return math.ceil(bits / 8)

    fmts = {x for v in vars(D).values() if isinstance(v, dict) for x in v.values()
            if isinstance(x, D.WeightFormat)}
    fmts.add(D.WeightFormat(name="odd", aliases=(), kind=D.KINDS[0], block_size=3,
                            block_bits=17, element_bits=Fraction(13, 3), description="",
                            source="", row_bits=5, col_bits=3, matrix_bits=7))
    assert len(fmts) > 30 and any(f.element_bits.denominator > 1 for f in fmts)
    rng = random.Random(3)
    for f in fmts:
        for _ in range(60):
            shape = [rng.choice([1, 2, 7, 31, 64, 100, 255, 4096, 5000, 14336])
                     for _ in range(rng.choice([1, 2, 3]))]
            assert D.tensor_bytes(shape, f) == rational(shape, f), (f.name, shape)


def test_make_options_equals_the_constructor() -> None:
    """make_options checks only the options given (the rest hold the default objects): the
    same instance or the same first error as the dataclass's own constructor."""
    from memfit.errors import MemfitError

    rng = random.Random(0)
    values = dict(batch=[0, 1, 2.0, True, None, "x", 2**41], prompt=[1, -3],
                  generate=[0, False], weights=[None, 3, "bnb-nf4"],
                  engine=["hf", "vllm", "llamacpp", "bad", 1], tp=[1, 2, 0], gpu=["h100", None],
                  n_gpu_layers=[3, None, -1], block_size=[32, 16],
                  gpu_memory_utilization=[0.5, 2.0, float("nan")], attn=["eager", "x"],
                  enforce_eager=[True, 1], ubatch_size=[256], max_model_len=[100, 0])

    def one(make):  # type: ignore[no-untyped-def]
        try:
            return repr(make())
        except MemfitError as exc:
            return "error " + str(exc)
    for _ in range(3000):
        names = list(values)
        rng.shuffle(names)
        kw = {k: rng.choice(values[k]) for k in names if rng.random() < 0.3}
        assert one(lambda kw=kw: make_options(InferenceOptions, **kw)) == one(
            lambda kw=kw: InferenceOptions(**kw)), kw


@pytest.mark.parametrize("name", _models())
def test_resident_parts_equal_the_dict(name: str) -> None:
    """The summed resident tensors (no dict) equal resident_bytes' entries."""
    spec, config = resolve_model(name)
    prof = ia.profile_for(spec)
    rng = random.Random(11)
    for _ in range(40):
        B, P, tp = rng.choice([1, 3, 8]), rng.choice([1, 2, 100, 5000]), rng.choice([1, 2])
        if spec.num_heads % tp or (spec.num_kv_heads % tp and spec.mla is None):
            tp = 1
        s = engines._shapes(spec, B, P, rng.choice([2, 4]), tp, rng.choice([1, 5]),
                            (False, False))
        attn, first = rng.choice(["sdpa", "eager"]), rng.choice([True, False])
        kv = rng.choice([P, P + 1, P + 4096])
        res = ia.resident_bytes(spec, prof, s, attn, first, kv_len=kv)
        assert ia._resident_parts(spec, prof, s, attn, first, kv) == (
            sum(res.values()), res["input_ids"], res["layer_input"], res["masks"])
