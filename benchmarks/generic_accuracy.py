#!/usr/bin/env python3
"""The generic path against the tracer at full depth, over many transformers model types.

For each model type (transformers' default config for it, full size, on fake tensors), runs
``memfit.generic`` (reduced-depth traces, extrapolated) in a fresh cache folder and one trace
of the whole model built the same way, and prints the signed error of the peak, the depths
traced and the time of each. Encoders are checked in training only (``infer`` needs a model
that generates).

    python benchmarks/generic_accuracy.py                  # the default list
    python benchmarks/generic_accuracy.py mamba jamba      # some types
    python benchmarks/generic_accuracy.py --seq 256 --batch 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

TYPES = ("mamba", "mamba2", "falcon_h1", "qwen3_next", "jamba", "starcoder2", "gpt_bigcode",
         "falcon", "cohere", "cohere2", "glm4", "glm4_moe", "phimoe", "olmoe", "opt", "gptj",
         "phi", "stablelm", "mpt", "exaone4", "gpt_neo", "bloom", "olmo", "helium",
         "smollm3", "llava", "mllama", "llama4", "gemma3", "recurrent_gemma", "bert",
         "modernbert", "roberta")
ENCODERS = ("bert", "modernbert", "roberta")


def run(model_type: str, batch: int, seq: int) -> list[str]:
    from memfit.errors import MemfitError
    from memfit.generic import generic_infer, generic_train
    from memfit.generic.estimate import _trace
    from memfit.workload import InferenceOptions, TrainingOptions

    config = {"model_type": model_type}
    rows = []
    cases = [("train", TrainingOptions(batch=batch, seq=seq), generic_train)]
    if model_type not in ENCODERS:
        cases.insert(0, ("infer", InferenceOptions(batch=batch, prompt=seq, generate=4),
                         generic_infer))
    for workload, options, generic in cases:
        try:
            t0 = time.perf_counter()
            got = generic(config, options, model_type)
            t1 = time.perf_counter()
            full = _trace(config, None, options, workload)
            t2 = time.perf_counter()
        except MemfitError as exc:
            rows.append(f"{model_type:16s} {workload:5s} refused: {str(exc)[:150]}")
            continue
        err = (got.peak_bytes - full["peak"]) / full["peak"]
        same = dict(got.components) == full["components"]
        rows.append(f"{model_type:16s} {workload:5s} {err:+.5%} components_equal={same} "
                    f"depths={'/'.join(map(str, got.traced_depths))} of {got.num_layers} "
                    f"generic {t1 - t0:.1f}s full {t2 - t1:.1f}s")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("types", nargs="*", default=list(TYPES))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq", type=int, default=128)
    args = p.parse_args()
    os.environ["MEMFIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="memfit-generic-")
    for model_type in args.types:
        for row in run(model_type, args.batch, args.seq):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
