from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from alignd.backends.base import SamplingParams
from alignd.clients import AligndClient
from alignd.config import ServerConfig
from alignd.decoding.params import Limits
from alignd.server.app import RunningServer, start_server


@contextmanager
def running_server(policy, scorer, config: ServerConfig, heads=None) -> Iterator[RunningServer]:
    """An in-process server on a free port, its event loop in a background thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    running = asyncio.run_coroutine_threadsafe(start_server(policy, scorer, config, heads), loop).result(30)
    try:
        yield running
    finally:
        asyncio.run_coroutine_threadsafe(running.stop(1.0), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


TEST_LIMITS = Limits(
    max_prompt_chars=200, max_tokens=32, max_candidates=8, max_stop_sequences=2, max_stop_chars=5, max_score_responses=4
)


@pytest.fixture(scope="module")
def server(tiny_policy, module_letter_scorer):
    config = ServerConfig(port=0, limits=TEST_LIMITS, default_sampling=SamplingParams(max_tokens=16), workers=2)
    with running_server(tiny_policy, module_letter_scorer, config) as running:
        yield running


@pytest.fixture(scope="module")
def module_letter_scorer():
    from alignd.rewardmodels.objective_scorer import ObjectiveScorer
    from tests.conftest import CountingObjective

    return ObjectiveScorer([CountingObjective("e_count", "e"), CountingObjective("o_count", "o")])


@pytest.fixture
def client(server) -> Iterator[AligndClient]:
    with AligndClient(f"127.0.0.1:{server.port}", timeout=30) as c:
        yield c
