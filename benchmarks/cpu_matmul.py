"""How much faster does decoding run on CPU with the small-batch product (backends/cpu_matmul.py)?

One SmolLM2 model, switched between torch's nn.Linear and SmallBatchLinear (same weights), side
by side in one run:
1. one decoding step (KV cache, one token per row) for 1 to 32 rows, and a prefill of 16 to 256
   tokens: milliseconds each way (median of 3, alternating) and the ratio torch / small-batch;
2. whole requests on train prompts (64 tokens, T = 0.5, top-p 0.8, alternating order):
   `sample`, `best_of_n` n=8 and `linear_alignment`, seconds per generated token each way;
3. the largest difference in next-token logits between the two products (float rounding only).

    .venv/bin/python benchmarks/cpu_matmul.py [--prompts 4]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import prompt_set, served_policy_and_scorer

from alignd.backends.base import ChatPrompt, SamplingParams
from alignd.backends.cpu_matmul import SmallBatchLinear
from alignd.decoding.base import DecodeRequest, get_strategy
from alignd.decoding.weights import parse_weights


def switch(model: torch.nn.Module, small_batch: bool) -> None:
    for module in model.modules():
        if type(module) in (torch.nn.Linear, SmallBatchLinear):  # the layers use_small_batch_linears switches
            module.__class__ = SmallBatchLinear if small_batch else torch.nn.Linear


def side_by_side(model: torch.nn.Module, measure, rounds: int = 3) -> dict[bool, float]:
    """Median of `rounds` measurements each way, the two products alternating."""
    times: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(rounds):
        for small in (False, True) if round_ % 2 == 0 else (True, False):
            switch(model, small)
            times[small].append(measure())
    return {small: statistics.median(values) for small, values in times.items()}


def step_ms(policy, prompt: ChatPrompt, rows: int, steps: int = 20) -> float:
    sampling = SamplingParams(temperature=1.0, max_tokens=steps + 8)
    partial = policy.begin_many([prompt] * rows, sampling)
    partial = policy.append(partial, [100] * rows, [0.0] * rows)  # warm-up step
    started = time.perf_counter()
    for _ in range(steps):
        partial = policy.append(partial, [100] * rows, [0.0] * rows)
    return (time.perf_counter() - started) / steps * 1000


@torch.inference_mode()
def prefill_ms(model: torch.nn.Module, tokens: int, repeats: int = 4) -> float:
    ids = torch.randint(0, 30_000, (1, tokens), generator=torch.Generator().manual_seed(tokens))
    model(input_ids=ids, logits_to_keep=1)
    started = time.perf_counter()
    for _ in range(repeats):
        model(input_ids=ids, logits_to_keep=1)
    return (time.perf_counter() - started) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=4, help="train prompts for the whole-request timings")
    parser.add_argument("--out", default="benchmarks/results/cpu_matmul.json")
    args = parser.parse_args()
    policy, scorer = served_policy_and_scorer()
    model = policy.model
    prompts = prompt_set("train", args.prompts)
    results: dict = {"decode_step_ms": {}, "prefill_ms": {}, "requests_s_per_token": {}}

    print(f"{'decoding step':<22}{'torch ms':>10}{'small-batch ms':>16}{'torch / small':>15}")
    for rows in (1, 2, 4, 8, 16, 32):
        timings = side_by_side(model, functools.partial(step_ms, policy, ChatPrompt(prompts[0]), rows))
        results["decode_step_ms"][rows] = {"torch": timings[False], "small_batch": timings[True]}
        print(
            f"{rows:>3} rows{'':<14}{timings[False]:>10.1f}{timings[True]:>16.1f}"
            f"{timings[False] / timings[True]:>15.2f}"
        )
    for tokens in (16, 64, 128, 256):
        timings = side_by_side(model, functools.partial(prefill_ms, model, tokens))
        results["prefill_ms"][tokens] = {"torch": timings[False], "small_batch": timings[True]}
        print(
            f"prefill {tokens:>3} tokens{'':<7}{timings[False]:>10.1f}{timings[True]:>16.1f}"
            f"{timings[False] / timings[True]:>15.2f}"
        )

    sample, best_of_n, linear = get_strategy("sample"), get_strategy("best_of_n"), get_strategy("linear_alignment")
    arms = {
        "sample": (sample, sample.Params()),
        "best_of_n n=8": (best_of_n, best_of_n.Params(n=8)),
        "linear_alignment": (linear, linear.Params()),
    }
    weights = parse_weights({}, scorer.objective_names)
    per_token = {(arm, small): [] for arm in arms for small in (False, True)}
    for index, text in enumerate(prompts):
        sampling = SamplingParams(temperature=0.5, top_p=0.8, max_tokens=64, seed=index)
        for arm, (strategy, params) in arms.items():
            for small in (False, True) if index % 2 == 0 else (True, False):
                switch(model, small)
                result = strategy.decode(DecodeRequest(ChatPrompt(text), sampling, weights), params, policy, scorer)
                per_token[arm, small].append(result.usage.wall_seconds / max(result.usage.generated_tokens, 1))
    print(
        f"\n{'request (64 tokens)':<22}{'torch s/tok':>12}{'small s/tok':>13}{'torch / small':>15}"
        f"{'vs sample, small':>18}"
    )
    for arm in arms:
        slow, fast = statistics.median(per_token[arm, False]), statistics.median(per_token[arm, True])
        versus = statistics.median(a / b for a, b in zip(per_token[arm, True], per_token["sample", True]))
        results["requests_s_per_token"][arm] = {"torch": slow, "small_batch": fast, "vs_sample_small_batch": versus}
        print(f"{arm:<22}{slow:>12.4f}{fast:>13.4f}{slow / fast:>15.2f}{versus:>18.2f}")

    logits = {}
    for small in (False, True):
        switch(model, small)
        partial = policy.begin_many([ChatPrompt(p) for p in prompts], SamplingParams(max_tokens=4))
        partial = policy.append(partial, [100] * len(prompts), [0.0] * len(prompts))
        logits[small] = policy.next_token_logits(partial)
    difference = float((logits[True] - logits[False]).abs().max())
    results["max_logit_difference"] = difference
    print(f"\nlargest next-token logit difference between the two products: {difference:.2e}")
    switch(model, True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
