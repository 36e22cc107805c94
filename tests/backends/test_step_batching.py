"""Concurrent requests' decoding steps merged into one forward: the scheduler on its own, then
the transformers backend serving several threads at once (tiny model)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from alignd.backends.base import ChatPrompt, SamplingParams
from alignd.backends.step_batching import StepBatcher, TokenBudget
from alignd.backends.transformers_policy import TransformersPolicy
from alignd.decoding.base import DecodeRequest, get_strategy
from alignd.decoding.weights import parse_weights
from alignd.errors import Cancelled


def concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls in threads released together; their results in order (errors re-raised)."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        barrier.wait()
        try:
            results[index] = calls[index]()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]
    return results


# -- the scheduler ------------------------------------------------------------------------------


class Recorder:
    """A stand-in forward: records which steps ran together."""

    def __init__(self, delay: float = 0.0, fail_on: object = None) -> None:
        self.batches: list[list[Any]] = []
        self.delay = delay
        self.fail_on = fail_on

    def __call__(self, steps: list[Any]) -> None:
        self.batches.append(list(steps))
        time.sleep(self.delay)
        if self.fail_on in steps:
            raise RuntimeError("forward failed")


def stepping(batcher: StepBatcher, name: str, steps: int, rows: int = 1, length: int = 10) -> Callable[[], None]:
    def loop() -> None:
        with batcher.session():
            for i in range(steps):
                batcher.step((name, i), rows=rows, length=length + i)

    return loop


def test_steps_of_threads_in_a_decoding_loop_run_as_one_forward():
    recorder = Recorder(delay=0.002)
    batcher = StepBatcher(recorder, max_tokens=10_000, gather_seconds=1.0)
    concurrently([stepping(batcher, name, 5) for name in "abcd"])
    steps = [step for batch in recorder.batches for step in batch]
    assert sorted(steps) == sorted((name, i) for name in "abcd" for i in range(5))
    # Each thread's steps run in its own order; most forwards carry all four requests.
    for name in "abcd":
        assert [i for n, i in steps if n == name] == list(range(5))
    assert batcher.stats.max_steps_per_forward == 4
    assert batcher.stats.forwards < 20 and batcher.stats.merged_forwards >= 3


def test_a_merged_forward_stays_within_the_token_budget_and_nobody_starves():
    recorder = Recorder(delay=0.001)
    # Each step is 2 rows x ~10 tokens: at most two requests fit one forward.
    batcher = StepBatcher(recorder, max_tokens=45, gather_seconds=0.2)
    concurrently([stepping(batcher, name, 6, rows=2, length=10) for name in "abcd"])
    for batch in recorder.batches:
        assert len(batch) <= 2
    for name in "abcd":
        assert sum(step[0] == name for batch in recorder.batches for step in batch) == 6
    # A step that is over the budget by itself still runs, alone.
    StepBatcher(recorder, max_tokens=5).step(("big", 0), rows=4, length=100)
    assert recorder.batches[-1] == [("big", 0)]


def test_a_forward_error_reaches_every_request_in_it_and_the_batcher_goes_on():
    recorder = Recorder(fail_on=("b", 0))
    batcher = StepBatcher(recorder, max_tokens=10_000, gather_seconds=1.0)
    with pytest.raises(RuntimeError, match="forward failed"):
        concurrently([stepping(batcher, name, 1) for name in "ab"])
    batcher.step(("c", 0), rows=1, length=3)
    assert recorder.batches[-1] == [("c", 0)]


def test_a_cancelled_request_leaves_the_queue_without_running():
    recorder = Recorder()
    batcher = StepBatcher(recorder, max_tokens=100)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        batcher.step(("gone", 0), rows=1, length=3, cancel=cancel)
    assert recorder.batches == []


def test_a_step_cancelled_while_it_waits_in_the_queue_never_runs():
    recorder = Recorder()
    batcher = StepBatcher(recorder, max_tokens=100)
    cancel = threading.Event()
    busy = threading.Event()

    def slow_call() -> str:
        busy.set()
        time.sleep(0.3)  # the model is busy; the step below queues behind this call
        return "done"

    def queued_step() -> None:
        busy.wait(5)
        batcher.step(("late", 0), rows=1, length=3, cancel=cancel)

    def canceller() -> None:
        busy.wait(5)
        time.sleep(0.1)
        cancel.set()

    with pytest.raises(Cancelled):
        concurrently([lambda: batcher.alone(slow_call), queued_step, canceller])
    assert recorder.batches == []


def test_calls_that_run_alone_return_their_result_between_steps():
    recorder = Recorder(delay=0.002)
    batcher = StepBatcher(recorder, max_tokens=10_000, gather_seconds=0.5)
    results = concurrently([stepping(batcher, "a", 4), lambda: batcher.alone(lambda: "prefill")])
    assert results[1] == "prefill"
    assert sum(len(batch) for batch in recorder.batches) == 4  # alone calls are not steps
    with pytest.raises(ValueError):
        StepBatcher(recorder, max_tokens=0)


def test_the_token_budget_makes_a_request_that_does_not_fit_wait_its_turn():
    budget = TokenBudget(100)
    order: list[str] = []
    release = threading.Event()

    def hold(name: str, tokens: int, wait: float) -> Callable[[], None]:
        def run() -> None:
            time.sleep(wait)
            with budget.hold(tokens):
                order.append(name)
                if name == "first":
                    release.wait(5)

        return run

    def releaser() -> None:
        time.sleep(0.3)
        order.append("released")
        release.set()

    # "big" (60) does not fit beside "first" (70) and waits; "small" (10) arrives after it and
    # would fit, but waits behind it: arrival order, so big requests are not starved.
    concurrently([hold("first", 70, 0), hold("big", 60, 0.1), hold("small", 10, 0.2), releaser])
    assert order == ["first", "released", "big", "small"]
    assert budget.free == 100


def test_memory_released_early_lets_a_waiting_request_start():
    budget = TokenBudget(100)
    started, finish = threading.Event(), threading.Event()

    def waiter() -> None:
        with budget.hold(50):
            started.set()
            finish.wait(5)

    thread = threading.Thread(target=waiter)
    with budget.hold(80) as held:
        thread.start()
        assert not started.wait(0.2)  # 50 does not fit beside 80
        held.release(40)  # the holder dropped half its sequences for good
        assert started.wait(5) and budget.free == 10
        held.release(1000)  # at most what is still held
        assert budget.free == 50
    assert budget.free == 50  # leaving the block gives back nothing twice
    finish.set()
    thread.join()
    assert budget.free == 100


def test_a_request_cancelled_while_waiting_for_memory_gives_up():
    budget = TokenBudget(10)
    cancel = threading.Event()
    with budget.hold(10):
        cancel.set()
        with pytest.raises(Cancelled), budget.hold(5, cancel):
            pass
    assert budget.free == 10
    with budget.hold(1000):  # more than the whole budget holds all of it
        assert budget.free == 0


# -- the transformers backend --------------------------------------------------------------------


@pytest.fixture
def policy(tiny_policy) -> TransformersPolicy:
    """A policy of its own (fresh batcher statistics) on the session's tiny model."""
    return TransformersPolicy(
        model=tiny_policy.model, tokenizer=tiny_policy.tokenizer, model_name="tiny", device="cpu", gather_seconds=1.0
    )


PROMPTS = ["tell me about bread", "why is the sky blue", "a short poem please", "numbers and words"]


def sample_call(policy: TransformersPolicy, prompt: str, temperature: float, seed: int, n: int = 1):
    sampling = SamplingParams(temperature=temperature, max_tokens=24, seed=seed)
    return lambda: [c.token_ids for c in policy.sample([ChatPrompt(prompt)], n, sampling).completions[0]]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_same_seed_responses_are_the_same_alone_and_batched(policy, temperature):
    calls = [sample_call(policy, prompt, temperature, seed, n=2) for seed, prompt in enumerate(PROMPTS)]
    alone = [call() for call in calls]
    assert policy.batcher.stats.merged_forwards == 0
    batched = concurrently(calls)
    assert policy.batcher.stats.merged_by_kind["decode"] > 0
    assert policy.batcher.stats.merged_by_kind["prefill"] > 0
    assert batched == alone


def test_every_strategy_decodes_the_same_alone_and_among_other_requests(policy, letter_scorer):
    weights = parse_weights({"e_count": 1.0}, letter_scorer.objective_names)
    runs = [
        ("sample", {}),
        ("best_of_n", {"n": 3}),
        ("controlled", {"num_candidates": 3, "block_tokens": 4}),
        ("controlled", {"mode": "tokenwise", "token_candidates": 3}),
        ("linear_alignment", {}),
        ("evolutionary", {"beams": 3, "keep_top": 1, "replace_every": 6, "cycles": 2, "mutation_tokens": 4}),
    ]

    def decode(index: int) -> Callable[[], tuple[str, list[int]]]:
        name, params = runs[index]
        strategy = get_strategy(name)
        sampling = SamplingParams(temperature=0.8, max_tokens=16, seed=100 + index)
        request = DecodeRequest(ChatPrompt(PROMPTS[index % len(PROMPTS)]), sampling, weights)
        return lambda: (name, strategy.decode(request, strategy.Params(**params), policy, letter_scorer).token_ids)

    calls = [decode(i) for i in range(len(runs))]
    alone = [call() for call in calls]
    batched = concurrently(calls)
    assert policy.batcher.stats.merged_forwards > 0
    assert batched == alone


def test_a_cancelled_request_stops_while_the_others_finish(policy):
    cancel = threading.Event()
    sampling = SamplingParams(temperature=1.0, max_tokens=40, seed=3)
    stopped: list[int] = []

    def cancelled_request() -> None:
        partial = policy.begin(ChatPrompt("tell me about bread"), sampling)
        for step in range(40):
            if step == 3:
                cancel.set()
            try:
                partial = policy.extend(partial, 1, 1, cancel)
            except Cancelled:
                stopped.append(step)
                return

    calls = [cancelled_request, sample_call(policy, "why is the sky blue", 1.0, 1)]
    _, other = concurrently(calls)
    assert stopped == [3]
    assert other[0] == sample_call(policy, "why is the sky blue", 1.0, 1)()[0]


def test_a_merged_step_holds_at_most_the_batch_token_budget(tiny_policy):
    policy = TransformersPolicy(
        model=tiny_policy.model, tokenizer=tiny_policy.tokenizer, device="cpu", max_batch_tokens=60, gather_seconds=1.0
    )
    calls = [sample_call(policy, prompt, 1.0, seed) for seed, prompt in enumerate(PROMPTS)]
    alone = [call() for call in calls]
    assert concurrently(calls) == alone
    # Prompts are ~10 tokens and grow to ~34: two rows fit 60 tokens early on, one row later.
    assert policy.batcher.stats.merged_forwards > 0
    assert policy.batcher.stats.max_tokens_per_forward <= 60
