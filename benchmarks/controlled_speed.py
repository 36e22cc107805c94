"""Blockwise controlled decoding speed on the embedded model, side by side in one run.

Rows (K=8 blocks of B=8 tokens, 64 new tokens, weights 0.5 on relevance and 0.5 on positivity):
  - alignd controlled: the prefix KV cache is copied to the K candidate rows; values from the
    value heads on the hidden states the extension computed;
  - alignd controlled, prefix values: the same, values from the objectives' own scorers on the
    K partial texts (MiniLM embeddings for relevance, VADER for positivity);
  - re-encode per candidate: every block runs prompt + prefix through the model again for each
    of the K candidates (what generate(num_return_sequences=K) per block does);
  - re-encode per block: the prefix is encoded again once per block, then copied to K rows;
  - best_of_n n=8 at 64 tokens, the same generated-token budget.
Prints median-of-pairs ratios: re-encode per candidate / alignd (target >= 2),
controlled / best_of_n (target <= 1.5) and prefix values / heads (target <= 1.25).

    .venv/bin/python benchmarks/controlled_speed.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import served_policy_and_scorer

from alignd.backends.base import ChatPrompt, SamplingParams
from alignd.decoding.base import DecodeRequest, get_strategy
from alignd.decoding.weights import parse_weights

PROMPTS = [
    "Give me three tips for staying focused while studying.",
    "Explain how a refrigerator keeps food cold.",
    "Write a short packing list for a weekend hiking trip.",
    "What are the benefits of learning a second language?",
]


class Reencoding:
    """Wraps the policy so that `extend` re-encodes prompt + prefix instead of copying the cache."""

    def __init__(self, policy, per_candidate: bool) -> None:
        self.policy = policy
        self.per_candidate = per_candidate

    def __getattr__(self, name):
        return getattr(self.policy, name)

    def extend(self, partial, k, block_tokens, cancel=None):
        policy = self.policy
        text = policy.render(partial.prompt) + policy.detokenize(partial.token_ids[0])
        copies = k if self.per_candidate else 1
        with torch.inference_mode():
            fresh = policy._begin([ChatPrompt(text, raw=True)] * copies, partial.sampling, cancel)
            fresh.generator, fresh.prompt = partial.generator, partial.prompt
            fresh.forward_tokens += partial.forward_tokens
            children = policy._select(fresh, [i % copies for i in range(k)])
            children.token_ids = [list(partial.token_ids[0]) for _ in range(k)]
            children.token_logprobs = [list(partial.token_logprobs[0]) for _ in range(k)]
            policy._run(children, block_tokens, cancel)
        return children


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/controlled_speed.json")
    args = parser.parse_args()
    policy, scorer = served_policy_and_scorer()
    weights = parse_weights({"relevance": 0.5, "positivity": 0.5}, scorer.objective_names)
    controlled, best_of_n = get_strategy("controlled"), get_strategy("best_of_n")
    params = controlled.Params(num_candidates=8, block_tokens=8, value_source="heads")
    variants = {
        "alignd controlled (KV reuse)": (controlled, params, policy),
        "alignd controlled, prefix values": (
            controlled,
            controlled.Params(num_candidates=8, block_tokens=8, value_source="prefix"),
            policy,
        ),
        "re-encode per candidate": (controlled, params, Reencoding(policy, per_candidate=True)),
        "re-encode per block": (controlled, params, Reencoding(policy, per_candidate=False)),
        "best_of_n n=8": (best_of_n, best_of_n.Params(n=8), policy),
    }
    warm = DecodeRequest(ChatPrompt(PROMPTS[0]), SamplingParams(max_tokens=8, seed=0), weights)
    controlled.decode(warm, params, policy, scorer)
    controlled.decode(warm, variants["alignd controlled, prefix values"][1], policy, scorer)

    times = {name: [] for name in variants}
    tokens = {name: [] for name in variants}
    forward = {name: [] for name in variants}
    for round_index in range(args.rounds):
        for prompt_index, text in enumerate(PROMPTS):
            sampling = SamplingParams(temperature=0.7, max_tokens=64, seed=round_index * 100 + prompt_index)
            request = DecodeRequest(ChatPrompt(text), sampling, weights)
            for name, (strategy, strategy_params, variant_policy) in variants.items():
                start = time.perf_counter()
                result = strategy.decode(request, strategy_params, variant_policy, scorer)
                times[name].append(time.perf_counter() - start)
                tokens[name].append(result.usage.generated_tokens)
                forward[name].append(result.usage.lm_forward_tokens)

    base = times["alignd controlled (KV reuse)"]
    ratio = {name: statistics.median(t / b for t, b in zip(times[name], base)) for name in variants}
    print(
        f"model {policy.model_name} on {policy.device}; K=8, B=8, 64 tokens; {len(PROMPTS)} prompts x "
        f"{args.rounds} rounds"
    )
    print(f"\n{'method':<30} {'median s':>9} {'gen tokens':>11} {'LM fwd tokens':>14} {'x controlled':>13}")
    for name in variants:
        print(
            f"{name:<30} {statistics.median(times[name]):>9.2f} {statistics.mean(tokens[name]):>11.0f} "
            f"{statistics.mean(forward[name]):>14.0f} {ratio[name]:>13.2f}"
        )
    print(f"\nre-encode per candidate / controlled = {ratio['re-encode per candidate']:.2f}   (target >= 2)")
    print(f"controlled / best_of_n n=8           = {1 / ratio['best_of_n n=8']:.2f}   (target <= 1.5)")
    print(f"prefix values / heads                = {ratio['alignd controlled, prefix values']:.2f}   (target <= 1.25)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"seconds": times, "generated_tokens": tokens, "lm_forward_tokens": forward, "ratio_to_controlled": ratio},
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
