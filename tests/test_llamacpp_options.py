"""llama.cpp's context options: ``--ctx-size`` (-c), ``--batch-size`` (-b), ``--split-mode``.

The rules are ``llama_context::llama_context`` (``src/llama-context.cpp``, llama.cpp b7000+):
``n_ctx = -c`` (0: ``n_ctx_train``), ``n_batch = min(n_ctx, -b)``, ``n_ubatch = min(n_batch,
-ub)``, ``n_ctx = GGML_PAD(n_ctx, 256)``; the KV cache holds ``n_ctx`` cells per layer
(``src/llama-kv-cache.cpp``) whatever the request's length.
"""

from __future__ import annotations

import json

import pytest

import memfit
from memfit.cli import main
from memfit.errors import MemfitError

SMALL = "llama-3.2-1b"  # 16 layers, 8 KV heads of 64: 2 x 8 x 64 x 2 B = 2 KiB per cell/layer
MiB = 2**20


def llama(**options):
    return memfit.infer(SMALL, engine="llamacpp", **options)


def test_ctx_size_is_the_kv_window_not_the_prompt() -> None:
    # 16 layers x 4096 cells x (K + V) 2,048 bytes = 128 MiB, for any request inside it
    short = llama(ctx_size=4096, prompt=100, generate=10)
    long = llama(ctx_size=4096, prompt=3000, generate=1000)
    assert short.extras["n_ctx"] == long.extras["n_ctx"] == 4096
    assert short.components["kv_cache"] == long.components["kv_cache"] == 16 * 4096 * 2048
    assert short.peak_bytes == long.peak_bytes
    assert short.extras["warnings"] == [] and short.extras["serves_request"] is True


def test_published_llama3_8b_log_at_ctx_8192() -> None:
    # llama.cpp (Ollama runner) log, Llama 3.1 8B, n_ctx 8192, n_ubatch 512, no flash
    # attention: "CUDA0 KV buffer size = 1024.00 MiB", "CUDA0 compute buffer size = 560.00 MiB"
    # (docs/inference.md, Published numbers); the window given as -c, the prompt far shorter
    e = memfit.infer("llama-3.1-8b", engine="llamacpp", ctx_size=8192, flash_attn="off",
                     prompt=200, generate=50)
    assert e.extras["kv_cache_mib"] == 1024.0
    assert e.extras["compute_buffer_mib"] == 560.0
    assert e.extras["n_ubatch"] == 512


def test_ctx_size_is_padded_to_256_cells() -> None:
    e = llama(ctx_size=1000, prompt=500, generate=0)
    assert e.extras["n_ctx"] == 1024 and e.components["kv_cache"] == 16 * 1024 * 2048


def test_ctx_size_zero_is_the_training_context() -> None:
    e = llama(ctx_size=0, prompt=10, generate=0)
    assert e.extras["n_ctx"] == 131072  # max_position_embeddings of Llama 3.2
    assert any("training context" in n for n in e.assumptions["notes"])


def test_request_beyond_the_window_starts_but_is_not_served() -> None:
    e = memfit.infer(SMALL, engine="llamacpp", ctx_size=512, prompt=1024, generate=128,
                     gpu="h100")
    assert e.extras["n_ctx"] == 512 and e.components["kv_cache"] == 16 * 512 * 2048
    assert e.extras["serves_request"] is False and "n_ctx 512" in e.extras["warnings"][0]
    assert e.fits is True  # the memory is the window's: llama.cpp starts
    # batch sequences share the window: 2 x (300 + 0) > 512
    two = llama(ctx_size=512, batch=2, prompt=300, generate=0)
    assert two.extras["serves_request"] is False


def test_without_ctx_size_the_window_is_the_request() -> None:
    e = llama(batch=2, prompt=1000, generate=24)
    assert e.extras["n_ctx"] == 2048 and e.extras["ctx_size"] is None
    assert e.extras["serves_request"] is True


@pytest.mark.parametrize("b", [64, 256, 511])
def test_batch_size_bounds_the_ubatch(b: int) -> None:
    # n_ubatch = min(n_batch, -ub): -b 256 is the same graph as -ub 256
    e = llama(batch_size=b)
    assert e.extras["n_batch"] == b and e.extras["n_ubatch"] == b
    assert e.peak_bytes == llama(ubatch_size=b).peak_bytes
    assert e.components["activations"] < llama().components["activations"]


def test_batch_size_at_or_above_ubatch_changes_nothing() -> None:
    base = llama()
    assert llama(batch_size=512).peak_bytes == base.peak_bytes
    assert llama(batch_size=8192).peak_bytes == base.peak_bytes
    assert base.extras["n_batch"] == min(2048, 1024 + 128)  # n_batch = min(n_ctx, -b)


def test_context_shorter_than_ubatch_bounds_it() -> None:
    # n_ubatch = min(n_ctx, -b, -ub) before n_ctx is padded: -c 300 reserves a 300-token graph
    e = llama(ctx_size=300, prompt=200, generate=0)
    assert (e.extras["n_ctx"], e.extras["n_batch"], e.extras["n_ubatch"]) == (512, 300, 300)


def test_split_mode_row_is_refused_naming_it(capsys) -> None:
    with pytest.raises(MemfitError) as err:
        llama(split_mode="row", tensor_split="1,1")
    assert err.value.field == "split-mode" and "not modelled" in str(err.value)
    code = main(["infer", SMALL, "--engine", "llamacpp", "--split-mode", "row"])
    _, stderr = capsys.readouterr()
    assert code == 2 and "split-mode" in stderr and len(stderr.strip().splitlines()) == 1


def test_split_mode_layer_is_the_default_and_none_is_one_gpu() -> None:
    two = llama(tensor_split="1,1")
    assert llama(split_mode="layer", tensor_split="1,1").peak_bytes == two.peak_bytes
    one = llama(split_mode="none", tensor_split="1,1")
    assert one.peak_bytes == llama().peak_bytes > two.peak_bytes
    assert len(one.extras["per_gpu"]) == 1
    assert any("--tensor-split ignored" in n for n in one.assumptions["notes"])


def test_llamacpp_options_refused_with_other_engines(capsys) -> None:
    for flag, value in (("--ctx-size", "4096"), ("--batch-size", "512"),
                        ("--split-mode", "none")):
        code = main(["infer", SMALL, flag, value])
        _, stderr = capsys.readouterr()
        assert code == 2 and flag.lstrip("-") in stderr and "--engine llamacpp" in stderr


def test_cli_spellings(capsys) -> None:
    def run(*argv: str) -> dict:
        assert main(["infer", SMALL, "--engine", "llamacpp", "--json", *argv]) == 0
        return json.loads(capsys.readouterr().out)

    a, b = run("-c", "4096"), run("--ctx-size", "4096")
    assert a == b and a["extras"]["n_ctx"] == 4096 and a["options"]["ctx_size"] == 4096
    assert run("-sm", "none")["extras"]["split_mode"] == "none"
    assert run("--batch-size", "128")["extras"]["n_ubatch"] == 128


def test_ollama_num_batch_is_n_batch_too() -> None:
    # Ollama passes num_batch as both n_batch and n_ubatch: -b's clamp never cuts it
    e = memfit.infer(SMALL, engine="ollama", ubatch_size=4096, num_ctx=8192)
    assert e.extras["n_ubatch"] == 4096
