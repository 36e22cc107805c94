"""Load and soak a live server: many concurrent clients on mixed strategies, for a while.

    .venv/bin/python benchmarks/load.py                                  # load: 64 clients, 60 s
    .venv/bin/python benchmarks/load.py --duration 660 --warmup 60      # soak: 10 minutes after a warm-up

`alignd serve` runs in its own process on SmolLM2 (the four default objectives, API keys
required, default max_pending 64). `--clients` asyncio clients each send Generate requests back
to back, cycling through sample, best_of_n, controlled, multi_objective and soft_best_of_n with
small settings, each with its own key among `--keys` (so fair admission and per-key accounting
run too). Prints every status code (the pass condition: only OK and RESOURCE_EXHAUSTED), p50/p95
latency per strategy, throughput, and the server's RSS, threads and open file descriptors at
start, after the warm-up and at the end (a soak passes when RSS grows < 10% after the warm-up
and threads and descriptors do not grow). After the run the server's `alignd_pending_requests`
gauge must be 0 (no admission slot leaked) and every key must still be served. Results go to
benchmarks/results/load-<duration>s.json. Run alone.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import httpx
import psutil
from concurrency import percentile, serve_process, stop_server  # benchmarks/, on the path as the script's folder

from alignd.server.auth.keys import KeysFile
from alignd.v1 import alignd_pb2 as pb
from alignd.v1 import alignd_pb2_grpc as pb_grpc

RESULTS = Path(__file__).parent / "results"
PROMPTS = [
    "How do I keep basil alive indoors?",
    "Write one sentence about the sea.",
    "What is a good name for a grey cat?",
    "Explain what a list is in Python.",
    "Give me a tip for a job interview.",
]
# Small settings: the figures are about the server under load, not about long answers.
STRATEGIES = {
    "sample": {},
    "best_of_n": {"best_of_n": pb.BestOfNParams(n=4)},
    "controlled": {"controlled": pb.ControlledParams(num_candidates=4, block_tokens=8)},
    "multi_objective": {"multi_objective": pb.MultiObjectiveParams(num_candidates=4, block_tokens=8)},
    "soft_best_of_n": {"soft_best_of_n": pb.SoftBestOfNParams(n=4)},
}


def snapshot(process: psutil.Process) -> dict[str, float]:
    return {"rss_mib": process.memory_info().rss / 2**20, "threads": process.num_threads(), "fds": process.num_fds()}


async def client(
    number: int,
    target: str,
    key: str,
    stop_at: float,
    latencies: dict[str, list[float]],
    codes: collections.Counter[str],
    details: dict[str, str],
) -> None:
    metadata = (("authorization", f"Bearer {key}"),)
    names = list(STRATEGIES)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.AligndStub(channel)
        i = number
        while time.monotonic() < stop_at:
            name = names[i % len(names)]
            request = pb.GenerateRequest(
                prompt=PROMPTS[i % len(PROMPTS)],
                strategy=name,
                sampling=pb.SamplingParams(max_tokens=16, seed=i),
                **STRATEGIES[name],
            )
            i += 1
            started = time.perf_counter()
            try:
                await stub.Generate(request, timeout=300, metadata=metadata)
                codes["OK"] += 1
                latencies[name].append(time.perf_counter() - started)
            except grpc.aio.AioRpcError as error:
                codes[error.code().name] += 1
                details.setdefault(error.code().name, error.details() or "")
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    await asyncio.sleep(0.2)  # back off, as a client should


async def run(
    target: str, keys: list[str], args: argparse.Namespace, server: psutil.Process, metrics_port: int
) -> dict:
    latencies: dict[str, list[float]] = collections.defaultdict(list)
    codes: collections.Counter[str] = collections.Counter()
    details: dict[str, str] = {}
    start = snapshot(server)
    began = time.monotonic()
    stop_at = began + args.duration
    tasks = [
        asyncio.create_task(client(n, target, keys[n % len(keys)], stop_at, latencies, codes, details))
        for n in range(args.clients)
    ]
    warm = start
    if args.warmup:
        await asyncio.sleep(args.warmup)
        warm = snapshot(server)
        print(f"after the warm-up: {warm}", flush=True)
    samples = []
    while not all(t.done() for t in tasks):
        await asyncio.sleep(min(30, max(1, args.duration / 20)))
        samples.append({"t": time.monotonic() - began, **snapshot(server)})
        print(f"  {samples[-1]['t']:.0f} s: {dict(codes)} {samples[-1]}", flush=True)
    await asyncio.gather(*tasks)
    end = snapshot(server)
    served_after = [await served(target, key) for key in keys]
    pending_after = pending_requests(metrics_port)
    await asyncio.sleep(2)  # idle: what stays
    idle = snapshot(server)
    return {
        "codes": dict(codes),
        "details": details,
        "latency": {
            name: {"n": len(v), "p50": percentile(v, 0.5), "p95": percentile(v, 0.95), "mean": statistics.fmean(v)}
            for name, v in latencies.items()
            if v
        },
        "all_latencies": [x for v in latencies.values() for x in v],
        "seconds": time.monotonic() - began,
        "start": start,
        "warm": warm,
        "end": end,
        "idle": idle,
        "samples": samples,
        "every_key_served_after": all(served_after),
        "pending_after": pending_after,
    }


def pending_requests(metrics_port: int) -> float:
    """The server's alignd_pending_requests gauge (its Prometheus endpoint)."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).text
    found = re.search(r"^alignd_pending_requests (\S+)$", text, re.MULTILINE)
    assert found is not None, "no alignd_pending_requests in /metrics"
    return float(found.group(1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def served(target: str, key: str) -> bool:
    """One short request with the key, after the load: an admission slot leaked would refuse it."""
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            await pb_grpc.AligndStub(channel).Generate(
                pb.GenerateRequest(prompt="Hi.", sampling=pb.SamplingParams(max_tokens=2)),
                timeout=120,
                metadata=(("authorization", f"Bearer {key}"),),
            )
        except grpc.aio.AioRpcError as error:
            print(f"after the load, a key was refused: {error.code().name} {error.details()}")
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds before the reference snapshot")
    parser.add_argument("--keys", type=int, default=4, help="API keys the clients share out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        keys_file = KeysFile(Path(folder) / "keys.json")
        keys = [keys_file.create("user", f"load-{n}")[0] for n in range(args.keys)]
        metrics_port = free_port()
        process, line = serve_process(
            ["--auth", "--keys-file", str(keys_file.path), "--metrics-port", str(metrics_port)],
            Path(folder) / "serve.log",
        )
        found = re.search(r"on [\d.]+:(\d+)", line)
        assert found is not None
        server = psutil.Process(process.pid)
        try:
            result = asyncio.run(run(f"127.0.0.1:{found.group(1)}", keys, args, server, metrics_port))
            alive = process.poll() is None
        finally:
            stop_server(process)
    codes = result["codes"]
    other = {c: n for c, n in codes.items() if c not in ("OK", "RESOURCE_EXHAUSTED")}
    everything = result.pop("all_latencies")
    print(f"\n{args.clients} clients, {result['seconds']:.0f} s, {len(keys)} keys: {codes}")
    for code, text in result["details"].items():
        print(f"  {code}: e.g. {text}")
    print(f"throughput {codes.get('OK', 0) / result['seconds']:.2f} answers/s")
    print(f"{'strategy':<18}{'answers':>8}{'p50 s':>9}{'p95 s':>9}")
    for name, row in result["latency"].items():
        print(f"{name:<18}{row['n']:>8}{row['p50']:>9.2f}{row['p95']:>9.2f}")
    if everything:
        print(f"{'all':<18}{len(everything):>8}{percentile(everything, 0.5):>9.2f}{percentile(everything, 0.95):>9.2f}")
    for moment in ("start", "warm", "end", "idle"):
        print(f"server {moment:<6} {result[moment]}")
    growth = result["end"]["rss_mib"] / result["warm"]["rss_mib"] - 1
    # RSS swings by a few percent with the batches in flight: compare the thirds of the run after
    # the warm-up too, which a single snapshot's luck does not decide.
    after = [x["rss_mib"] for x in result["samples"] if x["t"] > args.warmup]
    third = max(1, len(after) // 3)
    trend = statistics.fmean(after[-third:]) / statistics.fmean(after[:third]) - 1 if after else 0.0
    threads = result["idle"]["threads"] - result["warm"]["threads"]
    fds = result["idle"]["fds"] - result["warm"]["fds"]
    since = "the warm-up" if args.warmup else "start"
    print(
        f"RSS growth after {since}: {100 * growth:+.1f}% (end vs then), {100 * trend:+.1f}% (last third vs "
        f"first third of the samples, max {max(after, default=0):.0f} MiB); threads {threads:+d}, fds {fds:+d}"
    )
    result.update(
        clients=args.clients,
        duration=args.duration,
        warmup=args.warmup,
        alive=alive,
        rss_growth=growth,
        rss_trend=trend,
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"load-{args.duration:.0f}s.json").write_text(json.dumps(result, indent=2))
    print(f"pending after the run: {result['pending_after']:g}; every key served: {result['every_key_served_after']}")
    ok = (
        alive
        and not other
        and result["every_key_served_after"]
        and result["pending_after"] == 0
        and (not args.warmup or (growth < 0.10 and trend < 0.10 and threads <= 0 and fds <= 0))
    )
    print("PASS" if ok else f"FAIL (other codes: {other})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
