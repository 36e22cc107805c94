"""The vLLM backend against the transformers backend, one run on this machine:

1. best_of_n n=8 on vLLM vs on transformers (same prompts, scorer and settings, alternating order);
2. blockwise `controlled` (K=8, B=8) on vLLM with prefix caching on vs off (an engine each), with
   the engine's prefix-cache hit rate, and on transformers for reference (value heads read the
   vLLM backend's transformers shadow, fed each block's tokens);
3. 16 concurrent `sample` requests vs the same 16 one after another on the vLLM engine.

    .venv/bin/python benchmarks/vllm_backend.py [--prompts 8] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()

    from common import prompt_set

    from alignd import models
    from alignd.backends.base import ChatPrompt, SamplingParams
    from alignd.backends.transformers_policy import TransformersPolicy
    from alignd.backends.vllm import VLLMOptions, VLLMPolicy
    from alignd.config import ServerConfig
    from alignd.decoding.base import DecodeRequest, get_strategy
    from alignd.decoding.params import Limits, validate_params
    from alignd.decoding.weights import parse_weights
    from alignd.server.app import load_scorer

    checkpoint = models.resolve(models.DEFAULT_MODEL)
    transformers = TransformersPolicy(checkpoint, model_name=models.DEFAULT_MODEL, device="cpu")
    guided, _ = load_scorer(ServerConfig(), transformers)
    prompts = [ChatPrompt(p) for p in prompt_set("eval", args.prompts)]
    weights = parse_weights({}, guided.objective_names)
    sampling = SamplingParams(temperature=0.7, max_tokens=args.tokens)

    def run(strategy: str, params: dict, policy, scorer, prompt: ChatPrompt, seed: int):
        chosen = get_strategy(strategy)
        request = DecodeRequest(prompt, SamplingParams(**{**sampling.__dict__, "seed": seed}), weights)
        started = time.perf_counter()
        result = chosen.decode(
            request, validate_params(strategy, chosen.Params, dict(params), Limits()), policy, scorer
        )
        return time.perf_counter() - started, result

    rows: dict[str, object] = {}

    def engine(caching: bool) -> VLLMPolicy:
        started = time.perf_counter()
        policy = VLLMPolicy(
            checkpoint,
            model_name=models.DEFAULT_MODEL,
            options=VLLMOptions(max_model_len=2048, enable_prefix_caching=caching),
        )
        policy.attach_hidden_states(transformers)  # what load_scorer does when value heads are served
        print(
            f"vLLM engine (prefix caching {'on' if caching else 'off'}) started in "
            f"{time.perf_counter() - started:.0f} s",
            flush=True,
        )
        return policy

    # 1. best_of_n on both backends, alternating which goes first.
    vllm = engine(True)
    bon = {"vllm": [], "transformers": []}
    for i, prompt in enumerate(prompts):
        order = [("vllm", vllm), ("transformers", transformers)]
        for name, policy in order if i % 2 == 0 else order[::-1]:
            seconds, _ = run("best_of_n", {"n": 8}, policy, guided, prompt, seed=i)
            bon[name].append(seconds)
    ratios = [v / t for v, t in zip(bon["vllm"], bon["transformers"])]
    rows["best_of_n_seconds"] = {k: statistics.median(v) for k, v in bon.items()}
    rows["best_of_n_vllm_over_transformers"] = statistics.median(ratios)

    # 3. concurrency on the same engine.
    concurrent_prompts = [ChatPrompt(f"Say something about the number {i}.") for i in range(16)]
    short = SamplingParams(temperature=0.7, max_tokens=32, seed=1)
    started = time.perf_counter()
    for p in concurrent_prompts:
        vllm.sample([p], 1, short)
    sequential = time.perf_counter() - started
    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda p: vllm.sample([p], 1, short), concurrent_prompts))
    concurrent = time.perf_counter() - started
    rows["sixteen_requests_seconds"] = {"sequential": sequential, "concurrent": concurrent}
    rows["sequential_over_concurrent"] = sequential / concurrent

    # 2. controlled decoding on vLLM, prefix caching on, then off (a second engine); transformers
    # alongside the first for reference.
    controlled_params = {"num_candidates": 8, "block_tokens": 8}
    controlled = {}
    reference = []
    for caching in (True, False):
        if not caching:
            vllm.close()
            vllm = engine(False)
        seen, cached = vllm.prompt_tokens_seen, vllm.prompt_tokens_cached
        times = []
        for i, prompt in enumerate(prompts):
            times.append(run("controlled", controlled_params, vllm, guided, prompt, seed=i)[0])
            if caching:
                reference.append(run("controlled", controlled_params, transformers, guided, prompt, seed=i)[0])
        hit = (vllm.prompt_tokens_cached - cached) / max(vllm.prompt_tokens_seen - seen, 1)
        controlled["on" if caching else "off"] = {
            "median_seconds": statistics.median(times),
            "prefix_cache_hit_rate": hit,
        }
    vllm.close()
    controlled["transformers"] = {"median_seconds": statistics.median(reference)}
    rows["controlled"] = controlled
    rows["controlled_caching_off_over_on"] = controlled["off"]["median_seconds"] / controlled["on"]["median_seconds"]

    print(f"\n{len(prompts)} held-out prompts, {args.tokens} tokens, T=0.7, SmolLM2-135M float32, this CPU")
    print(
        f"best_of_n n=8            vLLM {rows['best_of_n_seconds']['vllm']:.2f} s   transformers "
        f"{rows['best_of_n_seconds']['transformers']:.2f} s   vLLM / transformers = "
        f"{rows['best_of_n_vllm_over_transformers']:.2f} (median of per-prompt ratios)"
    )
    for key in ("on", "off"):
        c = controlled[key]
        print(
            f"controlled K=8 B=8 vLLM, prefix caching {key:<3}  {c['median_seconds']:.2f} s   prefix-cache hit rate "
            f"{c['prefix_cache_hit_rate']:.2f}"
        )
    print(f"controlled K=8 B=8 transformers             {controlled['transformers']['median_seconds']:.2f} s")
    print(f"controlled: caching off / on = {rows['controlled_caching_off_over_on']:.2f}")
    print(
        f"16 requests (32 tokens): sequential {sequential:.2f} s, concurrent {concurrent:.2f} s, "
        f"sequential / concurrent = {rows['sequential_over_concurrent']:.2f}"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vllm_backend.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":  # vLLM starts its engine processes with spawn
    main()
