"""What the OpenAI-compatible HTTP API adds to a request, next to gRPC, on one live server.

    .venv/bin/python benchmarks/http_overhead.py [--pairs 200] [--tokens 8]

`alignd serve --port 0 --http-port 0` runs in its own process on SmolLM2. The same greedy `sample`
request of `tokens` tokens (same prompt, same answer, so the same decoding work) is sent through
gRPC (the generated stub), through HTTP with a keep-alive httpx client (the transport the openai
SDK uses), and through the openai SDK itself, in interleaved rounds whose order rotates. Prints
p50/p95 per path, the p50 differences and the median of per-round differences (HTTP - gRPC)
with a distribution-free 95% interval.
The server serves only `conciseness` by default: with the four default objectives scoring costs
most of a request and its jitter hides a few milliseconds (`--objectives` changes it).
Run alone: another torch process on 2 cores skews every number.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import grpc
import httpx
import openai
from concurrency import serve_process, stop_server  # benchmarks/, on the path as the script's folder

from alignd.v1 import alignd_pb2 as pb
from alignd.v1 import alignd_pb2_grpc as pb_grpc

RESULTS = Path(__file__).parent / "results"
MODEL = "smollm2-135m-instruct"
PROMPT = "Name a colour."


def start_server(log: Path, objectives: list[str]) -> tuple[subprocess.Popen, int, int]:
    """The server with its HTTP API; the process, its gRPC port and its HTTP port."""
    process, line = serve_process(["--http-port", "0", "--objectives", *objectives], log)
    found = re.search(r"on [\d.]+:(\d+) .*HTTP API on [\d.]+:(\d+)", line)
    if found is None:
        stop_server(process)
        raise SystemExit(f"no HTTP port in the start-up line: {line}")
    return process, int(found.group(1)), int(found.group(2))


def translation_microseconds(body: dict, response: pb.GenerateResponse, rounds: int = 2000) -> float:
    """What the HTTP API computes that gRPC does not, timed alone: validating the body, building
    the GenerateRequest, and the answer's JSON (the server's share of the difference)."""
    from alignd.server.openai_api.app import Reply
    from alignd.server.openai_api.schema import ChatBody, generate_request, parse_body

    started = time.perf_counter()
    for _ in range(rounds):
        generate_request(parse_body(ChatBody, body))
        json.dumps(Reply(MODEL, True, response.request_id).complete([response]))
    return (time.perf_counter() - started) / rounds * 1e6


def median_interval(ordered: list[float]) -> tuple[float, float]:
    """A distribution-free 95% interval for the median of `ordered` (sorted): the order statistics
    that the binomial(n, 1/2) count of values below the median puts it between."""
    n = len(ordered)
    k = max(0, int(n / 2 - 1.96 * math.sqrt(n) / 2))
    return ordered[k], ordered[min(n - 1, n - k - 1)]


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=200, help="measured rounds (each sends one request per path)")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument(
        "--objectives",
        nargs="+",
        default=["conciseness"],
        help="served objectives (default: the cheapest, so that scoring's noise does not hide the transport's cost)",
    )
    args = parser.parse_args()

    log = Path(tempfile.mkdtemp()) / "serve.log"
    process, grpc_port, http_port = start_server(log, args.objectives)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = pb_grpc.AligndStub(channel)
        grpc_request = pb.GenerateRequest(
            prompt=PROMPT, strategy="sample", sampling=pb.SamplingParams(temperature=0.0, max_tokens=args.tokens)
        )
        http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=60)
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": args.tokens,
            "temperature": 0.0,
            "alignd": {"strategy": "sample"},
        }
        sdk = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="unused", max_retries=0)

        def via_grpc() -> str:
            return stub.Generate(grpc_request, timeout=60).text

        def via_http() -> str:
            reply = http.post("/v1/chat/completions", json=body)
            reply.raise_for_status()
            return reply.json()["choices"][0]["message"]["content"]

        def via_sdk() -> str:
            out = sdk.chat.completions.create(
                model=MODEL,
                messages=body["messages"],
                max_tokens=args.tokens,
                temperature=0.0,
                extra_body={"alignd": {"strategy": "sample"}},
            )
            return out.choices[0].message.content or ""

        translation = translation_microseconds(body, stub.Generate(grpc_request, timeout=60))
        paths = {"grpc": via_grpc, "http": via_http, "openai_sdk": via_sdk}
        answers = {name: call() for name, call in paths.items()}
        assert len(set(answers.values())) == 1, f"the paths decoded different answers: {answers}"
        for _ in range(10):  # warm-up
            for call in paths.values():
                call()
        times: dict[str, list[float]] = {name: [] for name in paths}
        names = list(paths)
        for round_ in range(args.pairs):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                started = time.perf_counter()
                paths[name]()
                times[name].append((time.perf_counter() - started) * 1000)
    finally:
        stop_server(process)

    p50 = {name: statistics.median(values) for name, values in times.items()}
    differences = sorted(h - g for h, g in zip(times["http"], times["grpc"]))
    paired = statistics.median(differences)
    low, high = median_interval(differences)
    print(
        f"same greedy sample request of {args.tokens} tokens, {args.pairs} interleaved rounds, "
        f"objectives {' '.join(args.objectives)}"
    )
    print(f"{'path':<12}{'p50 ms':>10}{'p95 ms':>10}{'p50 - grpc':>12}")
    for name, values in times.items():
        print(f"{name:<12}{p50[name]:>10.2f}{quantile(values, 0.95):>10.2f}{p50[name] - p50['grpc']:>+12.2f}")
    print(
        f"median of per-round differences, http - grpc: {paired:+.2f} ms, 95% interval "
        f"[{low:+.2f}, {high:+.2f}] (target <= 3 ms)"
    )
    print(f"the HTTP layer's own work (body -> GenerateRequest, answer -> JSON): {translation:.0f} us per request")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "http_overhead.json").write_text(
        json.dumps(
            {
                "tokens": args.tokens,
                "pairs": args.pairs,
                "objectives": args.objectives,
                "p50_ms": p50,
                "paired_http_minus_grpc_ms": paired,
                "paired_interval_ms": [low, high],
                "translation_us": translation,
            }
        )
    )


if __name__ == "__main__":
    main()
