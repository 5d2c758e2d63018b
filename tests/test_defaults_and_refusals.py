"""Defaults that cannot work adapt and say so; options that cannot apply are refused.

* GPT-2 holds 1,024 learned positions: the default prompt (1,024 + 128 generated) and the
  default training sequence (2,048) shrink to fit, with a note; a length the user gave is
  refused, naming the field, in inference and in training alike.
* An option that belongs to one engine (its help starts "vllm:" or "llamacpp:") is refused
  with another engine, naming the engine it belongs to; llama.cpp is modelled on one GPU, so
  tp/pp/ep > 1 with it are refused.
* Error messages stay one line of plain text whatever a file name holds.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest

import memfit
from memfit import InferenceOptions, MemfitError
from memfit.cli import main
from memfit.errors import one_line
from memfit.workload import ENGINES, _engine_owned

GPT2_POSITIONS = 1024


# -- learned positions ---------------------------------------------------------------------

def test_default_prompt_fits_gpt2_positions_with_a_note() -> None:
    est = memfit.infer("gpt2")
    assert est.options["prompt"] == GPT2_POSITIONS - 128 and est.options["generate"] == 128
    notes = est.assumptions["notes"]
    assert any("prompt 896, not the default 1024" in n and "1024 positions" in n
               for n in notes), notes
    # the same answer as asking for that prompt
    assert est.peak_bytes == memfit.infer("gpt2", prompt=896).peak_bytes


def test_default_prompt_makes_room_for_the_generation_given() -> None:
    est = memfit.infer("gpt2", generate=24)
    assert est.options["prompt"] == 1000


def test_models_without_learned_positions_keep_the_default_prompt() -> None:
    est = memfit.infer("llama-3.2-1b")
    assert est.options["prompt"] == InferenceOptions.prompt == 1024
    assert not any("not the default" in n for n in est.assumptions.get("notes", ()))


@pytest.mark.parametrize("options, field", [
    ({"prompt": 1024}, "prompt"),               # the default's size, given: refused
    ({"prompt": 1000, "generate": 100}, "prompt"),
    ({"generate": 1024}, "generate"),           # no prompt can fit
])
def test_lengths_the_user_gave_past_the_positions_are_refused(options: dict[str, Any],
                                                               field: str) -> None:
    with pytest.raises(MemfitError) as info:
        memfit.infer("gpt2", **options)
    assert info.value.field == field and "1024" in str(info.value)


def test_fit_infer_answers_at_the_adapted_prompt() -> None:
    fit = memfit.fit_infer("gpt2", gpu="h100")
    assert fit.options["prompt"] == 896 and fit.max_prompt == 896
    assert any("prompt 896, not the default 1024" in n for n in fit.notes)


def test_default_training_sequence_fits_gpt2_positions_with_a_note() -> None:
    est = memfit.train("gpt2")
    assert est.options["seq"] == GPT2_POSITIONS
    assert any("seq 1024, not the default 2048" in n for n in est.assumptions["notes"])
    assert est.peak_bytes == memfit.train("gpt2", seq=1024).peak_bytes
    assert memfit.train("llama-3.2-1b").options["seq"] == 2048


@pytest.mark.parametrize("seq", [1025, 2048, 4096])
def test_training_sequence_past_the_positions_is_refused(seq: int) -> None:
    with pytest.raises(MemfitError) as info:
        memfit.train("gpt2", seq=seq)
    assert info.value.field == "seq" and info.value.value == seq
    assert "learned position table" in str(info.value)


def test_fit_train_searches_sequences_within_the_positions() -> None:
    fit = memfit.fit_train("gpt2", gpu="h100")
    assert fit.max_seq == GPT2_POSITIONS


# -- engine-specific options -------------------------------------------------------------------

def _other_value(f: dataclasses.Field[Any]) -> Any:
    """A valid value of option ``f`` other than its default."""
    meta = f.metadata
    if meta.get("flag"):
        return not f.default
    if meta.get("choices"):
        return next(c for c in meta["choices"] if c != f.default and c is not None)
    lo = meta.get("min")
    if lo is not None:
        if isinstance(lo, float) or isinstance(f.default, float):
            return 0.5
        return lo + 1 if f.default == lo else lo
    if f.name == "vllm_version":
        return "0.10.1"  # a release number (any X.Y[.Z])
    return "q8_0"  # a free-form name, resolved later


OWNED = _engine_owned(InferenceOptions)
FIELDS = {f.name: f for f in dataclasses.fields(InferenceOptions)}


def test_the_engine_specific_options_are_found() -> None:
    owned = {attr: owner for attr, owner, _ in OWNED}
    assert owned["n_gpu_layers"] == "llamacpp/ollama"  # a llama.cpp setting Ollama passes on
    assert owned["n_cpu_moe"] == "llamacpp"
    assert owned["gpu_memory_utilization"] == owned["block_size"] == "vllm"
    assert owned["mem_fraction_static"] == "sglang" and owned["num_ctx"] == "ollama"
    assert "batch" not in owned and "tp" not in owned


@pytest.mark.parametrize("attr, owner", [(a, o) for a, o, _ in OWNED])
def test_engine_option_refused_with_other_engines(attr: str, owner: str) -> None:
    value = _other_value(FIELDS[attr])
    owners = owner.split("/")  # "llamacpp/ollama": both take it
    for own in owners:
        InferenceOptions(engine=own, **{attr: value})  # its own engines take it
    for engine in ENGINES:
        if engine in owners:
            continue
        with pytest.raises(MemfitError) as info:
            InferenceOptions(engine=engine, **{attr: value})
        assert info.value.field == attr.replace("_", "-")
        assert f"only with --engine {owners[0]}" in str(info.value)


def test_engine_option_left_out_is_not_refused() -> None:
    base = InferenceOptions(engine="llamacpp", n_gpu_layers=4)
    assert dataclasses.replace(base, n_gpu_layers=5).n_gpu_layers == 5
    InferenceOptions(engine="hf")  # every default
    InferenceOptions(engine="hf", block_size=16)  # the default value itself changes nothing


@pytest.mark.parametrize("layout", [{"tp": 8, "pp": 2}, {"tp": 2}, {"pp": 2}])
def test_llamacpp_is_one_gpu(layout: dict[str, int]) -> None:
    with pytest.raises(MemfitError) as info:
        memfit.infer("llama-3.1-8b", engine="llamacpp", **layout)
    assert info.value.field in layout and "1 with --engine llamacpp" in str(info.value)


def test_cli_refuses_n_gpu_layers_with_hf(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["infer", "llama-3.1-8b", "--n-gpu-layers", "10"]) == 2
    err = capsys.readouterr().err
    assert "n-gpu-layers: got 10; allowed: only with --engine llamacpp" in err


# -- one safe line --------------------------------------------------------------------------------

def test_control_and_bidi_characters_are_escaped() -> None:
    raw = "a\nb\rc\td\x1b[31me\x7ff\x9bg\u2028h\u202ei\u2066j é 中"
    exc = MemfitError(f"model: {raw}", field="model", value=raw, allowed=raw)
    text = str(exc)
    assert text == one_line(f"model: {raw}")
    assert text == ("model: a\\nb\\rc\\td\\x1b[31me\\x7ff\\x9bg\\u2028h\\u202ei\\u2066j é 中")
    assert exc.allowed == text.removeprefix("model: ")
    assert exc.value == raw  # programs get what was given
    assert len(text.splitlines()) == 1


def test_a_file_name_cannot_colour_the_terminal(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(
        '{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, '
        '"num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100}')
    (folder / "x\n\x1b[2J\x1b[31my.safetensors").write_bytes(
        (5).to_bytes(8, "little") + b"{bad}")
    assert main(["infer", str(folder)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "\x1b" not in err
    assert "x\\n\\x1b[2J\\x1b[31my.safetensors" in err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names")
def test_a_missing_path_with_escapes_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params", "/nonexistent/\x1b]0;title\x07\n.json"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "\x1b" not in err and "\x07" not in err
