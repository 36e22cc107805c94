"""Trained heads named in the config load into the server, show in GetServerInfo, and steer."""

from __future__ import annotations

import grpc
import pytest
import torch

from alignd.backends.base import SamplingParams
from alignd.clients import AligndClient, AligndClientError, Generation, Progress
from alignd.config import ConfigError, ServerConfig
from alignd.rewardmodels.heads import Head, HeadMetadata
from alignd.server.app import load_scorer
from tests.server.conftest import running_server


def save_head(path, kind, objectives, hidden_size):
    torch.manual_seed(1)
    meta = HeadMetadata(kind, "tiny", hidden_size, list(objectives), [0.0] * len(objectives), [1.0] * len(objectives),
                        data_hash="abc", metrics={"eval_accuracy": 0.75} if kind == "reward" else {"x": 1.0})
    return Head(meta).save(path)


@pytest.fixture
def head_config(tiny_policy, tmp_path):
    value = save_head(tmp_path / "value_heads", "value", ["positivity"], tiny_policy.hidden_size)
    reward = save_head(tmp_path / "rm", "reward", ["rm_positivity"], tiny_policy.hidden_size)
    return ServerConfig(port=0, objectives=("positivity", "conciseness"), value_heads=str(value),
                        reward_heads=(str(reward),), default_sampling=SamplingParams(max_tokens=12))


def test_config_heads_load_as_objectives_and_value_heads(tiny_policy, head_config):
    scorer, heads = load_scorer(head_config, tiny_policy)
    assert scorer.objective_names == ("positivity", "conciseness", "rm_positivity")
    assert scorer.value_objectives == {"positivity"}
    assert [h.metadata.kind for _, h in heads] == ["reward", "value"]
    rewards = scorer.score(["q", "q"], ["great answer", "awful answer"])
    assert rewards.shape == (2, 3)


def test_heads_appear_in_server_info_and_controlled_runs_through_grpc(tiny_policy, head_config):
    scorer, heads = load_scorer(head_config, tiny_policy)
    with running_server(tiny_policy, scorer, head_config, heads) as running:
        with AligndClient(f"127.0.0.1:{running.port}", timeout=60) as client:
            info = client.server_info()
            assert {(h.kind, tuple(h.objectives)) for h in info.heads} == {
                ("value", ("positivity",)), ("reward", ("rm_positivity",))}
            assert "controlled" in {s.name for s in info.strategies}
            events = list(client.generate_stream("hi", strategy="controlled", weights={"positivity": 1.0},
                                                 num_candidates=3, block_tokens=4, max_tokens=8, seed=2))
            assert isinstance(events[-1], Generation) and all(isinstance(e, Progress) for e in events[:-1])
            assert {e.phase for e in events[:-1]} == {"block"}
            assert {k.name for k in events[-1].kl} == {"blockwise_bound", "blockwise_estimate"}
            with pytest.raises(AligndClientError) as error:
                client.generate("hi", strategy="controlled", weights={"conciseness": 1.0})
            assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert "['conciseness']" in error.value.details
            with pytest.raises(AligndClientError) as error:
                client.generate("hi", strategy="controlled", weights={"positivity": 1.0}, num_candidates=1)
            assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert error.value.details.startswith("controlled.num_candidates:")


def test_heads_for_another_model_are_a_config_error(tiny_policy, tmp_path):
    wrong = save_head(tmp_path / "v", "value", ["positivity"], tiny_policy.hidden_size + 1)
    with pytest.raises(ConfigError, match=r"^value_heads: .*hidden size"):
        load_scorer(ServerConfig(objectives=("positivity",), value_heads=str(wrong)), tiny_policy)
    with pytest.raises(ConfigError, match=r"^value_heads: .*needs"):
        load_scorer(ServerConfig(objectives=("positivity",), value_heads=str(tmp_path / "nope")), tiny_policy)
    other = save_head(tmp_path / "o", "value", ["relevance"], tiny_policy.hidden_size)
    with pytest.raises(ConfigError, match=r"^value_heads: .*does not score"):
        load_scorer(ServerConfig(objectives=("positivity",), value_heads=str(other)), tiny_policy)
