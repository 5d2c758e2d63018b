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
    ('{"model_type": "bert"}', "model_type"),
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
