"""What does steering each row with its own preference-vector strengths cost in a decoding step?

The embedded model with the shipped vectors (or --vectors PATH), side by side in one run:
1. one decoding step of 16 rows (KV cache, one token per row) on the model without vectors
   ("no vectors"), with vectors loaded but no row steered ("plain": the hooks skip the deltas),
   and with the 16 rows at mixed strengths (each vector at one of -1, -0.5, 0, 0.5, 1, a
   different mix per row): milliseconds each way (median over steps, rounds alternating) and
   the ratios to "no vectors";
2. the same for a 16-row prompt prefill;
3. memory: the model's weights against the vectors' stacked factors (no merged copy exists).

    .venv/bin/python benchmarks/preference_vectors_speed.py [--rows 16] [--rounds 6]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import prompt_set, shipped_or_given_vectors

from alignd import models
from alignd.backends.base import ChatPrompt, SamplingParams, Steering
from alignd.backends.transformers_policy import TransformersPolicy

STRENGTHS = (-1.0, -0.5, 0.0, 0.5, 1.0)


def mixed_steering(names: tuple[str, ...], rows: int) -> list[Steering]:
    """Row r gets the r-th combination of strengths (cycled): every row a different mix."""
    combinations = list(itertools.product(STRENGTHS, repeat=len(names)))
    return [
        tuple((n, eta) for n, eta in zip(names, combinations[(7 * r + 3) % len(combinations)]) if eta != 0.0)
        for r in range(rows)
    ]


def step_milliseconds(policy: TransformersPolicy, prompts, steering, steps: int) -> tuple[float, float]:
    """Median milliseconds of a prefill and of one decoding step of every row."""
    sampling = SamplingParams(temperature=1.0, max_tokens=steps + 2, seed=0)
    start = time.perf_counter()
    partial = policy.begin_many(prompts, sampling, steering=steering)
    prefill = (time.perf_counter() - start) * 1000
    times = []
    for step in range(steps):
        tokens = [100 + step] * partial.rows  # teacher-forced: every row live for every step
        start = time.perf_counter()
        policy.append(partial, tokens, [0.0] * partial.rows)
        times.append((time.perf_counter() - start) * 1000)
    return prefill, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=24, help="decoding steps timed per round")
    parser.add_argument("--vectors", default="", help="a vectors file (default: the shipped ones)")
    parser.add_argument("--json", default="", help="also write the figures here")
    args = parser.parse_args()

    vectors = shipped_or_given_vectors(args.vectors)
    checkpoint = models.resolve(models.DEFAULT_MODEL)
    policy = TransformersPolicy(checkpoint, model_name=models.DEFAULT_MODEL, vectors=vectors)
    unloaded = TransformersPolicy(checkpoint, model_name=models.DEFAULT_MODEL)
    prompts = [ChatPrompt(p) for p in prompt_set("train", args.rows)]
    conditions = {
        "no vectors": (unloaded, [()] * args.rows),
        "plain": (policy, [()] * args.rows),
        "mixed": (policy, mixed_steering(vectors.names, args.rows)),
    }
    for model, steering in conditions.values():
        step_milliseconds(model, prompts, steering, 4)  # warm-up
    prefill: dict[str, list[float]] = {name: [] for name in conditions}
    decode: dict[str, list[float]] = {name: [] for name in conditions}
    for round_ in range(args.rounds):
        order = list(conditions) if round_ % 2 == 0 else list(reversed(conditions))
        for name in order:
            first, step = step_milliseconds(*conditions[name][:1], prompts, conditions[name][1], args.steps)
            prefill[name].append(first)
            decode[name].append(step)
    figures = {
        "rows": args.rows,
        "dtype": policy.dtype,
        "vectors": list(vectors.names),
        "decode_step_ms": {name: statistics.median(values) for name, values in decode.items()},
        "prefill_ms": {name: statistics.median(values) for name, values in prefill.items()},
    }
    for key in ("decode_step_ms", "prefill_ms"):
        times = figures[key]
        figures[key.replace("_ms", "_ratio")] = {name: times[name] / times["no vectors"] for name in conditions}
    model_bytes = sum(p.numel() * p.element_size() for p in policy.model.parameters())
    factor_bytes = sum(
        (d.down.numel() + d.up.numel()) * policy.model.dtype.itemsize
        for layers in vectors.deltas.values()
        for d in layers.values()
    )
    figures["model_mb"], figures["factors_mb"] = model_bytes / 2**20, factor_bytes / 2**20
    print(f"{args.rows} rows, {policy.dtype}, vectors {list(vectors.names)}, {torch.get_num_threads()} threads")
    print(f"{'':16}" + "".join(f"{name + ' ms':>16}" for name in conditions) + f"{'plain/none':>12}{'mixed/none':>12}")
    for label, key in (("decoding step", "decode_step"), ("prompt prefill", "prefill")):
        times, ratios = figures[f"{key}_ms"], figures[f"{key}_ratio"]
        print(
            f"{label:16}"
            + "".join(f"{times[name]:16.1f}" for name in conditions)
            + f"{ratios['plain']:12.3f}{ratios['mixed']:12.3f}"
        )
    print(
        f"memory: model weights {figures['model_mb']:.1f} MiB; every vector's factors {figures['factors_mb']:.2f} MiB "
        "(applied per row, no merged copy)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
