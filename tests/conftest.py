from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from alignd.backends.transformers_policy import TransformersPolicy
from alignd.rewardmodels.base import Objective, ObjectiveInfo
from alignd.rewardmodels.objective_scorer import ObjectiveScorer
from tests.tiny import tiny_model, tiny_tokenizer

torch.set_num_threads(2)


@pytest.fixture(scope="session", autouse=True)
def _private_data_dir(tmp_path_factory):
    """Servers started by tests never open the user's own experiment store."""
    import os

    previous = os.environ.get("ALIGND_DATA")
    os.environ["ALIGND_DATA"] = str(tmp_path_factory.mktemp("alignd-data"))
    yield
    if previous is None:
        os.environ.pop("ALIGND_DATA", None)
    else:
        os.environ["ALIGND_DATA"] = previous


@pytest.fixture(scope="session")
def tiny_policy() -> TransformersPolicy:
    tokenizer = tiny_tokenizer()
    return TransformersPolicy(model=tiny_model(len(tokenizer)), tokenizer=tokenizer, model_name="tiny", device="cpu")


class CountingObjective(Objective):
    """Deterministic toy reward: how often `letter` occurs in the response. Counts its calls."""

    def __init__(self, name: str, letter: str) -> None:
        self.info = ObjectiveInfo(name, f"count of {letter!r}", 0.0, float("inf"))
        self.letter = letter
        self.calls: list[int] = []

    def score(self, prompts, responses) -> np.ndarray:
        self.calls.append(len(responses))
        return np.array([r.count(self.letter) for r in responses], dtype=np.float64)


@pytest.fixture
def letter_scorer() -> ObjectiveScorer:
    return ObjectiveScorer([CountingObjective("e_count", "e"), CountingObjective("o_count", "o")])


class BlockingObjective(Objective):
    """Scores only once the test sets `release`; `entered` says a request is scoring (a server
    then has one request in flight for as long as the test wants)."""

    info = ObjectiveInfo("blocking", "waits for the test", 0.0, 1.0)

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def score(self, prompts, responses):
        self.entered.set()
        self.release.wait(30)
        return np.zeros(len(responses))


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server for the session (skipped, with the reason, where none can run)."""
    from tests.postgres import missing_reason, running_postgres

    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return postgres_server.url.rsplit("/", 1)[0] + f"/{name}"
