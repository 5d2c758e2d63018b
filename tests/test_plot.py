"""``memfit plot``: pictures read back (PNG header and size, SVG text with labels and units),
the sweep's fit boundary against the solver's, and the CLI. Skipped without matplotlib (the
``plot`` extra), except the test that its absence is one clear error."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from memfit.cli import main
from memfit.compare import Scenario, expand, run
from memfit.errors import MemfitError


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_missing_matplotlib_is_one_clear_error(monkeypatch, tmp_path: Path) -> None:
    from memfit import plot

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    results = run(expand("llama-3.2-1b", "infer", {}), show_progress=False)
    with pytest.raises(MemfitError, match=r"\.\[plot\]"):
        plot.plot_breakdown(results, tmp_path / "x.png")


def test_output_extension_is_checked(capsys, tmp_path: Path) -> None:
    code, _, err = _cli(capsys, "plot", "llama-3.2-1b", "infer", "-o", str(tmp_path / "a.jpg"))
    assert code == 2 and ".png or .svg" in err and len(err.strip().splitlines()) == 1


mpl = pytest.importorskip("matplotlib")
from memfit import plot  # noqa: E402


@pytest.fixture(scope="module")
def precisions():
    return run(expand("llama-3.2-1b", "train", {"precision": ["bf16-mixed", "bf16-true"],
                                                 "gpu": ["rtx-4090"]}), show_progress=False)


def test_breakdown_png(tmp_path: Path, precisions) -> None:
    path = plot.plot_breakdown(precisions, tmp_path / "b.png")
    w, h = _png_size(path)
    assert w >= 800 and h >= 600


def test_breakdown_svg_has_labels_units_and_capacity(tmp_path: Path, precisions) -> None:
    text = plot.plot_breakdown(precisions, tmp_path / "b.svg", unit="GB").read_text()
    for needle in ("memory per GPU (GB)", "weights", "optimizer states", "runtime overheads",
                   "bf16-mixed", "bf16-true", "--precision", "rtx-4090", "GB usable",
                   "llama-3.2-1b, training"):
        assert needle in text, needle


def test_sweep_boundary_is_the_solvers(tmp_path: Path) -> None:
    from memfit.inference import fit_infer

    s = Scenario("llama-3.2-1b", "infer", {"prompt": 4096, "gpu": "rtx-4090"}, {})
    [sw] = plot.sweep(s, "batch", show_progress=False)
    assert sw.boundary == fit_infer("llama-3.2-1b", gpu="rtx-4090", prompt=4096).max_batch
    assert sw.values[0] == 1 and sw.boundary in sw.values and sw.boundary + 1 in sw.values
    assert max(sw.values) >= 2 * sw.boundary
    text = plot.plot_sweep([sw], tmp_path / "s.svg").read_text()
    for needle in (f"largest batch that fits: {sw.boundary:,}", "batch size (sequences)",
                   "memory per GPU (GiB)", "rtx-4090", "KV cache", "total (nvidia-smi)"):
        assert needle in text, needle


def test_sweep_series_share_one_grid(tmp_path: Path) -> None:
    scen = expand("llama-3.2-1b", "train", {"precision": ["bf16-mixed", "bf16-true"],
                                            "gpu": ["rtx-4090"]})
    sweeps = plot.sweep(scen, "seq", show_progress=False)
    assert {b for sw in sweeps for b in [sw.boundary]} and all(
        set(sweeps[0].values) == set(sw.values) for sw in sweeps)
    text = plot.plot_sweep(sweeps, tmp_path / "s.svg").read_text()
    assert "precision=bf16-true; fits up to seq" in text


def test_sweep_with_given_values_and_no_gpu(tmp_path: Path) -> None:
    s = Scenario("llama-3.2-1b", "infer", {}, {})
    [sw] = plot.sweep(s, "prompt", values=[512, 1024, 2048], show_progress=False)
    assert sw.values == (512, 1024, 2048) and sw.boundary is None
    plot.plot_sweep([sw], tmp_path / "p.png")
    with pytest.raises(MemfitError, match="sweep"):
        plot.sweep(s, "seq", show_progress=False)


def test_layouts_train_and_infer(tmp_path: Path) -> None:
    from memfit.training import fit_train

    r = fit_train("llama-3.2-1b", gpu="rtx-4090", gpus=2)
    text = plot.plot_layouts(r, tmp_path / "l.svg").read_text()
    assert "layouts ranked by peak" in text and "dp=2" in text and "memory per GPU (GiB)" in text
    s = Scenario("llama-3.1-8b", "infer", {"gpu": "t4"}, {})
    counts = plot.infer_gpu_counts(2)
    assert counts == [1, 2, 4]
    items = plot.infer_layouts(s, counts)
    text = plot.plot_layouts((s, counts, items), tmp_path / "i.svg").read_text()
    assert "tp=2 x pp=1" in text and "does not fit" in text


def test_cli_plot_kinds(capsys, tmp_path: Path) -> None:
    out = tmp_path / "c.png"
    code, stdout, err = _cli(capsys, "plot", "llama-3.2-1b,qwen2.5-0.5b", "infer", "-o",
                             str(out))
    assert code == 0, err and f"wrote {out}" in stdout
    assert _png_size(out)[0] > 0
    code, _, err = _cli(capsys, "plot", "llama-3.2-1b", "infer", "--sweep", "batch", "--gpu",
                        "rtx-4090", "-o", str(tmp_path / "s.svg"))
    assert code == 0, err
    code, _, err = _cli(capsys, "plot", "llama-3.2-1b", "train", "--fit", "--gpus", "2",
                        "--gpu", "rtx-4090", "-o", str(tmp_path / "f.svg"))
    assert code == 0, err
    code, _, err = _cli(capsys, "plot", "llama-3.2-1b", "train", "--fit", "-o",
                        str(tmp_path / "f.svg"))
    assert code == 2 and "gpu" in err
    code, _, err = _cli(capsys, "plot", "llama-3.2-1b", "train", "--sweep", "prompt", "-o",
                        str(tmp_path / "f.svg"))
    assert code == 2 and "batch, seq" in err
