"""Many users at once: throughput and latency of a live `alignd serve`, requests one by one vs
concurrent, per strategy and backend; a closed-loop load run; and the dtype choice.

    .venv/bin/python benchmarks/concurrency.py table [--backend transformers vllm] [--tokens 64]
    .venv/bin/python benchmarks/concurrency.py load [--clients 32] [--seconds 30] [--serve-from DIR]
    .venv/bin/python benchmarks/concurrency.py dtype [--prompts 0] [--tokens 32]

`table`: for each strategy, 16 requests (distinct train prompts, fixed seeds) sent one by one,
then the first 4 and all 16 sent at once; throughput (requests/s), p50/p95 latency, and
sequential / concurrent = (sum of the one-by-one latencies) / (concurrent wall time), side by
side in one run. `load`: `clients` threads each sending 8-token sample / best_of_n requests
back to back for `seconds`; answers, throughput, p50/p95 latency. `--serve-from` runs the server
of another checkout (e.g. a worktree of an older commit) for a before/after. `dtype`: one-row
decoding step of float32 vs bfloat16 on this CPU, and how often bf16's greedy tokens equal
float32's over the first `tokens` tokens of the eval prompts.

The server runs in its own process (`alignd serve --port 0`), so the clients' threads do not
share its interpreter. Run alone: another torch process on 2 cores skews every number.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent

# Each strategy as the table runs it (parameters chosen for cost, not quality).
STRATEGIES: dict[str, dict] = {
    "sample": {},
    "best_of_n": {"n": 4},
    "controlled": {"num_candidates": 4, "block_tokens": 8},
    "linear_alignment": {},
}
UNSUPPORTED = {"vllm": {"linear_alignment"}}  # needs next-token logits the vLLM backend does not give


def serve_process(args: list[str], log: Path, serve_from: Path | None = None) -> tuple[subprocess.Popen, str]:
    """`alignd serve --port 0 ARGS` in its own process; returns it and its start-up line (which
    names the ports it bound)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if serve_from is not None:
        env["PYTHONPATH"] = str(serve_from)
    process = subprocess.Popen(
        [sys.executable, "-m", "alignd.cli", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env=env,
        cwd=serve_from or ROOT,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if select.select([process.stdout], [], [], 1.0)[0]:
            line = process.stdout.readline()
            if re.search(r"alignd serving .*? on [\d.]+:(\d+)", line):
                print(line.strip(), flush=True)
                return process, line
    process.kill()
    raise RuntimeError(f"alignd serve did not start: {log.read_text()[-2000:]}")


def start_server(backend: str, serve_from: Path | None, log: Path) -> tuple[subprocess.Popen, str]:
    """`alignd serve` on a free port; returns the process and its target."""
    process, line = serve_process(["--backend", backend], log, serve_from)
    found = re.search(r"alignd serving .*? on [\d.]+:(\d+)", line)
    assert found is not None
    return process, f"127.0.0.1:{found.group(1)}"


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(call: Callable[..., object], *args: object, **kwargs: object) -> float:
    """Seconds that call(*args, **kwargs) takes."""
    started = time.perf_counter()
    call(*args, **kwargs)
    return time.perf_counter() - started


def table(args: argparse.Namespace) -> dict:
    from common import prompt_set

    from alignd.clients.client import AligndClient

    prompts = prompt_set("train", 16)
    rows: dict[str, dict] = {}
    for backend in args.backend:
        with tempfile.TemporaryDirectory() as scratch:
            process, target = start_server(backend, None, Path(scratch) / "serve.log")
            try:
                client = AligndClient(target, timeout=3600)
                client.generate("warm up", strategy="sample", max_tokens=4, seed=0)
                for strategy, params in STRATEGIES.items():
                    if strategy in UNSUPPORTED.get(backend, set()):
                        continue

                    def request(i: int, strategy: str = strategy, params: dict = params, client=client) -> float:
                        options = {"max_tokens": args.tokens, "seed": i, **params}
                        return timed(client.generate, prompts[i], strategy=strategy, **options)

                    one_by_one = [request(i) for i in range(16)]
                    row = {"sequential": {"latencies": one_by_one}}
                    for clients in (4, 16):
                        with ThreadPoolExecutor(clients) as pool:
                            started = time.perf_counter()
                            latencies = list(pool.map(request, range(clients)))
                            wall = time.perf_counter() - started
                        row[str(clients)] = {
                            "wall": wall,
                            "latencies": latencies,
                            "sequential_over_concurrent": sum(one_by_one[:clients]) / wall,
                        }
                    rows[f"{backend}/{strategy}"] = row
                    print_row(backend, strategy, row, flush=True)
                client.close()
            finally:
                stop_server(process)
    return rows


def print_row(backend: str, strategy: str, row: dict, flush: bool = False) -> None:
    seq = row["sequential"]["latencies"]
    cells = [
        f"{backend:<12} {strategy:<17} 1: {1 / statistics.mean(seq):5.2f} req/s p50 {statistics.median(seq):6.1f} s"
    ]
    for clients in ("4", "16"):
        lat = row[clients]["latencies"]
        cells.append(
            f"{clients}: {int(clients) / row[clients]['wall']:5.2f} req/s p50 {statistics.median(lat):6.1f} s "
            f"p95 {percentile(lat, 0.95):6.1f} s  seq/conc {row[clients]['sequential_over_concurrent']:4.2f}x"
        )
    print(" | ".join(cells), flush=flush)


def load(args: argparse.Namespace) -> dict:
    from common import prompt_set

    from alignd.clients.client import AligndClient

    prompts = prompt_set("train")
    with tempfile.TemporaryDirectory() as scratch:
        process, target = start_server("transformers", args.serve_from, Path(scratch) / "serve.log")
        try:
            AligndClient(target).generate("warm up", strategy="sample", max_tokens=4, seed=0)
            latencies: list[float] = []
            errors: list[str] = []
            lock = threading.Lock()
            started = time.perf_counter()
            stop_at = started + args.seconds

            def user(index: int) -> None:
                client = AligndClient(target, timeout=600)
                sent = 0
                while time.perf_counter() < stop_at:
                    strategy, params = ("sample", {}) if (index + sent) % 2 == 0 else ("best_of_n", {"n": 4})
                    prompt = prompts[(index * 7 + sent) % len(prompts)]
                    try:
                        seconds = timed(client.generate, prompt, strategy=strategy, max_tokens=8, seed=sent, **params)
                        with lock:
                            latencies.append(seconds)
                    except Exception as error:
                        with lock:
                            errors.append(str(error))
                    sent += 1
                client.close()

            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(user, range(args.clients)))
            wall = time.perf_counter() - started
        finally:
            stop_server(process)
    result = {
        "server": str(args.serve_from or "this checkout"),
        "clients": args.clients,
        "seconds": args.seconds,
        "answers": len(latencies),
        "errors": len(errors),
        "wall": wall,
        "throughput": len(latencies) / wall,
        "p50": statistics.median(latencies),
        "p95": percentile(latencies, 0.95),
    }
    print(
        f"{args.clients} clients, 8-token sample/best_of_n n=4 for {args.seconds} s against {result['server']}: "
        f"{len(latencies)} answers ({len(errors)} errors) in {wall:.1f} s, {result['throughput']:.2f} req/s, "
        f"p50 {result['p50']:.1f} s, p95 {result['p95']:.1f} s"
    )
    return result


def dtype(args: argparse.Namespace) -> dict:
    import torch
    from common import prompt_set

    from alignd import models
    from alignd.backends.base import ChatPrompt, SamplingParams
    from alignd.backends.transformers_policy import TransformersPolicy, resolve_dtype

    checkpoint = models.resolve(models.DEFAULT_MODEL)
    prompts = [ChatPrompt(p) for p in prompt_set("eval", args.prompts)]
    greedy = SamplingParams(temperature=0.0, max_tokens=args.tokens)
    results: dict = {"auto": resolve_dtype("auto", torch.device("cpu")), "tokens": {}, "step_ms": {}}
    for name in ("float32", "bfloat16"):
        policy = TransformersPolicy(checkpoint, model_name=models.DEFAULT_MODEL, device="cpu", dtype=name)
        one = SamplingParams(temperature=0.0, max_tokens=16)
        policy.sample([prompts[0]], 1, one)  # warm up
        steps = [timed(policy.sample, [prompts[i]], 1, one) / 16 for i in range(1, 4)]
        results["step_ms"][name] = 1000 * statistics.median(steps)
        sixteen = SamplingParams(temperature=1.0, max_tokens=16, seed=0)
        results["step_ms"][f"{name} x16 rows"] = 1000 * timed(policy.sample, [prompts[1]], 16, sixteen) / 16
        tokens = []
        for start in range(0, len(prompts), 16):  # 16 prompts a batch
            batch = policy.sample(prompts[start : start + 16], 1, greedy)
            tokens += [c[0].token_ids for c in batch.completions]
        results["tokens"][name] = tokens
        print(f"{name}: one-row step {results['step_ms'][name]:.1f} ms (incl. prefill share)", flush=True)
    equal = total = identical = 0
    agree = []  # tokens before the first difference, per prompt
    for a, b in zip(results["tokens"]["float32"], results["tokens"]["bfloat16"]):
        for x, y in zip(a, b):
            equal += x == y
        total += max(len(a), len(b))
        identical += a == b
        agree.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))))
    results["greedy_parity"] = equal / total
    results["identical_prompts"] = identical / len(prompts)
    results["mean_tokens_before_first_difference"] = statistics.mean(agree)
    results.pop("tokens")
    ms = results["step_ms"]
    print(
        f"bf16 / fp32 step time: one row {ms['bfloat16'] / ms['float32']:.2f}, 16 rows "
        f"{ms['bfloat16 x16 rows'] / ms['float32 x16 rows']:.2f}; greedy tokens equal at "
        f"{results['greedy_parity']:.1%} of positions, all {args.tokens} equal on "
        f"{results['identical_prompts']:.0%} of prompts, first difference after "
        f"{results['mean_tokens_before_first_difference']:.1f} tokens on average ({len(prompts)} eval "
        f"prompts); auto picks {results['auto']} on this CPU"
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table")
    t.add_argument("--backend", nargs="+", default=["transformers", "vllm"], choices=["transformers", "vllm"])
    t.add_argument("--tokens", type=int, default=64)
    lo = sub.add_parser("load")
    lo.add_argument("--clients", type=int, default=32)
    lo.add_argument("--seconds", type=float, default=30)
    lo.add_argument("--serve-from", type=Path, help="checkout whose alignd serves (default: this one)")
    d = sub.add_parser("dtype")
    d.add_argument("--prompts", type=int, default=0, help="eval prompts (0: all)")
    d.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    result = {"table": table, "load": load, "dtype": dtype}[args.command](args)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "concurrency.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    if args.command == "table":  # rows per backend/strategy: a run of one backend keeps the other's
        saved.setdefault("table", {}).update(result)
    else:
        saved[args.command if args.command != "load" else f"load/{'before' if args.serve_from else 'after'}"] = result
    path.write_text(json.dumps(saved, indent=2))


if __name__ == "__main__":
    main()
