"""memfit.sweep answers every point exactly as the single estimate does."""

from __future__ import annotations

import itertools
import random

import pytest

import memfit
from memfit.catalog import entry_names
from memfit.errors import MemfitError
from memfit.sweep import grid_points, sweep


def _single(fn, model, opts):
    try:
        e = fn(model, **opts)
    except MemfitError as exc:
        return None, None, None, str(exc)
    return e.peak_bytes, e.total_bytes, e.fits, None


def _same(model, mode, grid, **options):
    fn = memfit.infer if mode == "infer" else memfit.train
    points = sweep(model, mode, grid, **options)
    assert len(points) == len(grid_points(grid))
    for p in points:
        got = (p.peak_bytes, p.total_bytes, p.fits, p.error)
        assert got == _single(fn, model, {**options, **p.options}), (model, options, p.options)
    return points


GRID = {"batch": [1, 3, 16], "prompt": [1, 17, 1000, 4096, 40_000], "generate": [0, 1, 300]}


@pytest.mark.parametrize("name", sorted(entry_names())[::4])
def test_hf_grid_equals_single_estimates(name) -> None:
    _same(name, "infer", GRID, gpu="h100")


@pytest.mark.parametrize("options", [
    dict(engine="vllm", gpu="h100"),
    dict(engine="llamacpp", weights="q4_k_m", gpu="l4"),
    dict(weights="bnb-nf4", kv_dtype="fp8", tp=2, gpu="a100-sxm-80gb"),
    dict(pp=3, attn="eager", logits="all"),
    dict(tp=3),  # refused for every point (heads not divisible)
])
def test_other_options_and_engines(options) -> None:
    for name in ("llama-3.1-8b", "mixtral-8x7b", "gemma-2-9b"):
        _same(name, "infer", {"batch": [1, 8], "prompt": [128, 8192], "generate": [0, 64]},
              **options)


def test_points_that_change_other_options_and_refusals() -> None:
    rng = random.Random(5)
    points = [dict(batch=rng.choice([0, 1, 2, 64, True, 2.0, "4", 2**41]),
                   prompt=rng.choice([1, 512, 10**6]),
                   tp=rng.choice([1, 2, 3]), weights=rng.choice([None, "fp8-e4m3", "nope"]))
              for _ in range(40)]
    out = _same("qwen2.5-7b", "infer", points, generate=16, gpu="h100")
    assert any(p.error for p in out) and any(p.fits for p in out)
    bad = [dict(batch=v) for v in (0, -1, True, 2.0, "4", None, 2**41)] + [
        dict(prompt=0), dict(generate=-1), dict(generate=False),
        {"generate": -1, "prompt": 0, "batch": 0}, {"generate": -1, "prompt": 0}]
    assert all(p.error for p in _same("qwen2.5-7b", "infer", bad))


def test_config_dict_and_default_prompt() -> None:
    cfg = dict(memfit.catalog.get_entry("gpt2").config)
    _same(cfg, "infer", [{"batch": 2}, {"batch": 2, "prompt": 1024}, {"generate": 1023}])
    _same("gpt2", "infer", {"batch": [1, 4]}, gpu="l4")


def test_train_points() -> None:
    _same("llama-3.1-8b", "train", {"batch": [1, 4], "seq": [512, 4096]}, gpu="h100")


def test_bad_grid_and_mode() -> None:
    with pytest.raises(MemfitError):
        sweep("gpt2", "serve", {})
    for bad in ({"batch": 4}, {1: [1]}, [{1: 2}], [3], 5, "batch",
                {"batch": range(1, 2001), "prompt": range(1, 1001)},
                {"batch": range(1, 10**15)}, {"batch": itertools.count(1)}):
        with pytest.raises(MemfitError):
            sweep("gpt2", "infer", bad)


def test_hf_points_skip_the_estimate(monkeypatch) -> None:
    import importlib

    S = importlib.import_module("memfit.sweep")  # the module (memfit.sweep is the function)

    def boom(*a, **k):
        raise AssertionError("the full estimate ran")
    monkeypatch.setattr(S, "estimate_inference", boom)
    assert all(p.peak_bytes for p in sweep("llama-3.1-8b", "infer", {"batch": [1, 2]}))


# Many batches per (prompt, generate): the closed form over the batch (memfit.sweep_hf) runs.
@pytest.fixture(autouse=True)
def _closed_forms_everywhere(monkeypatch):
    """Every group of a test's grid through the closed forms, cuts and all (a sweep otherwise
    leaves a group to the single estimates when it holds fewer than 8 points per symbolic
    run)."""
    monkeypatch.setattr("memfit.sweep_hf.POINTS_PER_RUN", 1)


DENSE = {"batch": [1, 2, 3, 5, 8, 31, 64, 65, 200, 513], "prompt": [1, 2, 300, 4097, 33_000],
         "generate": [0, 1, 2, 700]}


def _solved(model, **options):
    """How many of DENSE's points the closed form answered (the rest: one by one)."""
    import importlib

    S = importlib.import_module("memfit.sweep")
    spec, _, _ = memfit.catalog.resolve_model_full(model)
    base = S.make_options(S.InferenceOptions, **options)
    return len(S._hf_groups(spec, base, grid_points(DENSE)))


@pytest.mark.parametrize("name", sorted(entry_names()))
def test_closed_form_equals_single_estimates_every_model(name) -> None:
    _same(name, "infer", DENSE, gpu="h100")


@pytest.mark.parametrize("options", [
    dict(tp=2, kv_dtype="fp8", gpu="a100-sxm-80gb"),
    dict(pp=3, attn="eager", logits="all"),
    dict(tp=2, pp=2, weights="bnb-nf4"),
    dict(weights="fp8-e4m3", kv_dtype="fp8"),
    dict(weights="bnb-int8", attn="eager"),
    dict(ep=2, tp=2),
])
def test_closed_form_equals_single_estimates_options(options) -> None:
    for name in ("llama-3.1-8b", "mixtral-8x7b", "gemma-2-9b", "qwen3-30b-a3b",
                 "deepseek-v2-lite", "gemma-3-1b", "gpt2", "phi-3.5-mini"):
        _same(name, "infer", DENSE, **options)


def test_closed_form_is_taken() -> None:
    # dense, MoE, sliding windows with several layer kinds, TP/PP: most points in closed form
    for name, options in [("llama-3.1-8b", {}), ("mixtral-8x7b", dict(tp=2)),
                          ("gemma-3-1b", {}), ("gemma-2-9b", dict(pp=2, kv_dtype="fp8")),
                          ("qwen3-30b-a3b", dict(weights="bnb-nf4"))]:
        assert _solved(name, **options) >= len(grid_points(DENSE)) // 2, name


def test_batch_poly_is_exact_or_refuses() -> None:
    from memfit.sweep_hf import BatchPoly, _Fail, _Split

    B = BatchPoly((0, 1), 1, 100)
    p = 3 * B * B - 7 * B + 11
    assert [p.at(b) for b in (1, 50, 100)] == [3 * b * b - 7 * b + 11 for b in (1, 50, 100)]
    assert (B + 5 > 4) and not (B < 1) and max(B, 0) is B and (2 * B) // 2 == B
    with pytest.raises(_Split) as cut:
        _ = B > 40
    assert cut.value.at == 41
    with pytest.raises(_Split):
        _ = B == 7  # a line crossing a value inside the range
    for bad in (lambda: B // 3, lambda: B / 2, lambda: B * 0.5,
                lambda: int(B), lambda: [0][B], lambda: B % 2, lambda: 1 // B):
        with pytest.raises((_Fail, TypeError)):
            bad()
    # a memo keyed on the batch finds only the same polynomial on the same range
    assert {B: 1}.get(BatchPoly((0, 1), 1, 100)) == 1 and hash(B) != hash(BatchPoly((0, 1), 1, 9))


TRAIN_DENSE = {"batch": [1, 2, 3, 4, 7, 16, 33, 64], "seq": [1, 128, 2048, 9000]}


@pytest.mark.parametrize("options", [
    dict(gpu="h100"),
    dict(lora_rank=16, gpu="a100-sxm-80gb"),
    dict(qlora=True, checkpointing="full"),
    dict(zero=3, dp=8, gpu="h100"),
    dict(fsdp="full", dp=4, checkpointing="selective"),
    dict(tp=2, pp=2, microbatches=4),
    dict(precision="bf16-master", states_convention="megatron-18", zero=1, dp=2),
])
def test_train_closed_form_equals_single_estimates(options) -> None:
    for name in ("llama-3.1-8b", "mixtral-8x7b", "gemma-2-2b", "qwen3-30b-a3b", "gpt2"):
        _same(name, "train", TRAIN_DENSE, **options)


def test_train_closed_form_is_taken() -> None:
    import importlib

    S = importlib.import_module("memfit.sweep")
    spec = memfit.load_model("llama-3.1-8b")
    pts = grid_points({"batch": range(1, 65), "seq": TRAIN_DENSE["seq"]})
    for options in ({}, dict(lora_rank=16), dict(zero=3, dp=8)):
        assert len(S._train_groups(spec, pts, options)) == len(pts), options


def test_train_defaults_mixed_points_and_refusals() -> None:
    _same("gpt2", "train", {"batch": [1, 2, 3, 4, 5]})  # the default seq shrunk to 1,024
    _same("llama-3.1-8b", "train", {"batch": [1, 2, 3, 4, 5, 90]}, seq=1024, gpu="l4")
    rng = random.Random(7)
    points = [dict(batch=rng.choice([0, 1, 2, 8, 64, True, 2.0, 2**41]),
                   seq=rng.choice([1, 512, 4096, 10**7, "8"]),
                   **({"tp": rng.choice([1, 2, 3])} if rng.random() < 0.3 else {}))
              for _ in range(60)]
    out = _same("qwen2.5-7b", "train", points, gpu="h100", lora_rank=16)
    assert any(p.error for p in out) and any(p.fits for p in out)


def test_benchmark_grid_in_closed_form_with_the_default_bound(monkeypatch) -> None:
    import importlib

    monkeypatch.undo()  # the sweep's own bound: 8 points per symbolic run
    S = importlib.import_module("memfit.sweep")
    spec, _, _ = memfit.catalog.resolve_model_full("llama-3.1-8b")
    pts = [{"batch": b, "prompt": 64 * p} for p in (1, 7, 300) for b in range(1, 301, 3)]
    base = S.make_options(S.InferenceOptions, generate=128)
    assert len(S._hf_groups(spec, base, pts)) == len(pts)
    tr = [{"batch": b, "seq": 64 * p} for p in (100, 200, 300) for b in range(1, 301, 10)]
    assert len(S._train_groups(spec, tr, {})) >= len(tr) // 2
    # a group too small for its cuts is answered one by one, and the same
    _same("llama-3.1-8b", "infer", {"batch": list(range(1, 200, 9)), "prompt": [1, 5000]},
          generate=3)


def test_batch_poly_random_programs_equal_integer_runs() -> None:
    """Random straight-line programs with branches: run on a symbolic batch (cut where a
    comparison changes), every piece equals the program run on each integer batch."""
    from memfit.sweep_hf import pieces

    def program(rng_seed, B):
        rng = random.Random(rng_seed)
        vals = [B, 3, B * 7 + 2]
        for _ in range(12):
            x, y = rng.choice(vals), rng.choice(vals)
            op = rng.randrange(8)
            if op == 0:
                v = x + y
            elif op == 1:
                v = x - y + rng.randint(-50, 50)
            elif op == 2:
                v = x * rng.randint(-3, 5)
            elif op == 3:
                v = max(x, y)
            elif op == 4:
                v = min(x, y + rng.randint(0, 400))
            elif op == 5:
                v = x if x > y else y * 2
            elif op == 6:
                v = (x * 6) // 3
            else:
                v = x * B if len(vals) < 6 else x + 1
            vals.append(v)
        return max(vals[3:]) if vals[-1] != 17 else vals[-2]

    rng = random.Random(3)
    solved = 0
    for seed in range(300):
        lo = rng.randint(1, 40)
        hi = lo + rng.randint(0, 200)
        got = pieces(lambda b, s=seed: program(s, b), lo, hi, points=64 * 8)
        if got is None:
            continue  # left to the single estimates: allowed, never wrong
        solved += 1
        covered = set()
        for a, b, v in got:
            for batch in range(a, b + 1):
                assert (v if type(v) is int else v.at(batch)) == program(seed, batch)
                covered.add(batch)
        assert covered == set(range(lo, hi + 1))
    assert solved >= 200  # (246 of 300 with these seeds)
