"""Every name of ``shared/CONTRACT.md`` (first and second round), as scripts call them.

Each case is one set of options, given both ways: as CLI flags (``memfit infer|train MODEL
--flag value --json``) and as the Python API's keyword arguments (the same names with
underscores); both must be accepted and give the same JSON, with the contract's keys and
types. Then the engine extras, ``fit``, ``check``, ``params``, ``--gpu`` spellings and the
one-line errors (exit 2, naming the field).
"""

from __future__ import annotations

import json
import sys
import types
from typing import Any

import pytest

import memfit
from memfit.cli import main
from memfit.workload import InferenceOptions

SMALL = "llama-3.2-1b"
MOE = "granite-3.0-3b-a800m"
FIVE = ("weights", "gradients", "optimizer_states", "activations", "kv_cache")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def flags(options: dict[str, Any]) -> list[str]:
    """The CLI spelling of API options: ``--name-with-dashes value``, a bare flag for True."""
    out: list[str] = []
    for k, v in options.items():
        name = "--" + k.replace("_", "-")
        if v is True:
            out.append(name)
        else:
            out += [name, str(v)]
    return out


def check_schema(data: dict[str, Any]) -> None:
    """The contract's JSON: peak/total ints, components summing to peak with the five
    always-present keys, fits a bool or null (null exactly without a GPU)."""
    assert type(data["peak_bytes"]) is int and type(data["total_bytes"]) is int
    assert data["total_bytes"] >= data["peak_bytes"] > 0
    comps = data["components"]
    assert all(type(v) is int for v in comps.values())
    assert sum(comps.values()) == data["peak_bytes"]
    assert set(FIVE) <= set(comps)
    assert data["fits"] is None or type(data["fits"]) is bool
    assert (data["fits"] is None) == (data.get("gpu") is None)


def both_ways(capsys, mode: str, model: str, options: dict[str, Any]) -> dict[str, Any]:
    code, out, err = run(capsys, mode, model, *flags(options), "--json")
    assert code == 0, err
    data = json.loads(out)
    check_schema(data)
    api = getattr(memfit, mode)(model, **options)
    assert api.peak_bytes == data["peak_bytes"] and api.total_bytes == data["total_bytes"]
    assert dict(api.components) == data["components"]
    assert json.loads(json.dumps(api.to_dict())) == data
    return data


INFER_CASES: list[tuple[str, dict[str, Any]]] = [
    (SMALL, {}),
    (SMALL, {"batch": 2, "prompt": 64, "generate": 8}),
    (SMALL, {"generate": 0}),
    *[(SMALL, {"weights": w}) for w in ("bf16", "fp16", "fp32", "int8", "fp8-e4m3",
                                         "bnb-nf4", "awq-int4-g128")],
    (SMALL, {"kv_dtype": "fp8-e4m3"}),
    (SMALL, {"attn": "eager"}), (SMALL, {"attn": "sdpa"}),
    (SMALL, {"logits": "all"}), (SMALL, {"logits": "last"}),
    (SMALL, {"engine": "hf"}),
    (SMALL, {"tp": 2}), (SMALL, {"pp": 2}), (MOE, {"ep": 2}),
    (SMALL, {"gpu": "h100"}), (SMALL, {"gpu": "24GiB"}), (SMALL, {"gpu": "80GB"}),
    (SMALL, {"gpu": "24564MiB"}),
    # vLLM
    (SMALL, {"engine": "vllm", "gpu": "h100"}),
    (SMALL, {"engine": "vllm", "gpu": "h100", "max_model_len": 4096, "max_num_seqs": 64,
             "max_num_batched_tokens": 4096, "gpu_memory_utilization": 0.8}),
    (SMALL, {"engine": "vllm", "gpu": "h100", "enforce_eager": True}),
    *[(SMALL, {"engine": "vllm", "gpu": "h100", "vllm_version": v})
      for v in ("0.10.1", "0.11.0", "0.12", "0.21", "0.21.0", "0.9.2")],
    (SMALL, {"engine": "vllm", "gpu": "l4", "tp": 2}),
    # SGLang
    (SMALL, {"engine": "sglang", "gpu": "h100"}),
    (SMALL, {"engine": "sglang", "gpu": "h100", "mem_fraction_static": 0.8,
             "context_length": 4096, "max_running_requests": 16}),
    # llama.cpp
    (SMALL, {"engine": "llamacpp"}),
    (SMALL, {"engine": "llamacpp", "weights": "q4_k", "gpu": "rtx-4090"}),
    (SMALL, {"engine": "llamacpp", "ctx_size": 8192}),
    (SMALL, {"engine": "llamacpp", "ctx_size": 0}),
    *[(SMALL, {"engine": "llamacpp", "flash_attn": f}) for f in ("on", "off", "auto")],
    (SMALL, {"engine": "llamacpp", "ubatch_size": 256, "batch_size": 1024}),
    (SMALL, {"engine": "llamacpp", "flash_attn": "on", "cache_type_k": "q8_0",
             "cache_type_v": "q8_0"}),
    (MOE, {"engine": "llamacpp", "n_cpu_moe": 2}),
    (SMALL, {"engine": "llamacpp", "split_mode": "layer", "tensor_split": "3,1"}),
    (SMALL, {"engine": "llamacpp", "split_mode": "none"}),
    # Ollama
    (SMALL, {"engine": "ollama"}),
    (SMALL, {"engine": "ollama", "gpu": "rtx-4090"}),
]


@pytest.mark.parametrize("model, options", INFER_CASES,
                         ids=[json.dumps(o, sort_keys=True) for _, o in INFER_CASES])
def test_infer_names(capsys, model: str, options: dict[str, Any]) -> None:
    both_ways(capsys, "infer", model, options)


TRAIN_CASES: list[tuple[str, dict[str, Any]]] = [
    (SMALL, {}),
    (SMALL, {"batch": 2, "seq": 512}),
    *[(SMALL, {"precision": p}) for p in ("fp32", "bf16-true", "fp16-true", "bf16-mixed",
                                          "fp16-mixed", "bf16-master")],
    *[(SMALL, {"optimizer": o}) for o in ("adamw", "adamw-8bit", "sgd", "sgd-momentum",
                                          "adafactor", "lion", "paged-adamw",
                                          "paged-adamw-8bit")],
    *[(SMALL, {"optimizer_impl": i}) for i in ("foreach", "fused", "forloop")],
    *[(SMALL, {"checkpointing": c}) for c in ("none", "full", "selective", "op-selective")],
    (SMALL, {"checkpointing": "full", "checkpoint_every": 2}),
    (SMALL, {"attn": "eager"}),
    *[(SMALL, {"dp": 2, "zero": z}) for z in (0, 1, 2, 3)],
    *[(SMALL, {"dp": 2, "fsdp": f}) for f in ("full", "grad-op", "hybrid")],
    *[(SMALL, {"dp": 2, "fsdp": "full", "fsdp_version": v, "precision": "bf16-true"})
      for v in (1, 2)],
    (SMALL, {"tp": 2}), (SMALL, {"tp": 2, "sp": True}),
    (SMALL, {"pp": 2, "microbatches": 4}), (SMALL, {"microbatches": 4}),
    (SMALL, {"cp": 2}), (MOE, {"ep": 2, "dp": 2}),
    (SMALL, {"lora_rank": 8}), (SMALL, {"qlora": True}),
    (SMALL, {"qlora": True, "no_kbit_prepare": True}),
    *[(SMALL, {"lora_rank": 8, "lora_targets": t}) for t in (
        "all-linear", "attention", "mlp", "peft-default", "q_proj,v_proj")],
    (SMALL, {"lora_rank": 8, "lora_dropout": 0.1}),
    *[(SMALL, {"lora_rank": 8, "lora_dtype": d}) for d in ("fp32", "bf16", "fp16")],
    (SMALL, {"lora_rank": 8, "dora": True}),
    *[(MOE, {"lora_rank": 8, "transformers": v}) for v in (4, 5)],
    *[(SMALL, {"loss": x}) for x in ("hf", "chunked", "liger")],
    (SMALL, {"loss": "cce", "precision": "bf16-true"}),  # CCE's backward is 16-bit only
    (SMALL, {"loss": "chunked", "loss_chunks": 4}),
    (SMALL, {"checkpointing": "full", "activation_offload": True}),
    (SMALL, {"optimizer_in_backward": True}),
    *[(SMALL, {"dp": 2, "zero": 3, "offload": o}) for o in ("none", "optimizer", "params")],
    (SMALL, {"gpu": "h100"}), (SMALL, {"gpu": "24GiB"}),
]


@pytest.mark.parametrize("model, options", TRAIN_CASES,
                         ids=[json.dumps(o, sort_keys=True) for _, o in TRAIN_CASES])
def test_train_names(capsys, model: str, options: dict[str, Any]) -> None:
    both_ways(capsys, "train", model, options)


def test_the_defaults_are_the_contracts() -> None:
    i = memfit.infer(SMALL).to_dict()["options"]
    assert (i["batch"], i["engine"], i["attn"], i["logits"]) == (1, "hf", "sdpa", "last")
    t = memfit.train(SMALL).to_dict()["options"]
    assert (t["precision"], t["optimizer"], t["optimizer_impl"], t["checkpointing"]) == (
        "bf16-mixed", "adamw", "foreach", "none")
    assert t["lora_targets"] == "all-linear"


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_explain(capsys, mode: str) -> None:
    code, out, err = run(capsys, mode, SMALL, "--explain")
    assert code == 0 and out.strip(), err


# ---------------------------------------------------------------------------------------------
# engine extras
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("engine", ["vllm", "sglang"])
@pytest.mark.parametrize("gpu", ["h100", "l4", "8GiB"])
def test_serving_engine_extras(capsys, engine: str, gpu: str) -> None:
    data = both_ways(capsys, "infer", SMALL, {"engine": engine, "gpu": gpu})
    x = data["extras"]
    assert type(x["starts"]) is bool and data["fits"] == x["starts"]
    assert type(x["max_model_len"]) is int
    for key in ("kv_cache_tokens", "max_concurrency", "cuda_graph_bytes", "non_torch_bytes"):
        assert key in x and (x[key] is None or isinstance(x[key], (int, float))), key
    if engine == "vllm":
        assert "kv_cache_blocks" in x
        assert x["kv_cache_blocks"] is None or type(x["kv_cache_blocks"]) is int
    if x["starts"]:
        assert type(x["kv_cache_tokens"]) is int and x["kv_cache_tokens"] > 0


def test_serving_engine_extras_without_gpu() -> None:
    for engine in ("vllm", "sglang"):
        d = memfit.infer(SMALL, engine=engine).to_dict()
        assert d["fits"] is None and "max_model_len" in d["extras"]


@pytest.mark.parametrize("engine", ["llamacpp", "ollama"])
def test_llamacpp_extras(engine: str) -> None:
    x = memfit.infer(SMALL, engine=engine, gpu="rtx-4090").to_dict()["extras"]
    for key in ("gpu_weights_mib", "kv_cache_mib", "compute_buffer_mib"):
        assert isinstance(x[key], (int, float)) and x[key] >= 0, key
    assert x["kv_cache_mib"] > 0 and x["gpu_weights_mib"] > 0


def test_vllm_three_part_versions_map_to_the_modelled_accounting() -> None:
    def run_(v: str) -> Any:
        return memfit.infer(SMALL, engine="vllm", gpu="h100", vllm_version=v)

    old, new = run_("0.12"), run_("0.21")
    for v, like in (("0.10.1", old), ("0.9.2", old), ("0.11.0", old), ("0.21.0", new),
                    ("0.21.3", new), ("1.0.0", new)):
        e = run_(v)
        assert e.extras["kv_cache_tokens"] == like.extras["kv_cache_tokens"], v
        assert e.to_dict()["options"]["vllm_version"] == v
        stated = json.dumps(e.to_dict()["assumptions"])
        assert v in stated and ("0.12" in stated or "0.21" in stated)


# ---------------------------------------------------------------------------------------------
# fit, check, params, models
# ---------------------------------------------------------------------------------------------

def test_fit_train_json(capsys) -> None:
    code, out, err = run(capsys, "fit", SMALL, "train", "--gpu", "h100", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert "min_gpus" in d and (d["min_gpus"] is None or type(d["min_gpus"]) is int)
    assert "max_batch" in d and isinstance(d["layouts"], list)


def test_fit_train_min_gpus_is_an_int_when_one_gpu_is_too_small(capsys) -> None:
    code, out, err = run(capsys, "fit", "llama-3.1-8b", "train", "--gpu", "l4", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert "min_gpus" in d and (d["min_gpus"] is None or type(d["min_gpus"]) is int)


@pytest.mark.parametrize("order", [["fit", SMALL, "infer"], ["fit", "infer", SMALL]])
def test_fit_infer_json(capsys, order: list[str]) -> None:
    code, out, err = run(capsys, *order, "--gpu", "h100", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert "max_batch" in d and "fits" in d


def test_fit_gpus(capsys) -> None:
    code, out, err = run(capsys, "fit", "llama-3.1-8b", "train", "--gpu", "h100", "--gpus", "8",
                         "--json")
    assert code == 0, err
    assert "min_gpus" in json.loads(out)


def _equivalent(data: dict[str, Any]) -> dict[str, Any]:
    """The check's options that differ from the defaults: the equivalent API call."""
    defaults = (InferenceOptions() if data["mode"] == "infer" else None)
    if defaults is None:
        from memfit.workload import TrainingOptions
        defaults = TrainingOptions()
    return {k: v for k, v in data["options"].items() if getattr(defaults, k) != v}


@pytest.mark.parametrize("argv", [
    ["--model", SMALL, "--gpu", "h100", "--", "vllm", "serve", "meta-llama/Llama-3.2-1B",
     "--max-model-len", "4096", "--max-num-seqs", "32"],
    ["--model", SMALL, "--gpu", "rtx-4090", "--", "llama-server", "-m", "x.gguf", "-c", "4096",
     "-ngl", "99", "-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0"],
    ["--model", SMALL, "--gpu", "h100", "--", "python", "-m", "sglang.launch_server",
     "--model-path", "meta-llama/Llama-3.2-1B", "--mem-fraction-static", "0.8"],
])
def test_check_json_is_the_equivalent_call(capsys, argv: list[str]) -> None:
    code, out, err = run(capsys, "check", "--json", *argv)
    assert code == 0, err
    d = json.loads(out)
    check_schema(d)
    assert isinstance(d["understood"], list) and isinstance(d["ignored"], list)
    assert d["understood"]
    same = getattr(memfit, d["mode"])(d["model"], **_equivalent(d)).to_dict()
    for key in ("peak_bytes", "total_bytes", "components", "fits"):
        assert same[key] == d[key], key
    if d["options"]["engine"] == "llamacpp":  # -c is llama.cpp's window: 4096 KV cells
        assert d["extras"]["n_ctx"] == 4096


def test_check_json_training_file(capsys, tmp_path) -> None:
    cfg = tmp_path / "ds_config.json"
    cfg.write_text(json.dumps({"train_micro_batch_size_per_gpu": 2,
                               "zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}))
    code, out, err = run(capsys, "check", str(cfg), "--model", SMALL, "--dp", "4", "--json")
    assert code == 0, err
    d = json.loads(out)
    check_schema(d)
    assert d["mode"] == "train" and d["options"]["zero"] == 2 and d["options"]["dp"] == 4
    same = memfit.train(d["model"], **_equivalent(d)).to_dict()
    assert (same["peak_bytes"], same["total_bytes"]) == (d["peak_bytes"], d["total_bytes"])
    assert "understood" in d and "ignored" in d


def test_params_json(capsys) -> None:
    code, out, _ = run(capsys, "params", SMALL, "--json")
    d = json.loads(out)
    assert code == 0 and type(d["total_params"]) is int and type(d["active_params"]) is int
    assert all(type(v) is int for v in d["components"].values())
    p = memfit.params(SMALL)
    assert p.total_params == d["total_params"]
    code, out, _ = run(capsys, "params", MOE, "--json")
    moe = json.loads(out)
    assert moe["active_params"] < moe["total_params"]


def test_models_json_and_family(capsys) -> None:
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0 and isinstance(json.loads(out), list)
    code, out, _ = run(capsys, "models", "--family", "llama", "--json")
    assert code == 0 and all("llama" in m["family"].lower() for m in json.loads(out))


def test_model_by_name_case_path_and_folder(capsys, tmp_path) -> None:
    from memfit.catalog import get_entry

    base = memfit.infer(SMALL).peak_bytes
    assert memfit.infer(SMALL.upper()).peak_bytes == base
    (tmp_path / "config.json").write_text(json.dumps(dict(get_entry(SMALL).config)))
    assert memfit.infer(str(tmp_path)).peak_bytes == base
    code, out, err = run(capsys, "infer", tmp_path / "config.json", "--json")
    assert code == 0 and json.loads(out)["peak_bytes"] == base, err
    code, _, err = run(capsys, "infer", "llama-3.2-1bb")
    assert code == 2 and "llama-3.2-1b" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# --gpu spellings, auto
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gpu, nbytes", [("24GiB", 24 * 2**30), ("80GB", 80 * 10**9),
                                         ("24564MiB", 24564 * 2**20)])
def test_gpu_capacity(capsys, gpu: str, nbytes: int) -> None:
    d = both_ways(capsys, "infer", SMALL, {"gpu": gpu})
    assert d["gpu_memory_bytes"] == nbytes and d["fits"] is True


def test_gpu_auto_without_nvidia_ml_py(capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    code, _, err = run(capsys, "infer", SMALL, "--gpu", "auto")
    assert code == 2 and "gpu" in err and len(err.strip().splitlines()) == 1


def test_gpu_auto_without_a_gpu(capsys, monkeypatch) -> None:
    fake = types.ModuleType("pynvml")

    def no_driver() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    fake.nvmlInit = no_driver  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    code, _, err = run(capsys, "infer", SMALL, "--gpu", "auto")
    assert code == 2 and "gpu" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "train", SMALL, "--gpu", "auto")
    assert code == 2 and "gpu" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# errors: exit 2, one line naming the field
# ---------------------------------------------------------------------------------------------

ERRORS = [
    (["infer", SMALL, "--batch", "0"], "batch"),
    (["infer", SMALL, "--prompt", "-3"], "prompt"),
    (["infer", SMALL, "--weights", "int3"], "weights"),
    (["infer", SMALL, "--kv-dtype", "int3"], "kv"),
    (["infer", SMALL, "--attn", "flash"], "attn"),
    (["infer", SMALL, "--logits", "some"], "logits"),
    (["infer", SMALL, "--engine", "tensorrt"], "engine"),
    (["infer", SMALL, "--gpu", "h1000"], "gpu"),
    (["infer", SMALL, "--gpu", "0GiB"], "gpu"),
    (["infer", SMALL, "--engine", "vllm", "--vllm-version", "banana"], "vllm-version"),
    (["infer", SMALL, "--engine", "vllm", "--gpu-memory-utilization", "1.5"],
     "gpu-memory-utilization"),
    (["infer", SMALL, "--max-model-len", "4096"], "max-model-len"),
    (["infer", SMALL, "--engine", "sglang", "--mem-fraction-static", "0"],
     "mem-fraction-static"),
    (["infer", SMALL, "--engine", "llamacpp", "--split-mode", "row"], "split-mode"),
    (["infer", SMALL, "--engine", "llamacpp", "--split-mode", "rows"], "split-mode"),
    (["infer", SMALL, "--engine", "llamacpp", "--ctx-size", "-1"], "ctx-size"),
    (["infer", SMALL, "--engine", "llamacpp", "--batch-size", "0"], "batch-size"),
    (["infer", SMALL, "--engine", "llamacpp", "--tensor-split", "a,b"], "tensor-split"),
    (["infer", SMALL, "--engine", "llamacpp", "--cache-type-k", "q9"], "cache-type-k"),
    (["infer", SMALL, "--engine", "llamacpp", "--flash-attn", "maybe"], "flash-attn"),
    (["train", SMALL, "--precision", "fp8"], "precision"),
    (["train", SMALL, "--optimizer", "adam9"], "optimizer"),
    (["train", SMALL, "--zero", "4"], "zero"),
    (["train", SMALL, "--fsdp", "half"], "fsdp"),
    (["train", SMALL, "--fsdp-version", "3"], "fsdp-version"),
    (["train", SMALL, "--checkpointing", "some"], "checkpointing"),
    (["train", SMALL, "--loss", "mse"], "loss"),
    (["train", SMALL, "--transformers", "3"], "transformers"),
    (["train", SMALL, "--lora-dtype", "fp8"], "lora-dtype"),
    (["train", SMALL, "--lora-dropout", "1.5"], "lora-dropout"),
    (["train", SMALL, "--offload", "disk"], "offload"),
    (["train", SMALL, "--sp"], "sp"),
    (["train", SMALL, "--lora-rank", "8", "--lora-targets", "nosuch_proj"], "lora-targets"),
]


@pytest.mark.parametrize("argv, field", ERRORS, ids=[" ".join(a[2:]) for a, _ in ERRORS])
def test_errors_exit_2_with_one_line_naming_the_field(capsys, argv: list[str],
                                                      field: str) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and not out
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert field in err, err
    if not argv[-1].startswith("--"):  # the value given, then what is allowed
        assert argv[-1] in err and ("allowed" in err or "only with" in err), err


# ---------------------------------------------------------------------------------------------
# the checkpoint's own format, trace, serve
# ---------------------------------------------------------------------------------------------

def test_without_weights_the_checkpoints_own_format(tmp_path) -> None:
    from memfit.catalog import get_entry

    config = dict(get_entry(SMALL).config)
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128,
                                     "version": "gemm", "zero_point": True}
    (tmp_path / "config.json").write_text(json.dumps(config))
    own = memfit.infer(str(tmp_path))
    assert own.to_dict()["assumptions"]["weights"] == "awq-int4-g128"
    assert own.components["weights"] == memfit.infer(
        SMALL, weights="awq-int4-g128").components["weights"]
    assert own.components["weights"] < memfit.infer(SMALL).components["weights"]


@pytest.mark.slow
@pytest.mark.parametrize("mode, extra", [("infer", ["--prompt", "16", "--generate", "2"]),
                                         ("train", ["--seq", "16"])])
def test_trace_json(capsys, mode: str, extra: list[str]) -> None:
    pytest.importorskip("torch")
    code, out, err = run(capsys, "trace", SMALL, mode, *extra, "--json")
    assert code == 0, err
    check_schema(json.loads(out))


def test_serve_flags(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--host" in out and "--port" in out and "127.0.0.1" in out and "8000" in out
