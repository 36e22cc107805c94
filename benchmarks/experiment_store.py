"""What recording an experiment request adds to its response time, and what group commit buys,
on SQLite and on PostgreSQL.

Many concurrent handlers record a request each and wait for the commit (as the server does before
answering). For each database, two runs side by side: the store's writer task
batching up to 256 writes per transaction (one flush each), and the same store limited to one
write per transaction. Prints records per second, the wait per record (p50/p95) and the ratios.
PostgreSQL is a throwaway local server started from the installed binaries (as the tests do), or
the one `--postgres URL` names (its database gets a `requests` table; use a scratch one).

    .venv/bin/python benchmarks/experiment_store.py [--records 2000] [--concurrency 32] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from alignd.server.experiments.store import ExperimentStore, RequestRecord

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent


def _record(i: int, run: str) -> RequestRecord:
    return RequestRecord(
        f"{run}-r{i}",
        "bench",
        "a" if i % 2 else "b",
        f"user-{i}",
        time.time(),
        "best_of_n",
        {"n": 8},
        {"temperature": 0.7, "max_tokens": 64},
        {"relevance": 0.5, "harmlessness": 0.5},
        {"relevance": 0.61, "positivity": 0.4, "harmlessness": 0.97, "conciseness": 1.0},
        0.79,
        2.5,
        30,
        512,
        "length",
    )


async def _run(location: str, records: int, concurrency: int, batch_size: int) -> tuple[float, list[float]]:
    store = ExperimentStore(location, batch_size=batch_size, queue_size=4 * concurrency)
    store.start()
    waits: list[float] = []
    next_id = iter(range(records))
    run = uuid.uuid4().hex[:8]  # a shared PostgreSQL database keeps earlier runs' rows

    async def handler() -> None:
        for i in next_id:
            started = time.perf_counter()
            await store.record_request(_record(i, run))
            waits.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(handler() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await store.close()
    return elapsed, waits


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--postgres", help="a PostgreSQL URL (default: a throwaway local server)")
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, float]]] = {}
    throwaway = None
    if args.postgres is None:
        sys.path.insert(0, str(ROOT))
        from tests.postgres import PostgresServer, missing_reason

        if missing_reason() is None:
            throwaway = PostgresServer()
            throwaway.start()
        else:
            print(f"PostgreSQL skipped: {missing_reason()}")
    postgres_url = args.postgres or (throwaway.url if throwaway else None)
    try:
        with tempfile.TemporaryDirectory(dir=RESULTS.parent) as folder:
            databases = {"SQLite (WAL, synchronous=FULL)": lambda batch: str(Path(folder) / f"{batch}.sqlite")}
            if postgres_url:
                databases["PostgreSQL (synchronous_commit=on)"] = lambda batch: postgres_url
            for database, location in databases.items():
                rows = results[database] = {}
                for name, batch_size in (("group commit (batch <= 256)", 256), ("one write per commit", 1)):
                    elapsed, waits = asyncio.run(_run(location(batch_size), args.records, args.concurrency, batch_size))
                    rows[name] = {
                        "records_per_second": args.records / elapsed,
                        "wait_p50_ms": 1000 * _p(waits, 50),
                        "wait_p95_ms": 1000 * _p(waits, 95),
                    }
    finally:
        if throwaway is not None:
            throwaway.destroy()
    print(f"{args.records} records, {args.concurrency} concurrent handlers")
    print(f"{'database':<36}{'mode':<30}{'records/s':>12}{'wait p50 ms':>14}{'wait p95 ms':>14}")
    for database, rows in results.items():
        for name, row in rows.items():
            print(
                f"{database:<36}{name:<30}{row['records_per_second']:>12.0f}"
                f"{row['wait_p50_ms']:>14.2f}{row['wait_p95_ms']:>14.2f}"
            )
    print()
    for database, rows in results.items():
        group, single = rows.values()
        throughput = group["records_per_second"] / single["records_per_second"]
        print(
            f"{database}: group commit / one per commit: throughput x{throughput:.1f}, "
            f"p95 wait x{group['wait_p95_ms'] / single['wait_p95_ms']:.2f}"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "experiment_store.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
