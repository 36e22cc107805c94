"""Prometheus metrics of one server (own registry: no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "alignd_requests",
            "Requests by transport (grpc, http), method, strategy and status code",
            ["transport", "method", "strategy", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "alignd_request_seconds",
            "Request latency by transport, method and strategy",
            ["transport", "method", "strategy"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.generated_tokens = Counter(
            "alignd_generated_tokens",
            "Tokens sampled from the policy, all candidates",
            ["strategy"],
            registry=self.registry,
        )
        self.pending = Gauge(
            "alignd_pending_requests", "Requests admitted and not finished (queue depth)", registry=self.registry
        )
        self.decoding = Gauge(
            "alignd_decodes_running",
            "Decodes running in worker threads (a cancelled request's stops at its next step)",
            registry=self.registry,
        )
        # A/B experiment store (server/experiments/store.py).
        self.experiment_records = Counter(
            "alignd_experiment_records",
            "Served experiment requests recorded",
            ["experiment", "arm"],
            registry=self.registry,
        )
        self.store_queue_depth = Gauge(
            "alignd_store_queue_depth", "Writes waiting for the experiment store", registry=self.registry
        )
        self.store_queue_full = Counter(
            "alignd_store_queue_full", "Writes that found the store's queue full and waited", registry=self.registry
        )
        self.store_commit_seconds = Histogram(
            "alignd_store_commit_seconds",
            "Time to apply and commit one batch of store writes",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
            registry=self.registry,
        )
        self.store_errors = Counter(
            "alignd_store_errors", "Experiment store writes that failed", registry=self.registry
        )

    def serve_http(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
