"""best_of_n speed on the embedded model, measured side by side in one run.

Prints, for 64 new tokens per response:
  - best_of_n (n=8) wall time / one `sample`            (target <= 2.5 on a 2-core CPU)
  - naive sequential best-of-8 / alignd best_of_n      (target >= 3)
The naive baseline is what a client would do without alignd: 8 separate generations (each
re-encoding the prompt) and 8 separate scorer calls. Rounds are interleaved so machine noise hits
all three alike; medians over rounds are reported. Writes JSON next to the table.

    .venv/bin/python benchmarks/best_of_n_speed.py [--rounds 3] [--tokens 64] [--n 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from alignd import models
from alignd.backends.base import ChatPrompt, SamplingParams
from alignd.backends.transformers_policy import TransformersPolicy
from alignd.decoding.base import DecodeRequest, get_strategy
from alignd.decoding.weights import parse_weights
from alignd.rewardmodels.builtin import build_scorer

PROMPTS = [
    "Give me three tips for staying focused while studying.",
    "Explain how a refrigerator keeps food cold.",
    "Write a short packing list for a weekend hiking trip.",
    "What are the benefits of learning a second language?",
]


def naive_best_of_n(policy, scorer, prompt: ChatPrompt, n: int, sampling: SamplingParams, weights) -> float:
    """n independent generations and n scorer calls, then the argmax: the no-server baseline."""
    scores, tokens = [], 0
    for i in range(n):
        seeded = SamplingParams(**{**sampling.__dict__, "seed": sampling.seed * 1000 + i})
        completion = policy.sample([prompt], 1, seeded).completions[0][0]
        tokens += len(completion.token_ids)
        rewards = scorer.score([prompt.user], [completion.text])
        scores.append(float(weights.weighted(rewards)[0]))
    best = int(np.argmax(scores))  # the selection a client would make; its cost is nil
    assert 0 <= best < n
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/best_of_n_speed.json")
    args = parser.parse_args()

    policy = TransformersPolicy(models.resolve(models.DEFAULT_MODEL), model_name=models.DEFAULT_MODEL, device="auto")
    scorer = build_scorer(device=policy.device)
    weights = parse_weights({}, scorer.objective_names)
    sample, best_of_n = get_strategy("sample"), get_strategy("best_of_n")
    print(
        f"model {policy.model_name} on {policy.device}, torch threads {torch.get_num_threads()}, "
        f"{args.tokens} new tokens, n={args.n}, {len(PROMPTS)} prompts x {args.rounds} rounds"
    )

    # Warm-up: first calls pay for lazy initialisation in torch and the tokenizers.
    warm = DecodeRequest(ChatPrompt(PROMPTS[0]), SamplingParams(max_tokens=8, seed=0), weights)
    best_of_n.decode(warm, best_of_n.Params(n=2), policy, scorer)

    times: dict[str, list[float]] = {"sample": [], "best_of_n": [], "naive": []}
    tokens: dict[str, list[int]] = {"sample": [], "best_of_n": [], "naive": []}
    for round_index in range(args.rounds):
        for prompt_index, text in enumerate(PROMPTS):
            prompt = ChatPrompt(text)
            sampling = SamplingParams(temperature=0.7, max_tokens=args.tokens, seed=round_index * 100 + prompt_index)
            request = DecodeRequest(prompt, sampling, weights)

            start = time.perf_counter()
            result = sample.decode(request, sample.Params(), policy, scorer)
            times["sample"].append(time.perf_counter() - start)
            tokens["sample"].append(result.usage.generated_tokens)

            start = time.perf_counter()
            result = best_of_n.decode(request, best_of_n.Params(n=args.n), policy, scorer)
            times["best_of_n"].append(time.perf_counter() - start)
            tokens["best_of_n"].append(result.usage.generated_tokens)

            start = time.perf_counter()
            naive_tokens = naive_best_of_n(policy, scorer, prompt, args.n, sampling, weights)
            times["naive"].append(time.perf_counter() - start)
            tokens["naive"].append(naive_tokens)

    median = {k: statistics.median(v) for k, v in times.items()}
    # Ratios per (round, prompt) pair, then the median: each pair ran back to back.
    bon_over_sample = statistics.median(b / s for b, s in zip(times["best_of_n"], times["sample"]))
    naive_over_bon = statistics.median(nv / b for nv, b in zip(times["naive"], times["best_of_n"]))
    rows = [
        ("sample (1 response)", median["sample"], statistics.mean(tokens["sample"])),
        (f"best_of_n n={args.n} (alignd)", median["best_of_n"], statistics.mean(tokens["best_of_n"])),
        (f"naive sequential best-of-{args.n}", median["naive"], statistics.mean(tokens["naive"])),
    ]
    print(f"\n{'method':<32} {'median s':>9} {'mean tokens':>12}")
    for name, seconds, mean_tokens in rows:
        print(f"{name:<32} {seconds:>9.2f} {mean_tokens:>12.1f}")
    print(f"\nbest_of_n / sample           = {bon_over_sample:.2f}   (target <= 2.5)")
    print(f"naive sequential / best_of_n = {naive_over_bon:.2f}   (target >= 3)")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "model": policy.model_name,
                "device": policy.device,
                "tokens": args.tokens,
                "n": args.n,
                "rounds": args.rounds,
                "prompts": PROMPTS,
                "seconds": times,
                "generated_tokens": tokens,
                "best_of_n_over_sample": bon_over_sample,
                "naive_over_best_of_n": naive_over_bon,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
