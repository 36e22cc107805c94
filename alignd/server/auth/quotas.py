"""Per-key quotas and fair admission: how many requests each caller may have in flight, how
often it may ask, how many tokens it may generate per minute, how large one request may be, and
a fair share of the server's pending slots when it is busy, so one heavy key cannot starve the
others."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from alignd.errors import ResourceExhausted


class QuotaError(ValueError):
    """A quota setting that is not a whole number >= 0 (the message names it)."""


@dataclass(frozen=True)
class Quota:
    """What one key may use; 0 means no limit."""

    concurrent: int = 0  # requests in flight at once
    requests_per_minute: int = 0
    tokens_per_minute: int = 0  # generated tokens, all candidates counted
    max_n: int = 0  # candidates (sequences decoded) per request; responses per Score request
    max_tokens: int = 0  # sampling.max_tokens per request

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "quota") -> Quota:
        if not isinstance(values, Mapping):
            raise QuotaError(f"{where}: must be a table of limits, got {values!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        for name, value in values.items():
            if name not in known:
                raise QuotaError(f"{where}.{name}: unknown quota; known: {sorted(known)}")
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise QuotaError(f"{where}.{name}: must be a whole number >= 0 (0: no limit), got {value!r}")
        return cls(**values)

    def as_dict(self) -> dict[str, int]:
        """The limits set (0s left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v}

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.as_dict().items()) or "no quota"


UNLIMITED = Quota()


class Bucket:
    """A token bucket refilled at `per_minute` a minute, holding at most one minute's worth.
    Taking more than it holds leaves a debt that later refills pay off first."""

    def __init__(self, per_minute: int, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.level = self.capacity
        self.updated = now

    def refill(self, now: float) -> float:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now
        return self.level

    def wait(self, amount: float, now: float) -> float:
        """Seconds until `amount` is available (0 when it is now)."""
        missing = amount - self.refill(now)
        return max(0.0, missing / self.rate)

    def take(self, amount: float, now: float) -> None:
        self.refill(now)
        self.level -= amount


@dataclass
class KeyUsage:
    pending: int = 0
    last_seen: float = 0.0
    requests: Bucket | None = None
    tokens: Bucket | None = None


class Admission:
    """Admits requests against the server's `max_pending` and each key's quota.

    Fair share: while the server is at least half full, a key may hold at most max_pending /
    (keys active in the last `ACTIVE_SECONDS`, counting those refused because the server was busy)
    requests. A key that was
    refused because the server is full thus lowers the share of the keys filling it, and its retry
    finds room as their requests finish."""

    ACTIVE_SECONDS = 10.0
    FORGET_SECONDS = 120.0  # idle longer than this, a key's buckets are full again: drop its entry

    def __init__(self, max_pending: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_pending = max_pending
        self.pending = 0
        self.clock = clock
        self.keys: dict[str, KeyUsage] = {}
        self._pruned = clock()

    def admit(self, key: str, name: str, quota: Quota) -> None:
        """Count a request in, or raise ResourceExhausted saying which limit it met."""
        now = self.clock()
        usage = self._usage(key, quota, now)
        # The key's own quotas first: a key refused by them does not count as asking for room.
        if quota.concurrent and usage.pending >= quota.concurrent:
            raise ResourceExhausted(f"quota.concurrent: key {name!r} has {usage.pending} requests in flight already")
        if usage.tokens is not None and (wait := usage.tokens.wait(1, now)):
            raise ResourceExhausted(
                f"quota.tokens_per_minute: key {name!r} used its {quota.tokens_per_minute} tokens a minute",
                retry_after=wait,
            )
        if usage.requests is not None and (wait := usage.requests.wait(1, now)):
            raise ResourceExhausted(
                f"quota.requests_per_minute: key {name!r} used its {quota.requests_per_minute} requests a minute",
                retry_after=wait,
            )
        usage.last_seen = now
        if self.pending >= self.max_pending:
            raise ResourceExhausted(f"server busy: {self.pending} requests pending (max_pending)")
        if self.pending * 2 >= self.max_pending:
            active = sum(1 for u in self.keys.values() if u.pending or now - u.last_seen <= self.ACTIVE_SECONDS)
            share = max(1, self.max_pending // max(1, active))
            if active > 1 and usage.pending >= share:
                raise ResourceExhausted(
                    f"server busy: key {name!r} has {usage.pending} requests pending, its fair share of this "
                    f"server while {active} keys use it"
                )
        if usage.requests is not None:
            usage.requests.take(1, now)
        usage.pending += 1
        self.pending += 1

    def release(self, key: str) -> None:
        self.pending -= 1
        usage = self.keys.get(key)
        if usage is not None:
            usage.pending -= 1
            usage.last_seen = self.clock()  # kept for a while: a cancelled decode's charge may follow

    def charge_tokens(self, key: str, tokens: int) -> None:
        """Generated tokens count against the key's tokens_per_minute after the decode (a request
        starts while any budget is left and may overdraw it; the debt delays the next)."""
        usage = self.keys.get(key)
        if usage is not None and usage.tokens is not None:
            usage.tokens.take(tokens, self.clock())

    def _usage(self, key: str, quota: Quota, now: float) -> KeyUsage:
        if now - self._pruned > self.FORGET_SECONDS:
            self._pruned = now
            for stale in [k for k, u in self.keys.items() if self._forgettable(u, now)]:
                del self.keys[stale]
        usage = self.keys.get(key)
        if usage is None:
            usage = self.keys[key] = KeyUsage()
        # A key's quota can change while the server runs (the keys file is reloaded).
        if _rate(usage.requests) != quota.requests_per_minute:
            usage.requests = Bucket(quota.requests_per_minute, now) if quota.requests_per_minute else None
        if _rate(usage.tokens) != quota.tokens_per_minute:
            usage.tokens = Bucket(quota.tokens_per_minute, now) if quota.tokens_per_minute else None
        return usage

    def _forgettable(self, usage: KeyUsage, now: float) -> bool:
        """Idle, and its buckets full again (a debt is kept until it is paid)."""
        if usage.pending or now - usage.last_seen <= self.FORGET_SECONDS:
            return False
        return all(b is None or b.refill(now) >= b.capacity for b in (usage.requests, usage.tokens))


def _rate(bucket: Bucket | None) -> int:
    return 0 if bucket is None else round(bucket.capacity)


def check_request_size(name: str, quota: Quota, rows: int, max_tokens: int) -> None:
    """One request against the key's per-request limits (RESOURCE_EXHAUSTED: waiting will not
    help, a smaller request will)."""
    if quota.max_n and rows > quota.max_n:
        raise ResourceExhausted(
            f"quota.max_n: the request decodes {rows} sequences at once, over key {name!r}'s {quota.max_n}"
        )
    if quota.max_tokens and max_tokens > quota.max_tokens:
        raise ResourceExhausted(f"quota.max_tokens: max_tokens {max_tokens} is over key {name!r}'s {quota.max_tokens}")


def retry_seconds(seconds: float) -> int:
    """A retry hint in whole seconds (HTTP's Retry-After), never 0."""
    return max(1, math.ceil(seconds))
