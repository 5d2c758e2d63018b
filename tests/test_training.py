"""Training memory: model states, activations, sharding, the API and its published checks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from memfit.arch import ModelSpec
from memfit.catalog import all_entries, resolve_model
from memfit.errors import MemfitError
from memfit.memory.activations import korthikanti_per_layer
from memfit.memory.breakdown import REQUIRED_COMPONENTS
from memfit.memory.model_states import (
    CONVENTIONS,
    OPTIMIZERS,
    RECIPES,
    StateInputs,
    TensorGroup,
    deepspeed_zero2_estimate,
    deepspeed_zero3_estimate,
    optimizer_state_bytes,
    optimizer_temporary_bytes,
    rank_tensors,
    shard_states,
    tensor_elements,
    zero_paper_model_states,
)
from memfit.memory.params import count_params
from memfit.training import FitResult, fit_train, train

GB = 10**9


# -- parameter tensors ----------------------------------------------------------------------

@pytest.mark.parametrize("entry", all_entries(), ids=lambda e: e.name)
def test_rank_tensors_sum_to_exact_params(entry):
    spec = entry.spec
    assert tensor_elements(rank_tensors(spec)) == count_params(spec).total


def test_tensor_parallel_splits_linears_not_norms():
    spec = resolve_model("llama-2-7b")[0]
    full = tensor_elements(rank_tensors(spec))
    tp8 = tensor_elements(rank_tensors(spec, tp=8))
    norms = spec.num_layers * 2 * spec.hidden_size + spec.hidden_size
    assert tp8 == (full - norms) // 8 + norms


# -- precision recipes and conventions ---------------------------------------------------------

def test_recipe_bytes_per_param_conventions():
    assert RECIPES["bf16-master"].bytes_per_param() == 16  # ZeRO paper 2 + 2 + 12
    assert CONVENTIONS["megatron-18"].bytes_per_param() == 18
    assert CONVENTIONS["mtnlg-20"].bytes_per_param() == 20
    assert RECIPES["bf16-true"].bytes_per_param() == 8
    assert RECIPES["bf16-mixed"].bytes_per_param() == 16
    assert RECIPES["fp32"].bytes_per_param() == 16


def test_seed_56gb_7b_pure_bf16():
    """The seed's 7B example: bf16 weights, gradients and both Adam moments: 7e9 x 8 bytes."""
    assert RECIPES["bf16-true"].bytes_per_param(2) * 7 * 10**9 == 56 * GB


def test_train_reports_convention():
    e = train("llama-3.2-1b", precision="bf16-master", states_convention="megatron-18")
    assert "megatron-18" in e.assumptions["model_states_convention"]
    with pytest.raises(MemfitError, match="states-convention"):
        train("llama-3.2-1b", precision="bf16-mixed", states_convention="zero-16")


# -- ZeRO and DeepSpeed ---------------------------------------------------------------------

def test_zero_paper_figures():
    """ZeRO paper Fig. 1: 7.5B parameters, N = 64, K = 12."""
    P, N = 7_500_000_000, 64
    assert zero_paper_model_states(P, N, 0) == 120 * GB
    assert round(zero_paper_model_states(P, N, 1) / GB, 1) == 31.4
    assert round(zero_paper_model_states(P, N, 2) / GB, 1) == 16.6
    assert round(zero_paper_model_states(P, N, 3) / GB, 2) == 1.88


@pytest.mark.parametrize("stage,formula", [
    (1, lambda P, N: 4 * P + 12 * P // N),
    (2, lambda P, N: 2 * P + 14 * P // N),
    (3, lambda P, N: 16 * P // N),
])
def test_shard_states_reproduce_zero_paper(stage, formula):
    P, N = 7_000_000_000, 64
    x = StateInputs(weight_bytes=2 * P, trainable=P, compute_bytes=2, state_bytes=8 * P,
                    temporaries=0, step_counters=0, largest_module=0, persistent=0,
                    layer_elements=0, root_elements=0, layers=32)
    sb = shard_states(x, RECIPES["bf16-master"], dp=N, zero=stage, fsdp=None, offload="none")
    states = sb.weights + sb.gradients + sb.master + sb.optimizer
    assert abs(states - formula(P, N)) <= 4


def _ds_zero2(P, gpn, nodes, off, f=1.5):  # deepspeed/runtime/zero/stage_1_and_2.py, verbatim
    total = nodes * gpn
    if off:
        return int(P * max(4 * total, 16) * f), int(2 * P)
    return int(P * 4 * gpn * f), int(4 * P + int(16 * P / total))


def _ds_zero3(P, L, gpn, nodes, off, off_p, zi, f=1.5):  # deepspeed/runtime/zero/stage3.py
    total, gf, lm = nodes * gpn, 1 / nodes, 4 * L
    if off:
        if off_p:
            gpu = lm
            cpu = P * 18 * gf * f if zi else P * max(4 * gpn, 18 * gf) * f
        else:
            gpu = lm + int(2 * P / total)
            cpu = P * 16 * gf * f if zi else P * max(4 * gpn, 16 * gf) * f
    else:
        gpu = lm + int(18 * P / total)
        cpu = L * 4 * gpn * f if zi else P * 4 * gpn * f
    return int(cpu), int(gpu), lm


@pytest.mark.parametrize("P,gpn,nodes", [(6_738_415_616, 8, 1), (70_553_706_496, 8, 4),
                                         (1_235_814_400, 1, 1)])
@pytest.mark.parametrize("off", [True, False])
def test_deepspeed_estimators_reproduce(P, gpn, nodes, off):
    assert deepspeed_zero2_estimate(P, gpn, nodes, off) == _ds_zero2(P, gpn, nodes, off)
    L = 525_336_576
    for off_p in (True, False):
        for zi in (True, False):
            if not off and off_p:
                continue
            got = deepspeed_zero3_estimate(P, L, gpn, nodes, off, off_p, zi)
            assert got == _ds_zero3(P, L, gpn, nodes, off, off_p, zi)


def test_zero_stages_reduce_model_states():
    peaks = [train("llama-3.1-8b", dp=8, zero=z, seq=1024).peak_bytes for z in (0, 1, 2, 3)]
    assert peaks[0] > peaks[1] > peaks[2] > peaks[3]


def test_fsdp_shards_and_gathers():
    e1 = train("llama-3.1-8b", dp=8, fsdp="full", seq=1024)
    e2 = train("llama-3.1-8b", dp=8, fsdp="grad-op", seq=1024)
    assert e2.peak_bytes > e1.peak_bytes
    assert e1.term("gathered_params").bytes > 0


def test_offload_moves_states_to_host():
    e = train("llama-3.1-8b", dp=8, zero=3, offload="params", seq=1024)
    assert e.host_bytes > 0
    on = train("llama-3.1-8b", dp=8, zero=3, seq=1024)
    assert e.peak_bytes < on.peak_bytes


# -- optimizers ---------------------------------------------------------------------------

def test_adamw_8bit_state_is_blockwise():
    g = (TensorGroup("w", (4096, 4096)), TensorGroup("n", (2048,)), TensorGroup("m", (5000,)))
    n = 4096 * 4096
    # under 4096 elements: two fp32 states; from 4096 on: 2 bytes + 2 fp32 absmax per 2048
    expect = 2 * n + 8 * (n // 2048) + 8 * 2048 + (2 * 5000 + 8 * 3) + 2 * 256 * 4
    assert optimizer_state_bytes(g, OPTIMIZERS["adamw-8bit"], 2) == expect


def test_adafactor_state_is_factored():
    g = (TensorGroup("w", (1024, 4096), count=3), TensorGroup("e", (8, 512, 256)),
         TensorGroup("n", (4096,)))
    expect = (3 * (1024 + 4096) + 8 * (512 + 256) + 4096) * 4
    assert optimizer_state_bytes(g, OPTIMIZERS["adafactor"], 4) == expect


def test_optimizer_temporaries_by_impl():
    g = (TensorGroup("w", (1000, 1000), count=4),)
    adam = OPTIMIZERS["adamw"]
    assert optimizer_temporary_bytes(g, adam, "foreach", 4) == 4 * 10**6 * 4
    assert optimizer_temporary_bytes(g, adam, "fused", 4) == 0
    assert optimizer_temporary_bytes(g, adam, "forloop", 4) == 2 * 10**6 * 4
    assert optimizer_temporary_bytes(g, OPTIMIZERS["sgd"], "foreach", 4) == 0
    assert optimizer_temporary_bytes(g, OPTIMIZERS["lion"], "foreach", 2) == 4 * 10**6 * 2


# -- activations ---------------------------------------------------------------------------

def test_korthikanti_formula():
    spec = resolve_model("gpt2")[0]
    s, b, h, a = 1024, 1, 768, 12
    assert korthikanti_per_layer(spec, s, b) == 34 * s * b * h + 5 * a * s * s * b
    tp4 = 10 * s * b * h + (24 * s * b * h + 5 * a * s * s * b) // 4
    assert korthikanti_per_layer(spec, s, b, tp=4) == tp4
    assert korthikanti_per_layer(spec, s, b, recompute="full") == 2 * s * b * h


def test_checkpointing_and_attention_order():
    none = train("llama-3.2-1b", batch=4, seq=4096)
    full = train("llama-3.2-1b", batch=4, seq=4096, checkpointing="full")
    eager = train("llama-3.2-1b", batch=4, seq=4096, attn="eager")
    sel = train("llama-3.2-1b", batch=4, seq=4096, attn="eager", checkpointing="selective")
    assert full.peak_bytes < none.peak_bytes < eager.peak_bytes
    assert sel.peak_bytes < eager.peak_bytes


@pytest.mark.parametrize("model", ["gpt2", "llama-3.2-1b", "qwen1.5-moe-a2.7b", "gemma-2-2b",
                                   "deepseek-v2-lite", "gpt-oss-20b", "phi-3-mini-4k"])
def test_estimate_shape(model):
    e = train(model, batch=2, seq=512)
    d = e.to_dict()
    assert set(REQUIRED_COMPONENTS) <= set(d["components"])
    assert sum(d["components"].values()) == d["peak_bytes"]
    assert all(isinstance(v, int) and v >= 0 for v in d["components"].values())
    assert d["total_bytes"] > d["peak_bytes"]
    assert e.mode == "train" and {p.name for p in e.phases} == {"forward", "backward", "optimizer"}


def test_peak_grows_with_batch_and_seq():
    a = train("qwen2.5-0.5b", batch=1, seq=1024).peak_bytes
    assert train("qwen2.5-0.5b", batch=2, seq=1024).peak_bytes > a
    assert train("qwen2.5-0.5b", batch=1, seq=2048).peak_bytes > a


def test_parallel_layouts_run():
    for kw in (dict(tp=8, sp=True), dict(pp=4, microbatches=8), dict(dp=2, cp=4),
               dict(dp=8, zero=1, pp=2, microbatches=4)):
        e = train("llama-3.1-8b", seq=2048, **kw)
        assert e.peak_bytes > 0
    moe = train("mixtral-8x7b", dp=8, ep=8, zero=1, seq=2048)
    assert moe.peak_bytes < train("mixtral-8x7b", dp=8, zero=1, seq=2048).peak_bytes


def test_lora_and_qlora():
    full = train("llama-3.1-8b", precision="bf16-true", seq=2048, checkpointing="full")
    lora = train("llama-3.1-8b", precision="bf16-true", seq=2048, lora_rank=16,
                 checkpointing="full")
    qlora = train("llama-3.1-8b", qlora=True, seq=2048, checkpointing="full")
    assert qlora.peak_bytes < lora.peak_bytes < full.peak_bytes
    key = "trainable_params_on_rank"
    assert qlora.assumptions[key] == lora.assumptions[key]


# -- errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,field", [
    (dict(tp=3), "tp"),
    (dict(pp=2, zero=2, dp=2), "zero"),
    (dict(offload="optimizer"), "offload"),
    (dict(fsdp="full"), "fsdp"),
    (dict(optimizer="adafactor", optimizer_impl="fused"), "optimizer-impl"),
    (dict(qlora=True, precision="fp32"), "precision"),
    (dict(ep=2), "ep"),
    (dict(batch=0), "batch"),
    (dict(flux=1), "option"),
])
def test_bad_input_names_field(kw, field):
    with pytest.raises(MemfitError) as info:
        train("llama-3.2-1b", **kw)
    assert info.value.field == field
    assert "allowed" in str(info.value)


# -- fit ---------------------------------------------------------------------------------

def test_fit_train_boundaries_are_exact():
    r = fit_train("qwen2.5-0.5b", "rtx-4090", 1, seq=1024)
    assert isinstance(r, FitResult) and r.max_batch
    assert train("qwen2.5-0.5b", batch=r.max_batch, seq=1024, gpu="rtx-4090").fits
    assert not train("qwen2.5-0.5b", batch=r.max_batch + 1, seq=1024, gpu="rtx-4090").fits
    assert train("qwen2.5-0.5b", seq=r.max_seq, gpu="rtx-4090").fits
    assert not train("qwen2.5-0.5b", seq=r.max_seq + 1, gpu="rtx-4090").fits
    assert r.to_dict()["max_batch"] == r.max_batch


def test_fit_train_layouts_ranked():
    r = fit_train("llama-3.1-8b", "h100", 8, seq=2048)
    assert r.layouts
    assert all(x.headroom_bytes >= 0 for x in r.layouts)
    first = r.layouts[0]
    assert first.offload == "none" and first.checkpointing == "none"


def test_cli_fit_train_without_gpus_names_the_fewest(capsys):
    """`memfit fit llama-3.1-70b train --gpu h100 --seq 4096 --fsdp full` (issue 16): no
    --gpus, so the CLI passes None and fit_train searches the fewest GPUs; --dp alone sets
    the count."""
    import json

    from memfit.cli import main

    assert main(["fit", "llama-3.1-70b", "train", "--gpu", "h100", "--seq", "4096",
                 "--fsdp", "full", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    n = data["gpus"]
    assert n > 1 and any("fewest GPUs" in x for x in data["notes"])
    assert data["layouts"]
    assert n == 24  # counts tried: powers of two, then multiples of 8
    fewer = fit_train("llama-3.1-70b", "h100", 16, seq=4096, fsdp="full")
    assert all(x.offload != "none" for x in fewer.layouts)  # 16 fit only with offloading
    assert main(["fit", "llama-3.1-8b", "train", "--gpu", "h100", "--dp", "4", "--fsdp",
                 "full", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gpus"] == 4


def test_nothing_fits_gives_none():
    r = fit_train("llama-3.1-70b", "rtx-4090", 1, seq=2048, max_layouts=0)
    assert r.max_batch is None and r.max_seq is None


# -- published cases -----------------------------------------------------------------------

def test_megatron_llama2_7b_dp4_pp2():
    """Megatron-LM tools/get_training_info (PR #482): Llama2 7B, bf16, MBS 2, DP 4, PP 2,
    distributed optimizer, flash attention: 49.8 GB measured. memfit models transformers'
    layers (fp32 norm inputs), which keep ~25% more activations than Megatron's fused
    kernels; model states (6 + 12/4 bytes/param on 3.4B parameters) agree exactly."""
    e = train("llama-2-7b", precision="bf16-master", states_convention="megatron-18", zero=1,
              dp=4, pp=2, batch=2, seq=2048, microbatches=256)
    states = e.components["weights"] + e.components["gradients"] + e.components["optimizer_states"]
    P = e.assumptions["trainable_params_on_rank"]
    assert abs(states - (6 * P + 12 * P // 4)) < 0.001 * states
    assert abs(e.peak_bytes / (49.8 * GB) - 1) < 0.20


def test_qlora_65b_fits_48gb():
    """QLoRA (Dettmers et al. 2023): LLaMA-65B fine-tuned on one 48 GB GPU (r = 64 on all
    linear layers, bf16 adapters as qlora.py casts them, gradient checkpointing)."""
    spec = ModelSpec(name="llama-65b", model_type="llama", num_layers=80, hidden_size=8192,
                     vocab_size=32000, num_heads=64, num_kv_heads=64, head_dim=128,
                     intermediate_size=22016, rope_dim=128)
    e = train(spec, qlora=True, lora_rank=64, precision="bf16-true", checkpointing="full",
              batch=1, seq=512, gpu="a6000", lora_dtype="bf16", optimizer_impl="fused",
              lora_targets="all-linear")
    # The tensors fit with room for the CUDA context; with the allocator's measured slack
    # the total sits at the card's edge, where paged AdamW (bitsandbytes) pages its
    # 6.4 GB of state to host memory: how the paper fits it.
    assert e.peak_bytes + e.overheads["cuda_context"] < e.gpu_memory_bytes
    default = train(spec, qlora=True, lora_rank=64, precision="bf16-true",
                    checkpointing="full", batch=1, seq=512, gpu="a6000", lora_targets="all-linear")
    assert not default.fits  # fp32 adapters + foreach AdamW: ~51.5 GB of tensors


def test_train_is_fast():
    spec = resolve_model("llama-3.1-8b")[0]
    train(spec, seq=2048)
    t = time.perf_counter()
    for i in range(50):
        train(spec, batch=1 + i % 4, seq=2048)
    assert (time.perf_counter() - t) / 50 < 0.002


def test_qlora_under_fsdp_is_lighter_than_lora_under_fsdp_and_than_one_gpu() -> None:
    """QLoRA under FSDP2 (modelled, not traced): the NF4 base is all-gathered as stored and the
    policy's 16-bit embedding makes the stream 16-bit, so a rank holds less than LoRA under the
    same layout and less than QLoRA on one GPU (whose fp32 stream runs fp32 attention)."""
    qlora_fsdp = train("llama-3.1-8b", qlora=True, dp=8, fsdp="full").peak_bytes
    lora_fsdp = train("llama-3.1-8b", lora_rank=16, dp=8, fsdp="full").peak_bytes
    qlora_one = train("llama-3.1-8b", qlora=True).peak_bytes
    assert qlora_fsdp < lora_fsdp
    assert qlora_fsdp < qlora_one


# -- the web page: every issue-16 knob is a control of the form and a field of the API ------

ISSUE16_KNOBS = [
    {"lora_rank": 16, "lora_targets": "peft-default", "lora_dropout": 0.05,
     "precision": "bf16-true"},
    {"lora_rank": 16, "lora_dtype": "bf16", "dora": True, "precision": "bf16-true"},
    {"qlora": True, "no_kbit_prepare": True, "precision": "bf16-true"},
    {"qlora": True, "transformers": 4, "precision": "bf16-true", "model": "mixtral-8x7b"},
    {"lora_rank": 8, "lora_experts": True, "precision": "bf16-true", "model": "mixtral-8x7b"},
    {"loss": "chunked", "loss_chunks": 16},
    {"loss": "liger", "precision": "bf16-true"},
    {"loss": "cce", "precision": "bf16-true"},
    {"checkpointing": "op-selective", "checkpoint_every": 2, "precision": "bf16-true"},
    {"activation_offload": True, "precision": "bf16-true"},
    {"optimizer": "paged-adamw-8bit", "optimizer_in_backward": True, "precision": "bf16-true"},
    {"dp": 8, "fsdp": "full", "fsdp_version": 1, "precision": "bf16-true"},
    {"dp": 8, "fsdp": "full", "offload": "params"},
]


def test_web_form_and_api_carry_every_training_knob() -> None:
    """The page builds its form from GET /api/options (src/memfit/web/static/app.js
    ``optionControl``: no field is listed by hand), so each option of TrainingOptions is a
    control; POST /api/train takes each issue-16 knob and answers the Python estimate."""
    import json
    from dataclasses import fields

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from memfit.web import create_app
    from memfit.workload import TrainingOptions

    client = TestClient(create_app())
    described = {o["name"]: o for o in client.get("/api/options").json()["train"]}
    assert {f.name for f in fields(TrainingOptions)} <= set(described)
    assert described["loss"]["choices"] == ["hf", "chunked", "liger", "cce"]
    assert described["transformers"]["choices"] == [4, 5]
    assert described["lora_targets"]["default"] == "all-linear"
    page = (Path(__file__).resolve().parents[1] / "src/memfit/web/static/app.js").read_text()
    assert "api/options" in page and "lora_targets" not in page  # generated, not by hand
    for knobs in ISSUE16_KNOBS:
        opts = {k: v for k, v in knobs.items() if k != "model"}
        model = knobs.get("model", "llama-3.2-1b")
        r = client.post("/api/train", json={"model": model, "options": {**opts, "seq": 512}})
        assert r.status_code == 200, (knobs, r.text)
        assert r.json() == json.loads(json.dumps(train(model, seq=512, **opts).to_dict()))


def test_cli_spellings_of_the_renamed_knobs(capsys) -> None:
    """`--loss fused-linear` (the old name) is Liger's loss; `--no-kbit-prepare` is the 16-bit
    QLoRA stream; `--transformers 4` the per-expert MoE layout."""
    import json

    from memfit.cli import main

    def peak(*argv: str) -> int:
        assert main(["train", *argv, "--json"]) == 0
        return int(json.loads(capsys.readouterr().out)["peak_bytes"])

    kw = ("llama-3.2-1b", "--precision", "bf16-true", "--seq", "512")
    assert peak(*kw, "--loss", "fused-linear") == peak(*kw, "--loss", "liger") == train(
        "llama-3.2-1b", precision="bf16-true", seq=512, loss="liger").peak_bytes
    assert peak(*kw, "--qlora", "--no-kbit-prepare") == train(
        "llama-3.2-1b", precision="bf16-true", seq=512, qlora=True,
        no_kbit_prepare=True).peak_bytes
    assert peak("mixtral-8x7b", "--qlora", "--precision", "bf16-true", "--seq", "512",
                "--transformers", "4") == train("mixtral-8x7b", qlora=True, seq=512,
                                                precision="bf16-true", transformers=4).peak_bytes


def test_a_peft_config_without_target_modules_is_peft_default(tmp_path: Path, capsys) -> None:
    """TRL's ModelConfig.lora_target_modules = None: peft's per-model default (q_proj, v_proj
    for Llama), memfit's --lora-targets peft-default (the option's own default is all-linear)."""
    import json

    from memfit.cli import main

    cfg = tmp_path / "sft.yaml"
    cfg.write_text("model_name_or_path: meta-llama/Llama-3.2-1B\nuse_peft: true\nlora_r: 16\n"
                   "bf16: true\nper_device_train_batch_size: 2\nmax_length: 1024\n")
    assert main(["check", str(cfg), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "peft-default" in json.dumps(data)
    assert "q_proj, v_proj" in json.dumps(data)
