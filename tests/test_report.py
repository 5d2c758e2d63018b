"""The text views: golden files for the table, timeline, verdict, --explain and fit views (on
hand-made estimates, see tests/golden/__init__.py), the seed check's arithmetic, the units in
every header, the progress line, and the CLI wiring on live estimates."""

from __future__ import annotations

import io
import json
import re

import pytest

from memfit.api import load_model
from memfit.cli import main
from memfit.report import (
    Progress,
    describe_scenario,
    fmt_bytes,
    ordered_components,
    progress,
    render_estimate,
    render_explain,
    render_fit,
    seed_check,
    unit_note,
)
from tests.golden import (
    assert_golden,
    fit_infer_result,
    fit_train_result,
    infer_estimate,
    train_estimate,
)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- golden views ---------------------------------------------------------------------------

@pytest.mark.parametrize("unit", ["GiB", "GB", "MiB"])
def test_infer_report_golden(unit: str) -> None:
    assert_golden(f"infer_report_{unit}.txt", render_estimate(infer_estimate(), unit))


def test_infer_report_without_gpu_golden() -> None:
    assert_golden("infer_report_nogpu.txt", render_estimate(infer_estimate(gpu=False)))


def test_train_report_golden() -> None:
    assert_golden("train_report.txt", render_estimate(train_estimate()))


def test_explain_golden() -> None:
    spec = load_model("llama-2-7b")
    assert_golden("infer_explain.txt", render_explain(infer_estimate(), "GiB", spec=spec))
    assert_golden("train_explain.txt", render_explain(train_estimate(), "GB", spec=spec))


def test_fit_views_golden() -> None:
    assert_golden("fit_infer.txt", render_fit(fit_infer_result()))
    assert_golden("fit_train.txt", render_fit(fit_train_result(), "GB"))


# -- properties of the views ----------------------------------------------------------------

def test_table_rows_follow_the_seed_order_and_shares_add_up() -> None:
    text = render_estimate(train_estimate())
    labels = [line.split("  ")[0] for line in text.splitlines()[5:14]]
    assert labels[:5] == ["weights", "gradients", "optimizer states", "activations", "KV cache"]
    shares = [float(m) for m in re.findall(r"\s(\d+\.\d)%", text.split("= peak")[0])]
    assert abs(sum(shares) - 100.0) < 0.5


def test_ordered_components_puts_the_seed_first() -> None:
    assert ordered_components(["logits", "kv_cache", "weights", "temporaries"]) == [
        "weights", "gradients", "optimizer_states", "activations", "kv_cache", "logits",
        "temporaries"]


@pytest.mark.parametrize("unit, note", [("GiB", "2^30"), ("GB", "10^9"), ("MiB", "2^20"),
                                        ("B", "bytes")])
def test_every_header_names_its_unit(unit: str, note: str) -> None:
    assert note in unit_note(unit)
    est = train_estimate()
    for text in (render_estimate(est, unit), render_explain(est, unit),
                 render_fit(fit_train_result(), unit)):
        assert f"in {unit}" in text or f"and {unit}" in text
        assert note in text


def test_fmt_bytes() -> None:
    assert fmt_bytes(2**30) == "1.00"
    assert fmt_bytes(10**9, "GB", suffix=True) == "1.00 GB"
    assert fmt_bytes(123_456_789, "MiB") == "117.74"
    assert fmt_bytes(1234, "B") == "1,234"


def test_verdict_says_fits_or_not_with_headroom() -> None:
    fits = render_estimate(infer_estimate())
    assert "FITS on rtx-4090" in fits and "headroom" in fits
    over = render_estimate(train_estimate())
    assert "DOES NOT FIT on h100-sxm" in over and "memfit fit llama-2-7b train" in over
    assert "no --gpu given" in render_estimate(infer_estimate(gpu=False))


def test_describe_scenario_lists_only_what_differs() -> None:
    o = dict(train_estimate().options, dp=8, zero=3, sp=False)
    text = describe_scenario("train", o)
    assert text == "batch 1 x seq 2048, bf16-mixed, adamw, dp=8, zero=3"


def test_explain_lets_a_reader_redo_the_sum() -> None:
    est = train_estimate()
    text = render_explain(est)
    assert f"= {est.peak_bytes:,} bytes" in text
    assert f"= {est.total_bytes:,} bytes" in text
    for t in est.terms:
        assert t.formula in text and t.source in text


# -- the seed's rules of thumb ---------------------------------------------------------------

def _seed(est, model: str = "llama-2-7b") -> dict[str, str]:
    return dict(seed_check(est, load_model(model)))


def test_seed_check_training_reproduces_the_seeds_arithmetic() -> None:
    P = 6_738_415_616  # Llama-2-7B
    text = _seed(train_estimate())
    # W + G + O = 4 W with W = 2 P (the seed's 56 GB for 7e9 parameters)
    assert "{" + str(8 * P) + "}" in text["model states"]
    assert "16 bytes per parameter" in text["model states"]
    # activations: (2 to 3) x B S h L x 2 bytes, the seed's 2-3x of its inference figure
    a = 1 * 2048 * 4096 * 32 * 2
    assert "{" + str(2 * a) + "}" in text["activations"] and "{" + str(3 * a) + "}" in text[
        "activations"]
    assert "Korthikanti" in text["activations"]


def test_seed_check_inference_names_the_missing_kv_cache() -> None:
    text = _seed(infer_estimate())
    assert "not counted" in text["KV cache"]
    assert "{" + str(6_738_415_616 * 2) + "}" in text["weights"]
    # the seed's activation cache: B x S x h x L x 2 for the full 2176-token sequence
    assert "{" + str(2176 * 4096 * 32 * 2) + "}" in text["activations"]


def test_seed_check_moe_weights_count_every_expert() -> None:
    from memfit.inference import infer

    est = infer("mixtral-8x7b")
    text = _seed(est, "mixtral-8x7b")["weights"]
    assert "every expert" in text and "active" in text


def test_seed_check_zero_and_lora() -> None:
    from memfit.training import train

    zero = _seed(train("llama-3.1-8b", dp=8, zero=3), "llama-3.1-8b")
    assert "ZeRO paper" in zero["ZeRO"] and "N = 8" in zero["ZeRO"]
    one = _seed(train("llama-3.1-8b", dp=1, zero=1), "llama-3.1-8b")
    assert "gains nothing" in one["ZeRO"]
    lora = _seed(train("llama-3.1-8b", lora_rank=16), "llama-3.1-8b")
    assert "LoRA freezes the base" in lora["model states"]
    assert "ZeRO" not in lora


# -- progress ---------------------------------------------------------------------------------

class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_progress_is_silent_for_quick_work(monkeypatch) -> None:
    monkeypatch.delenv("MEMFIT_PROGRESS", raising=False)
    stream = _Stream(tty=True)
    assert list(progress(range(3), "quick", stream=stream)) == [0, 1, 2]
    assert stream.getvalue() == ""


def test_progress_shows_counts_past_the_delay(monkeypatch) -> None:
    monkeypatch.delenv("MEMFIT_PROGRESS", raising=False)
    stream = _Stream(tty=False)
    import time

    with Progress("sweeping", total=4, stream=stream, delay=0.0, interval=0.01) as p:
        for _ in range(4):
            time.sleep(0.02)
            p.update()
    text = stream.getvalue()
    assert text.startswith("memfit: sweeping:") and text.endswith(", done\n")
    assert "4/4 (100%)" in text


def test_progress_on_a_terminal_redraws_and_erases(monkeypatch) -> None:
    monkeypatch.delenv("MEMFIT_PROGRESS", raising=False)
    stream = _Stream(tty=True)
    import time

    with Progress("tracing", stream=stream, delay=0.0, interval=0.01):
        time.sleep(0.05)
    text = stream.getvalue()
    assert "\rmemfit: tracing, " in text and text.endswith("\r")


def test_progress_can_be_silenced(monkeypatch) -> None:
    monkeypatch.setenv("MEMFIT_PROGRESS", "0")
    stream = _Stream(tty=False)
    import time

    with Progress("x", stream=stream, delay=0.0, interval=0.01):
        time.sleep(0.03)
    assert stream.getvalue() == ""


# -- the CLI on live estimates (structure only: the numbers belong to the estimators' tests) --

def test_cli_infer_report_and_explain(capsys) -> None:
    code, out, err = run(capsys, "infer", "llama-3.1-8b", "--gpu", "h100", "--explain")
    assert code == 0, err
    assert "in GiB (1 GiB = 2^30" in out
    assert "Phases" in out and "<- peak" in out and "FITS on h100-sxm" in out
    assert "formula" in out and "numbers" in out and "source" in out
    assert "Back-of-envelope rules of thumb" in out and "KV cache: seed: not counted" in out


def test_cli_train_units(capsys) -> None:
    code, out, _ = run(capsys, "train", "llama-3.1-8b", "--units", "MiB")
    assert code == 0
    assert "in MiB (1 MiB = 2^20" in out and "optimizer step" in out


def test_cli_bad_unit_is_one_line(capsys) -> None:
    code, out, err = run(capsys, "infer", "llama-3.1-8b", "--units", "parsecs")
    assert code == 2 and "units" in err and "GiB" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_json_is_unchanged_by_the_views(capsys) -> None:
    code, out, _ = run(capsys, "infer", "llama-3.1-8b", "--json", "--units", "GB")
    data = json.loads(out)
    assert code == 0 and isinstance(data["peak_bytes"], int)
    assert sum(data["components"].values()) == data["peak_bytes"]


def test_cli_fit_views(capsys) -> None:
    code, out, err = run(capsys, "fit", "llama-3.1-8b", "infer", "--gpu", "a100-80gb")
    assert code == 0, err
    assert "largest batch" in out and "fewest GPUs" in out and "in GiB" in out
    code, out, err = run(capsys, "fit", "llama-3.1-8b", "train", "--gpu", "h100", "--gpus", "1",
                         "--units", "GB")
    assert code == 0, err
    assert "largest micro-batch" in out and "in GB" in out
