"""The command line: output schemas, exit codes, one-line errors and a light import."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memfit.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_params_json_schema(capsys) -> None:
    code, out, _ = run(capsys, "params", "llama-3.1-8b", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["total_params"] == 8_030_261_248
    assert isinstance(data["active_params"], int)
    assert sum(data["components"].values()) == data["total_params"]


def test_params_table_and_case_insensitive_name(capsys) -> None:
    code, out, _ = run(capsys, "params", "Llama-3.1-8B")
    assert code == 0
    assert "8,030,261,248" in out and "lm_head" in out


def test_models_lists_catalog(capsys) -> None:
    code, out, _ = run(capsys, "models", "--family", "mixtral", "--json")
    assert code == 0
    rows = json.loads(out)
    assert {r["name"] for r in rows} >= {"mixtral-8x7b", "mixtral-8x22b"}
    assert all(r["active_params"] < r["total_params"] for r in rows)


def test_params_from_file_and_folder(tmp_path: Path, capsys) -> None:
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    for target in (tmp_path, tmp_path / "config.json"):
        code, out, _ = run(capsys, "params", str(target), "--json")
        assert code == 0 and json.loads(out)["total_params"] > 0


@pytest.mark.parametrize("argv, needle", [
    (["params", "llama-3.1-8c"], "did you mean llama-3.1-8b"),
    (["params", "/no/such/config.json"], "/no/such/config.json"),
    (["models", "--family", "bert"], "family"),
    (["params"], "MODEL"),
    (["bogus"], "bogus"),
])
def test_user_errors_exit_2_with_one_line(capsys, argv, needle) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert needle in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"),
    ('{"model_type": "nosuchtype"}', "model_type"),
    ('{"model_type": "llama", "hidden_size": -1, "num_hidden_layers": 2, '
     '"num_attention_heads": 4, "vocab_size": 10, "intermediate_size": 8}', "hidden_size"),
    ("[1, 2]", "JSON object"),
])
def test_bad_config_files(tmp_path: Path, capsys, content: str, needle: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    code, _, err = run(capsys, "params", str(path))
    assert code == 2 and needle in err and "Traceback" not in err


def test_import_is_light_and_cli_is_fast() -> None:
    probe = ("import sys, memfit, memfit.cli; "
             "print(','.join(m for m in ('torch','transformers','numpy','matplotlib') "
             "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "memfit", "params", "llama-3.1-8b"],
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 0.5 * 4  # well under half a second here; slack for a loaded CI machine


# -- the ecosystem's names (issue 18) and help texts (issue 19) --------------------------------

def json_of(capsys, *argv: str) -> dict:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("theirs, ours", [
    (["infer", "llama-3.1-8b", "--engine", "vLLM", "-tp", "2", "--kv-cache-dtype", "fp8"],
     ["infer", "llama-3.1-8b", "--engine", "vllm", "--tp", "2", "--kv-dtype", "fp8"]),
    (["infer", "llama-3.1-8b", "--engine", "vllm", "--tensor-parallel-size", "2",
      "--pipeline-parallel-size", "2"],
     ["infer", "llama-3.1-8b", "--engine", "vllm", "--tp", "2", "--pp", "2"]),
    (["infer", "llama-3.1-8b", "--engine", "llama.cpp", "-ngl", "20", "-fa", "off", "-ub",
      "256", "-ctk", "q8_0", "-ctv", "q8_0"],
     ["infer", "llama-3.1-8b", "--engine", "llamacpp", "--n-gpu-layers", "20", "--flash-attn",
      "off", "--ubatch-size", "256", "--cache-type-k", "q8_0", "--cache-type-v", "q8_0"]),
    (["infer", "meta-llama/Llama-3.1-8B", "--engine", "Transformers"],
     ["infer", "llama-3.1-8b", "--engine", "hf"]),
    (["train", "llama-3.2-1b", "--per-device-train-batch-size", "2",
      "--gradient-accumulation-steps", "4", "--gradient-checkpointing", "--lora-r", "8"],
     ["train", "llama-3.2-1b", "--batch", "2", "--microbatches", "4", "--checkpointing", "full",
      "--lora-rank", "8"]),
    (["train", "llama-3.2-1b", "--per_device_train_batch_size", "2", "--zero-stage", "2",
      "--dp", "2"],
     ["train", "llama-3.2-1b", "--batch", "2", "--zero", "2", "--dp", "2"]),
    (["fit", "train", "llama-3.2-1b", "--gpu", "l4", "--lora-r", "8"],
     ["fit", "llama-3.2-1b", "train", "--gpu", "l4", "--lora-rank", "8"]),
])
def test_aliases_are_the_same_option(capsys, theirs, ours) -> None:
    assert json_of(capsys, *theirs) == json_of(capsys, *ours)


@pytest.mark.parametrize("argv, needle, wrong", [
    (["train", "llama-3.2-1b", "--lora-ra", "8"], "did you mean --lora-r?", None),
    (["infer", "llama-3.2-1b", "--gpu-mem", "8"], "--gpu-mem is not a memfit option; use --gpu",
     None),
    (["train", "llama-3.2-1b", "--n-gpu", "8"], "use --dp", None),
    (["infer", "llama-3.2-1b", "--ctx-size", "8192"], "only with --engine llamacpp",
     "--block-size"),
    (["infer", "llama-3.2-1b", "--seq", "100"], "use --prompt and --generate", "--ep"),
    (["train", "llama-3.2-1b", "--lora-alpha", "16"], "drop it", None),
    (["infer", "llama-3.2-1b", "--engine", "vllm", "--n-gpu-layers", "10"], "n-gpu-layers",
     None),
    (["infer", "llama-3.2-1b", "--engine", "tensorrt"], "engine", None),
])
def test_unknown_and_foreign_options_are_refused_helpfully(capsys, argv, needle, wrong) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    if wrong:
        assert f"did you mean {wrong}" not in err


def help_of(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())  # one line: wrapping does not matter


def test_help_texts(capsys) -> None:
    fit = help_of(capsys, "fit")
    assert "What fits on a GPU" in fit and "examples: memfit fit llama-3.1-8b infer" in fit
    assert "`memfit fit infer MODEL` is read the same way" in fit
    train = help_of(capsys, "train")
    assert "(default: None)" not in train
    assert "--qlora QLoRA: base linears in bitsandbytes NF4 (rank 16 unless --lora-rank)" in train
    assert "--units UNITS units of the printed sizes: B, KiB, MiB, GiB" in train
    assert "--per-device-train-batch-size" in train and "--gradient-checkpointing" in train
    infer = help_of(capsys, "infer")
    assert ".gguf file" in infer and "hf:org/name" in infer and "Hugging Face id" in infer
    assert "--tp TP, --tensor-parallel-size TP, -tp TP" in infer
    check = help_of(capsys, "check")
    assert "memfit check --gpu l4 -- vllm serve" in check


def test_explain_speaks_to_users(capsys) -> None:
    code, out, _ = run(capsys, "infer", "llama-3.2-1b", "--explain")
    assert code == 0
    assert "Back-of-envelope rules of thumb" in out and "shared/seed" not in out
