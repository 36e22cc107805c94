import threading
import time

import pytest

from alignd.errors import ResourceExhausted
from alignd.server.auth.quotas import Admission, Quota, QuotaError, check_request_size
from alignd.server.scheduling import FairExecutor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_concurrent_quota_counts_requests_in_flight():
    admission = Admission(64, Clock())
    quota = Quota(concurrent=2)
    admission.admit("k", "k", quota)
    admission.admit("k", "k", quota)
    with pytest.raises(ResourceExhausted, match=r"quota.concurrent") as error:
        admission.admit("k", "k", quota)
    assert error.value.retry_after is None
    admission.release("k")
    admission.admit("k", "k", quota)
    assert admission.pending == 2


def test_requests_per_minute_refuses_with_the_time_until_the_next_one():
    clock = Clock()
    admission = Admission(64, clock)
    quota = Quota(requests_per_minute=3)
    for _ in range(3):
        admission.admit("k", "k", quota)
        admission.release("k")
    with pytest.raises(ResourceExhausted, match="requests_per_minute") as error:
        admission.admit("k", "k", quota)
    assert error.value.retry_after == pytest.approx(20.0)
    assert "retry after 20.0 s" in str(error.value)
    clock.now += 20.0
    admission.admit("k", "k", quota)


def test_tokens_per_minute_are_charged_after_the_decode_and_a_debt_delays_the_next_request():
    clock = Clock()
    admission = Admission(64, clock)
    quota = Quota(tokens_per_minute=600)  # 10 a second
    admission.admit("k", "k", quota)
    admission.charge_tokens("k", 700)  # overdrawn by 100
    admission.release("k")
    with pytest.raises(ResourceExhausted, match="tokens_per_minute") as error:
        admission.admit("k", "k", quota)
    assert error.value.retry_after == pytest.approx(10.1)
    clock.now += 10.2
    admission.admit("k", "k", quota)


def test_a_heavy_key_gets_a_fair_share_once_another_key_asks():
    clock = Clock()
    admission = Admission(8, clock)
    for _ in range(8):
        admission.admit("heavy", "heavy", Quota())
    with pytest.raises(ResourceExhausted, match="server busy"):
        admission.admit("light", "light", Quota())
    # The light key was refused, so it counts as active: the heavy key's share is now 8 / 2.
    admission.release("heavy")
    with pytest.raises(ResourceExhausted, match="fair share"):
        admission.admit("heavy", "heavy", Quota())
    admission.admit("light", "light", Quota())
    # Once the light key has been quiet for a while the heavy key may fill the server again.
    admission.release("light")
    clock.now += Admission.ACTIVE_SECONDS + 1
    admission.admit("heavy", "heavy", Quota())


def test_per_request_limits():
    check_request_size("k", Quota(max_n=4, max_tokens=64), 4, 64)
    with pytest.raises(ResourceExhausted, match=r"quota.max_n: the request decodes 5 sequences"):
        check_request_size("k", Quota(max_n=4), 5, 1)
    with pytest.raises(ResourceExhausted, match=r"quota.max_tokens: max_tokens 65"):
        check_request_size("k", Quota(max_tokens=64), 1, 65)


def test_quota_settings_are_checked():
    with pytest.raises(QuotaError, match=r"quota.concurrent: must be a whole number"):
        Quota.from_dict({"concurrent": 1.5})
    with pytest.raises(QuotaError, match=r"quota.speed: unknown quota"):
        Quota.from_dict({"speed": 1})


def test_workers_take_jobs_round_robin_across_keys():
    executor = FairExecutor(1)
    gate = threading.Event()
    order: list[str] = []
    executor.submit("first", gate.wait)
    futures = [executor.submit("heavy", order.append, f"heavy{i}") for i in range(4)]
    futures.append(executor.submit("light", order.append, "light"))
    time.sleep(0.05)
    gate.set()
    for f in futures:
        f.result(5)
    assert order == ["heavy0", "light", "heavy1", "heavy2", "heavy3"]
    executor.shutdown()


def test_a_cancelled_job_does_not_run_and_shutdown_cancels_the_queue():
    executor = FairExecutor(1)
    gate = threading.Event()
    executor.submit("a", gate.wait)
    ran: list[int] = []
    cancelled = executor.submit("a", ran.append, 1)
    assert cancelled.cancel()
    queued = executor.submit("b", ran.append, 2)
    executor.shutdown()
    gate.set()
    assert queued.cancelled() and ran == []
    with pytest.raises(RuntimeError):
        executor.submit("a", ran.append, 3)


def test_jobs_submitted_together_each_get_a_worker():
    executor = FairExecutor(4)
    executor.submit("warm", time.sleep, 0).result(5)  # one idle worker now
    barrier = threading.Barrier(4, timeout=5)
    futures = [executor.submit("k", barrier.wait) for _ in range(4)]  # only passes if all four run at once
    for f in futures:
        f.result(10)
    executor.shutdown()
