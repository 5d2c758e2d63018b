#!/usr/bin/env python3
"""How fast memfit answers, and how fast its peers answer the same questions: a table.

    python benchmarks/speed.py                  # everything (about a minute on 2 cores)
    python benchmarks/speed.py --quick          # fewer repeats, a 10,000-scenario sweep
    python benchmarks/speed.py --peers-python /path/to/venv/bin/python

Rows:

1. one estimate in-process (``memfit.infer`` / ``memfit.train``), with a pre-resolved
   ModelSpec and with a catalog name (goal: under 50 us);
2. ``memfit infer ...`` as a fresh process (goal: under 0.3 s), with the third-party modules it
   imported (goal: none);
3. a sweep of 100,000 random scenarios over the catalog, and 100,000 scenarios of one model
   asked one call each and through ``memfit.sweep`` (goal: under 2 s);
4. the same questions asked of llm-analysis (``pip install llm-analysis``; it pins
   transformers 4.31, so it is best kept in its own virtual environment, passed with
   ``--peers-python``) and of ``accelerate estimate-memory``. accelerate's command asks the
   Hugging Face Hub for the model (``verify_on_hub``) before anything else, so offline it
   fails; its offline equivalent is timed instead: the same steps after the Hub lookup
   (``AutoConfig`` from a local config.json, the model built on the meta device with
   ``init_empty_weights``, ``accelerate.utils.calculate_maximum_sizes``).

In-process times are CPU seconds of this process (``time.process_time``: on a shared machine
wall time also counts the other processes' turns), the best of several rounds of many calls,
with the median round beside it; fresh-process times are wall-clock medians. The distinct
row cycles through 64 different scenarios, so no answer is ever reused (memfit memoises only
what does not depend on batch and context). Nothing here asserts a goal: docs/performance.md
records the results with the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import memfit  # noqa: E402
from memfit.catalog import entry_names, get_entry  # noqa: E402
from memfit.errors import MemfitError  # noqa: E402

HEAVY = ("torch", "transformers", "numpy", "matplotlib", "fastapi", "pydantic", "starlette",
         "huggingface_hub", "safetensors", "gguf", "scipy", "pandas", "accelerate")

# The questions every tool is asked (Llama-2-7B: in memfit's catalog and llm-analysis's).
INFER_Q = dict(batch=1, prompt=1024, generate=128, gpu="a100-sxm-80gb")
TRAIN_Q = dict(batch=1, seq=2048, dp=8, zero=3, precision="bf16-master", gpu="a100-sxm-80gb")
CLI_ARGV = ["infer", "llama-3.1-8b", "--batch", "4", "--prompt", "2048", "--json"]


CLOCK = time.process_time  # CPU time of this process (see the module docstring)
MEDIANS: dict[str, float] = {}  # row -> the median round's seconds per call


def per_call(fn: Callable[[], Any], calls: int, rounds: int = 7) -> tuple[float, float]:
    """Seconds per call: (the best, the median) of ``rounds`` rounds of ``calls`` calls (after
    a warm-up)."""
    for _ in range(max(1, calls // 10)):
        fn()
    times = []
    for _ in range(rounds):
        start = CLOCK()
        for _ in range(calls):
            fn()
        times.append((CLOCK() - start) / calls)
    return min(times), statistics.median(times)


def timed(what: str, fn: Callable[[], Any], calls: int, note: str = "") -> tuple[str, float, str]:
    """A row: ``what``, the best round's seconds per call, the median in the note."""
    best, median = per_call(fn, calls)
    MEDIANS[what] = median
    return what, best, f"median {fmt_time(median)}" + (f"; {note}" if note else "")


def cycling(fn: Callable[..., Any], scenarios: list[dict[str, Any]]) -> Callable[[], Any]:
    """A call that asks the next of ``scenarios`` each time (round robin)."""
    state = {"i": 0}
    n = len(scenarios)

    def call() -> Any:
        i = state["i"]
        state["i"] = (i + 1) % n
        return fn(**scenarios[i])
    return call


def distinct_infer(count: int = 64) -> list[dict[str, Any]]:
    rng = random.Random(1)
    return [dict(batch=rng.choice([1, 2, 3, 4, 8, 16]), prompt=rng.randrange(128, 8192),
                 generate=rng.choice([1, 64, 128, 512])) for _ in range(count)]


def distinct_train(count: int = 64) -> list[dict[str, Any]]:
    rng = random.Random(2)
    return [dict(batch=rng.choice([1, 2, 3, 4, 8]), seq=rng.randrange(128, 8192))
            for _ in range(count)]


def fresh_process(argv: list[str], runs: int, env: dict[str, str] | None = None) -> float:
    """Median wall seconds of ``argv`` as a new process (its exit status is not checked)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, env=env, cwd=tempfile.gettempdir())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


# -- memfit ----------------------------------------------------------------------------------

def memfit_in_process(quick: bool) -> list[tuple[str, float, str]]:
    spec = memfit.load_model("llama-3.1-8b")
    moe = memfit.load_model("mixtral-8x7b")
    n = 2000 if quick else 10000
    rows = [
        timed("memfit.infer(spec), llama-3.1-8b B=4 P=2048 (G=128)",
              lambda: memfit.infer(spec, batch=4, prompt=2048), n),
        timed("memfit.infer(spec), llama-3.1-8b, 64 distinct scenarios in turn",
              cycling(lambda **kw: memfit.infer(spec, **kw), distinct_infer()), n),
        timed("memfit.infer(spec), llama-3.1-8b B=4 P=2048 G=0 (prefill only)",
              lambda: memfit.infer(spec, batch=4, prompt=2048, generate=0), n),
        timed("memfit.infer('llama-3.1-8b', ...) by name",
              lambda: memfit.infer("llama-3.1-8b", batch=4, prompt=2048), n),
        timed("memfit.train(spec), llama-3.1-8b B=4 S=2048",
              lambda: memfit.train(spec, batch=4, seq=2048), n),
        timed("memfit.train(spec), llama-3.1-8b, 64 distinct scenarios in turn",
              cycling(lambda **kw: memfit.train(spec, **kw), distinct_train()), n),
        timed("memfit.train('llama-3.1-8b', ...) by name",
              lambda: memfit.train("llama-3.1-8b", batch=4, seq=2048), n),
        timed("memfit.train(spec), mixtral-8x7b dp=8 ZeRO-3",
              lambda: memfit.train(moe, batch=2, seq=4096, dp=8, zero=3), n),
        timed("memfit.infer(spec, engine='vllm', gpu='h100')",
              lambda: memfit.infer(spec, batch=4, prompt=2048, engine="vllm", gpu="h100"), n),
        timed("memfit.infer(spec, engine='llamacpp')",
              lambda: memfit.infer(spec, batch=4, prompt=2048, engine="llamacpp"), n),
    ]
    rows.append(("Estimate.to_dict() (the JSON, terms formatted)",
                 per_call(lambda: memfit.infer(spec, batch=4, prompt=2048).to_dict(), n // 2)[0]
                 - per_call(lambda: memfit.infer(spec, batch=4, prompt=2048), n // 2)[0],
                 "on top of the estimate"))
    return rows


def memfit_cli(quick: bool) -> tuple[list[tuple[str, float, str]], list[str]]:
    runs = 5 if quick else 15
    python = [sys.executable]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    rows = [("python -c pass (interpreter start, reference)",
             fresh_process(python + ["-c", "pass"], runs, env), ""),
            ("python -m memfit " + " ".join(CLI_ARGV),
             fresh_process(python + ["-m", "memfit", *CLI_ARGV], runs, env), "")]
    script = Path(sys.executable).with_name("memfit")
    if script.exists():
        rows.append(("memfit " + " ".join(CLI_ARGV) + " (console script)",
                     fresh_process([str(script), *CLI_ARGV], runs, env), ""))
    probe = ("import sys, io, contextlib\nfrom memfit.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             f"    main({CLI_ARGV!r})\n"
             "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run(python + ["-c", probe], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    heavy = [m for m in out if m in HEAVY]
    return rows, heavy


def random_scenarios(n: int, seed: int = 0) -> list[tuple[str, str, dict[str, Any]]]:
    """``n`` scenarios over the catalog, half inference, half training (seeded)."""
    rng = random.Random(seed)
    names = list(entry_names())
    out = []
    for _ in range(n):
        name = rng.choice(names)
        if rng.random() < 0.5:
            opts: dict[str, Any] = {
                "batch": rng.choice([1, 2, 4, 8, 16, 32, 64]),
                "prompt": rng.choice([128, 512, 1024, 2048, 4096, 8192, 32768]),
                "generate": rng.choice([0, 1, 128, 512, 2048]),
                "weights": rng.choice([None, None, "fp8-e4m3", "bnb-nf4", "gptq-int4-g128",
                                       "q4_k_m"]),
                "engine": rng.choice(["hf", "hf", "vllm", "llamacpp"]),
                "tp": rng.choice([1, 1, 2, 4, 8]),
                "gpu": rng.choice([None, "h100", "a100-sxm-80gb", "l4"]),
            }
            if opts["engine"] == "llamacpp":
                opts["tp"] = 1
            if opts["engine"] == "vllm" and opts["gpu"] is None:
                opts["gpu"] = "h100"
            out.append((name, "infer", opts))
        else:
            opts = {
                "batch": rng.choice([1, 2, 4, 8, 16]),
                "seq": rng.choice([512, 1024, 2048, 4096, 8192]),
                "precision": rng.choice(["bf16-mixed", "bf16-true", "fp32", "bf16-master"]),
                "optimizer": rng.choice(["adamw", "adamw-8bit", "sgd", "adafactor", "lion"]),
                "checkpointing": rng.choice(["none", "selective", "full"]),
                "dp": rng.choice([1, 2, 8, 64]),
                "tp": rng.choice([1, 1, 2, 4, 8]),
                "gpu": rng.choice([None, "h100", "a100-sxm-80gb"]),
            }
            if opts["dp"] > 1:
                opts["zero"] = rng.choice([0, 1, 2, 3])
            if rng.random() < 0.2:
                opts["lora_rank"] = rng.choice([8, 16, 64])
            out.append((name, "train", opts))
    return out


def memfit_grid(n: int) -> float:
    """``n`` scenarios of one model, the way ``memfit plot --sweep`` and the solvers ask: a
    batch x prompt grid (and, for every tenth, a training batch x seq one) on a spec."""
    spec = memfit.load_model("llama-3.1-8b")
    side = int(n ** 0.5) + 1
    start = CLOCK()
    done = 0
    for b in range(1, side + 1):
        for p in range(1, side + 1):
            if done == n:
                break
            if done % 10:
                memfit.infer(spec, batch=b, prompt=64 * p, generate=128)
            else:
                memfit.train(spec, batch=b, seq=64 * p)
            done += 1
    return CLOCK() - start


def grid_points(n: int) -> tuple[list[dict[str, int]], list[dict[str, int]]]:
    """:func:`memfit_grid`'s scenarios as (inference points, training points)."""
    side = int(n ** 0.5) + 1
    inf: list[dict[str, int]] = []
    tr: list[dict[str, int]] = []
    done = 0
    for b in range(1, side + 1):
        for p in range(1, side + 1):
            if done == n:
                break
            if done % 10:
                inf.append({"batch": b, "prompt": 64 * p})
            else:
                tr.append({"batch": b, "seq": 64 * p})
            done += 1
    return inf, tr


def memfit_grid_sweep(n: int) -> tuple[float, float, float]:
    """The same ``n`` scenarios through ``memfit.sweep`` (one call per mode): (seconds, of
    which inference, of which training)."""
    inf, tr = grid_points(n)
    start = CLOCK()
    memfit.sweep("llama-3.1-8b", "infer", inf, generate=128)
    mid = CLOCK()
    memfit.sweep("llama-3.1-8b", "train", tr)
    end = CLOCK()
    return end - start, mid - start, end - mid


def memfit_sweep(n: int) -> tuple[float, int, int]:
    scenarios = random_scenarios(n)
    ok = bad = 0
    start = CLOCK()
    for name, mode, opts in scenarios:
        try:
            _ = (memfit.infer if mode == "infer" else memfit.train)(name, **opts).peak_bytes
            ok += 1
        except MemfitError:
            bad += 1
    return CLOCK() - start, ok, bad


# -- peers -----------------------------------------------------------------------------------

LLM_ANALYSIS_PROBE = r"""
import json, random, sys, time, logging, io, contextlib
logging.disable(logging.CRITICAL)
t0 = time.perf_counter()
from llm_analysis.analysis import infer, train
t_import = time.perf_counter() - t0
M = "NousResearch_Llama-2-7b-hf"
def q_infer(b=1, s=1024, g=128):
    return infer(model_name=M, gpu_name="a100-sxm-80gb", dtype_name="w16a16e16",
                 log_level="CRITICAL", batch_size_per_gpu=b, seq_len=s, num_tokens_to_generate=g)
def q_train(b=1, s=2048):
    return train(model_name=M, gpu_name="a100-sxm-80gb", dtype_name="w16a16e16",
                 log_level="CRITICAL", batch_size_per_gpu=b, seq_len=s, ds_zero=3, dp_size=8,
                 total_num_gpus=8, gradient_accumulation_steps=1)
def per_call(fn, calls):
    for _ in range(calls // 10 + 1): fn()
    times = []
    for _ in range(7):
        t = time.process_time()
        for _ in range(calls): fn()
        times.append((time.process_time() - t) / calls)
    times.sort()
    return times[0], times[len(times) // 2]
calls = int(sys.argv[1]); sweep = int(sys.argv[2])
with contextlib.redirect_stdout(io.StringIO()):
    i, t = q_infer(), q_train()
    (ib, im), (tb, tm) = per_call(q_infer, calls), per_call(q_train, calls)
    out = {"import_s": t_import, "infer_s": ib, "infer_median_s": im, "train_s": tb,
           "train_median_s": tm}
    rng = random.Random(0); ok = bad = 0; start = time.process_time()
    for k in range(sweep):
        try:
            if k % 2: q_infer(rng.choice([1, 2, 4, 8, 16, 32, 64]),
                              rng.choice([128, 512, 1024, 2048, 4096]), rng.choice([1, 128, 512]))
            else: q_train(rng.choice([1, 2, 4, 8]), rng.choice([512, 1024, 2048, 4096]))
            ok += 1
        except Exception:
            bad += 1
    out["sweep_s"] = time.process_time() - start; out["sweep_ok"] = ok; out["sweep_bad"] = bad
out["infer_bytes"] = {k: i[k] for k in ("weight_memory_per_gpu", "kv_cache_memory_per_gpu",
                                        "prefill_activation_memory_per_gpu")}
out["train_bytes"] = {k: t[k] for k in ("weight_memory_per_gpu", "gradient_memory_per_gpu",
                                        "optimizer_state_memory_per_gpu",
                                        "activation_memory_per_gpu",
                                        "(weight+op_state+grad+act)_memory_per_gpu")}
print(json.dumps(out))
"""

ACCELERATE_PROBE = r"""
import json, sys, time, io, contextlib, warnings
warnings.filterwarnings("ignore")
t0 = time.perf_counter()
import transformers
from accelerate import init_empty_weights
from accelerate.utils import calculate_maximum_sizes
transformers.logging.set_verbosity_error()
t_import = time.perf_counter() - t0
folder = sys.argv[1]
def ask():
    cfg = transformers.AutoConfig.from_pretrained(folder)
    with init_empty_weights():
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    return calculate_maximum_sizes(model)
t = time.process_time(); total, largest = ask(); first = time.process_time() - t
times = []
for _ in range(int(sys.argv[2])):
    t = time.process_time(); ask(); times.append(time.process_time() - t)
times.sort()
print(json.dumps({"import_s": t_import, "first_s": first, "call_s": times[0],
                  "call_median_s": times[len(times) // 2],
                  "total_fp32_bytes": total, "largest_layer": largest[0]}))
"""


def find_llm_analysis(python: str | None) -> str | None:
    candidates = [python, os.environ.get("LLM_ANALYSIS_PYTHON"), sys.executable]
    for exe in candidates:
        if not exe:
            continue
        ok = subprocess.run([exe, "-c", "import llm_analysis"], capture_output=True)
        if ok.returncode == 0:
            return exe
    return None


def llm_analysis_rows(exe: str, quick: bool, sweep: int) -> tuple[list[Any], dict[str, Any]]:
    calls = 200 if quick else 1000
    proc = subprocess.run([exe, "-c", LLM_ANALYSIS_PROBE, str(calls), str(sweep)],
                          capture_output=True, text=True)
    if proc.returncode:
        return [("llm-analysis", float("nan"), "failed: " + proc.stderr.strip()[-200:])], {}
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    runs = 3 if quick else 7
    cli = fresh_process([exe, "-m", "llm_analysis.analysis", "infer", "--model_name",
                         "NousResearch_Llama-2-7b-hf", "--gpu_name", "a100-sxm-80gb",
                         "--seq_len", "1024", "--num_tokens_to_generate", "128",
                         "--log_level", "CRITICAL"], runs)
    rows = [("llm-analysis infer(), Llama-2-7b (in-process)", data["infer_s"],
             f"median {fmt_time(data['infer_median_s'])}"),
            ("llm-analysis train(), Llama-2-7b ZeRO-3 dp=8 (in-process)", data["train_s"],
             f"median {fmt_time(data['train_median_s'])}"),
            ("llm-analysis: import llm_analysis.analysis", data["import_s"], ""),
            ("python -m llm_analysis.analysis infer ... (fresh process)", cli, ""),
            (f"llm-analysis sweep of {sweep:,} scenarios", data["sweep_s"],
             f"{data['sweep_ok']:,} answered, {data['sweep_bad']:,} refused")]
    return rows, data


def accelerate_rows(quick: bool) -> tuple[list[Any], dict[str, Any]]:
    try:
        import accelerate  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        return [("accelerate estimate-memory", float("nan"), f"not installed: {exc}")], {}
    folder = Path(tempfile.mkdtemp(prefix="memfit-speed-"))
    (folder / "config.json").write_text(json.dumps(dict(get_entry("llama-2-7b").config)))
    proc = subprocess.run([sys.executable, "-c", ACCELERATE_PROBE, str(folder),
                           "3" if quick else "7"], capture_output=True, text=True)
    if proc.returncode:
        return [("accelerate (offline equivalent)", float("nan"),
                 "failed: " + proc.stderr.strip()[-200:])], {}
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    runs = 3 if quick else 5
    script = ("import sys, json, warnings; warnings.filterwarnings('ignore'); "
              "import transformers; from accelerate import init_empty_weights; "
              "from accelerate.utils import calculate_maximum_sizes; "
              "transformers.logging.set_verbosity_error(); "
              "cfg = transformers.AutoConfig.from_pretrained(sys.argv[1]); "
              "ctx = init_empty_weights(); ctx.__enter__(); "
              "m = transformers.AutoModelForCausalLM.from_config(cfg); "
              "print(calculate_maximum_sizes(m)[0])")
    fresh = fresh_process([sys.executable, "-c", script, str(folder)], runs)
    online = fresh_process(["accelerate", "estimate-memory", "NousResearch/Llama-2-7b-hf",
                            "--library_name", "transformers"], 1)
    rows = [("accelerate: one question (config -> meta model -> sizes), in-process",
             data["call_s"], f"median {fmt_time(data['call_median_s'])}; what "
             "estimate-memory does per model after the Hub lookup"),
            ("accelerate: same, fresh process (offline equivalent of the CLI)", fresh,
             f"imports torch + transformers: {data['import_s']:.2f} s of it"),
            ("accelerate estimate-memory NousResearch/Llama-2-7b-hf", online,
             "offline here: fails at verify_on_hub (needs the Hub)")]
    return rows, data


# -- report ----------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, a 10,000 sweep")
    ap.add_argument("--sweep", type=int, default=None, help="scenarios in the sweep")
    ap.add_argument("--peer-sweep", type=int, default=None,
                    help="scenarios in llm-analysis's sweep (default: the same)")
    ap.add_argument("--peers-python", default=None,
                    help="a Python with llm-analysis installed (or LLM_ANALYSIS_PYTHON)")
    ap.add_argument("--no-peers", action="store_true", help="memfit only")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = ap.parse_args()
    sweep = args.sweep or (10_000 if args.quick else 100_000)
    peer_sweep = args.peer_sweep or sweep

    rows: list[tuple[str, float, str]] = []
    rows += memfit_in_process(args.quick)
    cli_rows, heavy = memfit_cli(args.quick)
    rows += cli_rows
    t, ok, bad = memfit_sweep(sweep)
    rows.append((f"memfit sweep of {sweep:,} random scenarios (by name)", t,
                 f"{ok:,} answered, {bad:,} refused (MemfitError); {t / sweep * 1e6:.0f} us "
                 "each; all 62 catalog models"))
    t = memfit_grid(sweep)
    rows.append((f"memfit sweep of {sweep:,} scenarios of one model (spec, one call each)", t,
                 f"llama-3.1-8b batch x prompt grid, 1 in 10 training; "
                 f"{t / sweep * 1e6:.0f} us each"))
    t, t_inf, t_train = memfit_grid_sweep(sweep)
    n_inf = len(grid_points(sweep)[0])
    rows.append((f"memfit.sweep of the same {sweep:,} scenarios", t,
                 f"inference {t_inf:.2f} s ({t_inf / max(1, n_inf) * 1e6:.0f} us per point), "
                 f"training {t_train:.2f} s ({t_train / max(1, sweep - n_inf) * 1e6:.0f} us "
                 "per point)"))
    side: dict[str, Any] = {
        "memfit_infer": dict(memfit.infer("llama-2-7b", **INFER_Q).components),
        "memfit_train": dict(memfit.train("llama-2-7b", **TRAIN_Q).components),
    }
    if not args.no_peers:
        exe = find_llm_analysis(args.peers_python)
        if exe:
            peer_rows, side["llm_analysis"] = llm_analysis_rows(exe, args.quick, peer_sweep)
            rows += peer_rows
        else:
            rows.append(("llm-analysis", float("nan"),
                         "not installed (pip install llm-analysis, ideally in its own venv)"))
        acc_rows, side["accelerate"] = accelerate_rows(args.quick)
        rows += acc_rows

    print(f"memfit {memfit.__version__}, Python {platform.python_version()}, "
          f"{platform.platform()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d')}")
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'time':>10}  notes")
    print(f"{'-' * width}  {'-' * 10}  -----")
    for what, seconds, note in rows:
        shown = "n/a" if seconds != seconds else fmt_time(seconds)
        print(f"{what:<{width}}  {shown:>10}  {note}")
    print(f"third-party modules `memfit {CLI_ARGV[0]}` imported: {', '.join(heavy) or 'none'}")
    print()
    print("the same questions, Llama-2-7b (bytes):")
    print("  infer B=1 P=1024 G=128:", json.dumps(side["memfit_infer"]))
    print("  train B=1 S=2048 ZeRO-3 dp=8:", json.dumps(side["memfit_train"]))
    for key in ("llm_analysis", "accelerate"):
        if side.get(key):
            print(f"  {key}:", json.dumps({k: v for k, v in side[key].items()
                                          if "bytes" in k or k.startswith("total")}))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "heavy": heavy, "side": side,
                                               "medians": MEDIANS},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
