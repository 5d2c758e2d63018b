"""The generic path (memfit.generic): any transformers model, counted and traced.

Independent values: memfit's analytical parameter counts and estimates for the families it
models by hand, and the tracer run at the full depth.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest

from memfit.catalog import all_entries
from memfit.cli import main
from memfit.errors import MemfitError
from memfit.memory.params import count_params
from memfit.workload import InferenceOptions, TrainingOptions
from tests.configs.families import FAMILY_CONFIGS

pytest.importorskip("torch")
pytest.importorskip("transformers")

from memfit.generic import (  # noqa: E402
    cache,  # noqa: E402
    generic_infer,
    generic_params,
    generic_train,
)
from memfit.trace import trace_inference, trace_training  # noqa: E402

INFER = InferenceOptions(batch=2, prompt=32, generate=4)
TRAIN = TrainingOptions(batch=2, seq=32)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMFIT_CACHE_DIR", str(tmp_path))


def _deep(name: str, layers: int = 10) -> dict:
    cfg = dict(FAMILY_CONFIGS[name])
    cfg["n_layer" if "n_layer" in cfg else "num_hidden_layers"] = layers
    return cfg


@pytest.mark.parametrize("entry", all_entries(), ids=lambda e: e.name)
def test_params_equal_analytical_by_component(entry):
    """Grouping by module path gives memfit's own components, exactly, on every preset."""
    counts = count_params(entry.spec)
    got = generic_params(entry.config, entry.name)
    assert got.total_params == counts.total
    assert got.active_params == counts.active
    assert dict(got.components) == {k: v for k, v in counts.as_dict().items() if v}


# Popular model types memfit has no analytical model of: every parameter lands in a named
# component (no "other"), and the class is the one transformers builds for the head.
GENERIC_TYPES = {
    "bert": "BertForMaskedLM", "modernbert": "ModernBertForMaskedLM",
    "roberta": "RobertaForMaskedLM", "mamba": "MambaForCausalLM",
    "mamba2": "Mamba2ForCausalLM", "jamba": "JambaForCausalLM",
    "falcon_h1": "FalconH1ForCausalLM", "qwen3_next": "Qwen3NextForCausalLM",
    "llava": "LlavaForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "gemma3": "Gemma3ForConditionalGeneration", "starcoder2": "Starcoder2ForCausalLM",
    "gpt_bigcode": "GPTBigCodeForCausalLM", "falcon": "FalconForCausalLM",
    "cohere": "CohereForCausalLM", "cohere2": "Cohere2ForCausalLM",
    "granite": "GraniteForCausalLM", "granitemoe": "GraniteMoeForCausalLM",
    "phimoe": "PhimoeForCausalLM", "llama4": "Llama4ForConditionalGeneration",
    "glm4": "Glm4ForCausalLM", "glm4_moe": "Glm4MoeForCausalLM", "t5": "T5ForConditionalGeneration",
    "bart": "BartForConditionalGeneration", "opt": "OPTForCausalLM", "gptj": "GPTJForCausalLM",
    "phi": "PhiForCausalLM", "stablelm": "StableLmForCausalLM", "olmoe": "OlmoeForCausalLM",
    "mpt": "MptForCausalLM", "recurrent_gemma": "RecurrentGemmaForCausalLM",
    "exaone4": "Exaone4ForCausalLM",
}


@pytest.mark.parametrize("model_type", sorted(GENERIC_TYPES))
def test_params_any_model_type(model_type):
    import torch
    import transformers

    got = generic_params({"model_type": model_type}, model_type)
    assert got.model_class == GENERIC_TYPES[model_type]
    assert "other" not in got.components, got.components
    # independent: transformers' own count of the same class
    cls = getattr(transformers, got.model_class)
    with torch.device("meta"):
        model = cls._from_config(transformers.AutoConfig.for_model(model_type))
    assert got.total_params == model.num_parameters() == sum(got.components.values())
    assert got.buffer_elements == sum(b.numel() for b in model.buffers())
    assert got.active_params <= got.total_params
    assert "meta device" in got.notes[0] and model_type in got.notes[0]


def test_moe_active_params_follow_routing():
    got = generic_params({"model_type": "phimoe"}, "phimoe")  # 16 experts, top 2
    experts = got.components["experts"]
    assert got.active_params == got.total_params - experts + experts * 2 // 16


_SLOW = pytest.mark.slow
EXTRAPOLATION_CASES = [("llama", "infer")] + [
    pytest.param(n, w, marks=_SLOW) for n in ("llama", "qwen2", "mixtral", "gemma3_text")
    for w in ("infer", "train") if (n, w) != ("llama", "infer")]


@pytest.mark.parametrize(("name", "workload"), EXTRAPOLATION_CASES)
def test_extrapolation_equals_full_depth_trace(name, workload):
    """Reduced-depth traces extrapolated == the tracer at full depth, to the byte."""
    cfg = _deep(name, 14)
    if workload == "infer":
        got, full = generic_infer(cfg, INFER, name), trace_inference(cfg, INFER)
    else:
        got, full = generic_train(cfg, TRAIN, name), trace_training(cfg, TRAIN)
    assert got.extrapolated and max(got.traced_depths) < 14
    assert got.peak_bytes == full.peak_bytes
    assert dict(got.components) == dict(full.components)
    assert got.peak_phase == full.peak_phase


@pytest.mark.parametrize("name", [pytest.param(n, marks=_SLOW)
                                  for n in ("llama", "qwen2", "mixtral")])
def test_generic_matches_analytical(name):
    """On hand-written families, generic == analytical within 0.5%."""
    import memfit

    cfg = _deep(name)
    for got, est in ((generic_infer(cfg, INFER), memfit.infer(cfg, **vars(INFER))),
                     (generic_train(cfg, TRAIN), memfit.train(cfg, **vars(TRAIN)))):
        assert abs(got.peak_bytes - est.peak_bytes) <= 0.005 * est.peak_bytes


def test_repeat_is_cached_and_needs_no_tracer(monkeypatch):
    cfg = _deep("llama", 8)
    first = generic_train(cfg, TRAIN, "m")
    assert not first.cached
    import memfit.generic.estimate as est

    def boom(*args, **kwargs):
        raise AssertionError("traced again")

    monkeypatch.setattr(est, "_trace", boom)
    again = generic_train(cfg, TRAIN, "m")
    assert again.cached and again.peak_bytes == first.peak_bytes
    assert dict(again.components) == dict(first.components)
    other = dataclasses.replace(TRAIN, batch=3)  # other options: a different key
    with pytest.raises(AssertionError, match="traced again"):
        generic_train(cfg, other, "m")


def test_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(cache, "MAX_ENTRIES", 3)
    for i in range(5):
        cache.put(cache.key_of("x", i), {"i": i})
    assert len(list(cache.cache_dir().glob("*.json"))) == 3


def test_report_says_traced_with_model_type():
    got = generic_infer(_deep("llama", 8), INFER, "m")
    d = got.to_dict()
    assert d["method"] == "traced-extrapolated" and d["model_type"] == "llama"
    assert sum(d["components"].values()) == d["peak_bytes"]
    assert d["total_bytes"] > d["peak_bytes"]
    assert "derived by tracing" in d["notes"][0] and "'llama'" in d["notes"][0]
    assert "derived by tracing" in got.render()


@pytest.fixture
def bert_dir(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_size": 64,
        "num_hidden_layers": 6, "num_attention_heads": 4, "intermediate_size": 128,
        "vocab_size": 500, "max_position_embeddings": 128}))
    return folder


def test_cli_params_falls_back(bert_dir, capsys):
    assert main(["params", str(bert_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model_type"] == "bert" and out["method"] == "transformers-meta-device"
    assert out["total_params"] == sum(out["components"].values())


def test_cli_train_falls_back_and_infer_refuses_an_encoder(bert_dir, capsys):
    assert main(["train", str(bert_dir), "--seq", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model_type"] == "bert" and out["method"].startswith("traced")
    assert main(["infer", str(bert_dir)]) == 2
    assert "generates" in capsys.readouterr().err


def test_without_trace_extra_one_clear_line(bert_dir, monkeypatch, capsys):
    import memfit.generic as generic

    monkeypatch.setattr(generic, "available", lambda: False)
    assert main(["params", str(bert_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'bert'" in err and 'pip install -e ".[trace]"' in err
    with pytest.raises(MemfitError, match="trace"):
        generic.generic_params({"model_type": "bert"})


def test_known_family_errors_are_not_swallowed(tmp_path, capsys):
    bad = dict(FAMILY_CONFIGS["llama"], hidden_size=-1)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(bad))
    assert main(["params", str(path)]) == 2
    assert "hidden_size" in capsys.readouterr().err


def test_import_memfit_does_not_import_torch():
    import subprocess

    code = "import memfit, memfit.generic, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(("model_type", "kinds"), [
    ("gemma3", 2), ("llama4", 2), ("mllama", 2), ("qwen3_next", 2), ("mamba", 1)])
def test_plans_reduce_mixed_block_patterns(model_type, kinds):
    """Interleaved block kinds (sliding/full, MoE/dense, cross-attention, linear attention)
    are reproduced by reduced configs (each checked on the meta device by make_plan)."""
    from memfit.generic.depth import make_plan

    plan = make_plan({"model_type": model_type})
    assert plan.reduced and len(plan.counts) == kinds
    assert sum(plan.counts.values()) == plan.num_layers
    assert all(len(idx) < plan.num_layers // 2 for idx in plan.runs.values())


def test_unreproducible_pattern_traces_full_depth():
    from memfit.generic.depth import make_plan

    plan = make_plan({"model_type": "jamba"})  # attn_layer_period / expert_layer_period
    assert not plan.reduced and plan.runs == {"full": None}


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["llava", "mamba", "falcon_h1"])
def test_other_model_types_equal_full_depth_trace(model_type):
    """A VLM (text-only), a state-space model, a hybrid: generic == full-depth trace."""
    from memfit.generic.estimate import _trace

    cfg = {"model_type": model_type}
    options = InferenceOptions(batch=1, prompt=16, generate=2)
    got = generic_infer(cfg, options, model_type)
    full = _trace(cfg, None, options, "infer")
    assert got.extrapolated
    assert got.peak_bytes == full["peak"] and dict(got.components) == full["components"]


# -- hostile input: every transformers/torch failure is one line naming the field ----------

_BERT = {"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100}


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"use_cache": "yes"}, "use_cache", "expected bool"),  # transformers' strict validation
    ({"hidden_act": "nosuch"}, "hidden_act", "no such value"),  # a KeyError at build
    ({"num_attention_heads": 7}, "model", "not a multiple"),  # the model's own check
])
def test_transformers_failures_are_one_line(change, field, words):
    with pytest.raises(MemfitError) as info:
        generic_params({**_BERT, **change})
    assert info.value.field == field and words in str(info.value)
    assert "\n" not in str(info.value)


def test_trace_failures_and_deadline_are_one_line(monkeypatch):
    import memfit.trace as tracer
    from memfit.generic import bounds, estimate

    def broken(config, options):
        raise RuntimeError("an op the tracer cannot run")

    monkeypatch.setattr(tracer, "trace_training", broken)
    with pytest.raises(MemfitError, match="a model the tracer runs .*RuntimeError"):
        generic_train(_BERT, TRAIN)
    monkeypatch.setattr(estimate, "MAX_FULL_TRACE_BLOCKS", 1)  # a 2-block BERT: traced whole
    with pytest.raises(MemfitError, match="full-depth trace") as info:
        generic_train(_BERT, TRAIN)
    assert info.value.field == "num_hidden_layers"

    def slow(config, options):
        import time

        time.sleep(5)

    monkeypatch.setattr(tracer, "trace_training", slow)
    monkeypatch.setattr(estimate, "MAX_FULL_TRACE_BLOCKS", 256)
    monkeypatch.setenv("MEMFIT_GENERIC_TIMEOUT_S", "0.5")
    with pytest.raises(MemfitError, match="gave up after 0.5 s"):
        generic_train(_BERT, TRAIN)
    assert bounds.signal.getitimer(bounds.signal.ITIMER_REAL)[0] == 0  # the alarm is cleared


def test_meta_parameter_total_is_capped(monkeypatch):
    from memfit.generic import bounds

    monkeypatch.setattr(bounds, "MAX_PARAMS", 1000)
    with pytest.raises(MemfitError, match="roughly, from the config"):
        generic_params(_BERT)
    monkeypatch.setattr(bounds, "_rough_params", lambda fields, blocks: 0)
    with pytest.raises(MemfitError, match="counted on the meta device"):
        generic_params(_BERT)


def test_cli_trace_falls_back_and_fit_says_what_works(bert_dir, capsys):
    assert main(["trace", str(bert_dir), "train", "--seq", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model_type"] == "bert" and out["peak_bytes"] == sum(out["components"].values())
    assert "full depth" in out["notes"][0]
    assert main(["fit", str(bert_dir), "infer", "--gpu", "h100"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'bert'" in err and "memfit params" in err


@pytest.mark.slow
def test_bounds_pass_every_default_config_transformers_knows():
    """No false refusal: every model type's default config (829 in transformers 5.25) and
    every catalog entry pass the generic path's pre-build bounds."""
    import warnings

    import transformers

    from memfit.generic.bounds import check_config, known_model_type
    from memfit.trace.build import quiet_transformers

    refused = {}
    with warnings.catch_warnings(), quiet_transformers():
        warnings.simplefilter("ignore")
        for model_type in sorted(transformers.CONFIG_MAPPING.keys()):
            try:
                cfg = transformers.AutoConfig.for_model(model_type).to_dict()
            except Exception:  # noqa: BLE001 - a type transformers cannot default: not ours
                continue
            try:
                check_config(cfg)
                assert known_model_type(cfg.get("model_type", model_type))
            except (MemfitError, AssertionError) as exc:
                refused[model_type] = str(exc)[:120]
    for entry in all_entries():
        check_config(entry.config)
    assert not refused, refused
