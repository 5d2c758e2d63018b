"""``memfit compare``: comma lists, the cross product and its bound, the table (golden, on
hand-made estimates), the JSON, and the CLI on live estimates."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from memfit.cli import main
from memfit.compare import (
    MAX_SCENARIOS,
    Scenario,
    compare_json,
    expand,
    parse_values,
    render_compare,
)
from memfit.errors import MemfitError
from memfit.memory.breakdown import Phase
from memfit.workload import InferenceOptions, TrainingOptions
from tests.golden import assert_golden, infer_estimate, train_estimate


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- parsing ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, name, text, want", [
    (TrainingOptions, "zero", "0,1,2,3", [0, 1, 2, 3]),
    (TrainingOptions, "precision", "bf16-mixed,BF16-true,fp32", ["bf16-mixed", "bf16-true",
                                                                 "fp32"]),
    (TrainingOptions, "lora_rank", "none,16,64", [None, 16, 64]),
    (TrainingOptions, "fsdp", "none,full", [None, "full"]),
    (TrainingOptions, "checkpointing", "none,full", ["none", "full"]),  # 'none' is a choice
    (TrainingOptions, "qlora", "false,true", [False, True]),
    (TrainingOptions, "seq", "1024, 2e3, 4096", [1024, 2000, 4096]),
    (InferenceOptions, "batch", "1,4,4,16", [1, 4, 16]),  # duplicates dropped
    (InferenceOptions, "gpu_memory_utilization", "0.8,0.9", [0.8, 0.9]),
    (InferenceOptions, "weights", "none,int8,q4_k_m", [None, "int8", "q4_k_m"]),
])
def test_parse_values(cls, name: str, text: str, want: list) -> None:
    assert parse_values(cls, name, text) == want


@pytest.mark.parametrize("cls, name, text, needle", [
    (TrainingOptions, "zero", "0,4", "--zero: got '4'; allowed: 0, 1, 2, 3"),
    (TrainingOptions, "precision", "bf16", "allowed: fp32, bf16-true"),
    (TrainingOptions, "batch", "1,x", "--batch: got 'x'; allowed: an integer"),
    (TrainingOptions, "batch", "1,,2", "without empty items"),
    (TrainingOptions, "qlora", "maybe", "true or false"),
    (TrainingOptions, "fsdp", "sideways", "none"),
])
def test_parse_values_errors(cls, name: str, text: str, needle: str) -> None:
    with pytest.raises(MemfitError) as err:
        parse_values(cls, name, text)
    assert needle in str(err.value)


def test_expand_is_a_cross_product_in_the_order_given() -> None:
    got = expand("a,b", "train", {"zero": [0, 3], "dp": [8]})
    assert [(s.model, s.options["zero"]) for s in got] == [("a", 0), ("a", 3), ("b", 0),
                                                           ("b", 3)]
    assert all(s.options["dp"] == 8 for s in got)
    assert dict(got[1].varied) == {"model": "a", "zero": 3}  # dp=8 is common, not varied
    assert got[1].label == "a, zero=3"
    assert expand("a", "infer", {})[0].label == "a"


def test_expand_bounds_the_product() -> None:
    lists = {"batch": list(range(1, 9)), "seq": list(range(1, 10))}
    with pytest.raises(MemfitError) as err:
        expand("m", "train", lists)
    msg = str(err.value)
    assert "8 batch x 9 seq = 72 scenarios" in msg and f"at most {MAX_SCENARIOS}" in msg


def test_unknown_mode() -> None:
    with pytest.raises(MemfitError, match="mode"):
        expand("m", "serve", {})


# -- the table and the JSON (golden, hand-made estimates) ------------------------------------

def _results():
    base = train_estimate()
    true16 = replace(base, options={**base.options, "precision": "bf16-true"},
                     phases=tuple(Phase(p.name, {k: v // 2 for k, v in p.components.items()})
                                  for p in base.phases))
    s1 = Scenario("llama-2-7b", "train", {"precision": "bf16-mixed", "gpu": "h100-sxm"},
                  {"precision": "bf16-mixed"})
    s2 = Scenario("llama-2-7b", "train", {"precision": "bf16-true", "gpu": "h100-sxm"},
                  {"precision": "bf16-true"})
    return [(s1, base), (s2, true16)]


def test_compare_table_golden() -> None:
    assert_golden("compare_train.txt", render_compare(_results()))
    a = infer_estimate(gpu=False)
    b = replace(a, model="other-model", phases=tuple(
        Phase(p.name, {**p.components, "kv_cache": p.components.get("kv_cache", 0) * 2})
        for p in a.phases))
    rows = [(Scenario("llama-2-7b", "infer", {}, {"model": "llama-2-7b"}), a),
            (Scenario("other-model", "infer", {}, {"model": "other-model"}), b)]
    assert_golden("compare_models_MiB.txt", render_compare(rows, "MiB"))


def test_compare_json_has_the_contract_and_what_varied() -> None:
    data = compare_json(_results())
    assert [d["varied"] for d in data] == [{"precision": "bf16-mixed"},
                                           {"precision": "bf16-true"}]
    for d in data:
        for key in ("peak_bytes", "total_bytes", "components", "fits", "scenario"):
            assert key in d
        assert sum(d["components"].values()) == d["peak_bytes"]
    json.dumps(data)


def test_ratio_column_is_relative_to_the_first_row() -> None:
    text = render_compare(_results())
    lines = text.splitlines()
    assert "1.00x" in lines[5] and "0.55x" in lines[6]


# -- the CLI on live estimates ------------------------------------------------------------------

def test_cli_compare_precisions(capsys) -> None:
    code, out, err = run(capsys, "compare", "llama-3.1-8b", "train", "--precision",
                         "bf16-mixed,bf16-true,fp32", "--gpu", "h100")
    assert code == 0, err
    assert "precision" in out and "bf16-true" in out and "fits" in out and "in GiB" in out
    code, out, _ = run(capsys, "compare", "llama-3.1-8b", "train", "--precision",
                       "bf16-mixed,bf16-true", "--json")
    data = json.loads(out)
    assert [d["varied"]["precision"] for d in data] == ["bf16-mixed", "bf16-true"]
    assert data[1]["peak_bytes"] < data[0]["peak_bytes"]


def test_cli_compare_models_and_batches(capsys) -> None:
    code, out, err = run(capsys, "compare", "llama-3.1-8b,qwen2.5-7b", "infer", "--prompt",
                         "8192", "--batch", "1,4", "--units", "GB")
    assert code == 0, err
    assert out.count("qwen2.5-7b") >= 2 and "in GB" in out and "batch" in out


def test_cli_compare_gpus(capsys) -> None:
    code, out, err = run(capsys, "compare", "llama-3.1-8b", "infer", "--gpu", "h100,t4",
                         "--prompt", "8192")
    assert code == 0, err
    assert "usable" in out and "h100-sxm" in out and "NO" in out and "yes" in out


def test_cli_compare_errors_are_one_line(capsys) -> None:
    code, _, err = run(capsys, "compare", "llama-3.1-8b", "train", "--zero", "0,5")
    assert code == 2 and "--zero" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "compare", "llama-3.1-8b", "train", "--batch",
                       ",".join(map(str, range(1, 9))), "--seq", ",".join(map(str, range(
                           100, 1000, 100))))
    assert code == 2 and "scenarios" in err
    # an impossible combination names its scenario
    code, _, err = run(capsys, "compare", "llama-3.1-8b", "train", "--fsdp", "none,full")
    assert code == 2 and "scenario fsdp=full" in err and "Traceback" not in err
    code, _, err = run(capsys, "compare", "no-such-model,llama-3.1-8b", "infer")
    assert code == 2 and "no-such-model" in err
