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
    meta = HeadMetadata(
        kind,
        "tiny",
        hidden_size,
        list(objectives),
        [0.0] * len(objectives),
        [1.0] * len(objectives),
        data_hash="abc",
        metrics={"eval_accuracy": 0.75} if kind == "reward" else {"x": 1.0},
    )
    return Head(meta).save(path)


@pytest.fixture
def head_config(tiny_policy, tmp_path):
    value = save_head(tmp_path / "value_heads", "value", ["positivity"], tiny_policy.hidden_size)
    reward = save_head(tmp_path / "rm", "reward", ["rm_positivity"], tiny_policy.hidden_size)
    return ServerConfig(
        port=0,
        objectives=("positivity", "conciseness"),
        value_heads=str(value),
        reward_heads=(str(reward),),
        default_sampling=SamplingParams(max_tokens=12),
    )


def test_config_heads_load_as_objectives_and_value_heads(tiny_policy, head_config):
    scorer, heads = load_scorer(head_config, tiny_policy)
    assert scorer.objective_names == ("positivity", "conciseness", "rm_positivity")
    assert {n for n, s in scorer.value_sources.items() if "heads" in s.available} == {"positivity"}
    assert [h.metadata.kind for _, h in heads] == ["reward", "value"]
    rewards = scorer.score(["q", "q"], ["great answer", "awful answer"])
    assert rewards.shape == (2, 3)


def test_heads_appear_in_server_info_and_controlled_runs_through_grpc(tiny_policy, head_config):
    scorer, heads = load_scorer(head_config, tiny_policy)
    with (
        running_server(tiny_policy, scorer, head_config, heads) as running,
        AligndClient(f"127.0.0.1:{running.port}", timeout=60) as client,
    ):
        info = client.server_info()
        assert {(h.kind, tuple(h.objectives)) for h in info.heads} == {
            ("value", ("positivity",)),
            ("reward", ("rm_positivity",)),
        }
        assert "controlled" in {s.name for s in info.strategies}
        events = list(
            client.generate_stream(
                "hi",
                strategy="controlled",
                weights={"positivity": 1.0},
                num_candidates=3,
                block_tokens=4,
                max_tokens=8,
                seed=2,
            )
        )
        assert isinstance(events[-1], Generation) and all(isinstance(e, Progress) for e in events[:-1])
        assert {e.phase for e in events[:-1]} == {"block"}
        assert {k.name for k in events[-1].kl} == {"blockwise_bound", "blockwise_estimate"}
        with pytest.raises(AligndClientError) as error:
            client.generate("hi", strategy="controlled", weights={"conciseness": 1.0}, value_source="heads")
        assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "cannot estimate 'conciseness'" in error.value.details
        # auto serves it from its own scorer on the partial text.
        steered = client.generate(
            "hi",
            strategy="controlled",
            weights={"conciseness": 1.0},
            max_tokens=8,
            num_candidates=2,
            block_tokens=4,
        )
        assert steered.usage.scored_texts > 1
        with pytest.raises(AligndClientError) as error:
            client.generate("hi", strategy="robust", value_source="oracle")
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details.startswith("robust.value_source:")
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
    with pytest.raises(ConfigError, match=r"^value_heads: .*none of which this server scores"):
        load_scorer(ServerConfig(objectives=("positivity",), value_heads=str(other)), tiny_policy)


def test_server_info_says_which_value_source_serves_each_objective(tiny_policy, tmp_path):
    torch.manual_seed(1)
    meta = HeadMetadata(
        "value",
        "tiny",
        tiny_policy.hidden_size,
        ["positivity", "conciseness"],
        [0.0, 0.0],
        [1.0, 1.0],
        metrics={
            "positivity@50%_heads_pair_accuracy": 0.61,
            "positivity@50%_prefix_pair_accuracy": 0.74,
            "conciseness@50%_heads_pair_accuracy": 0.8,
            "conciseness@50%_prefix_pair_accuracy": 0.7,
        },
    )
    path = Head(meta).save(tmp_path / "value_heads")
    # Heads trained for more objectives than the server scores serve the ones it does.
    config = ServerConfig(port=0, objectives=("positivity", "conciseness", "harmlessness"), value_heads=str(path))
    scorer, heads = load_scorer(config, tiny_policy)
    with (
        running_server(tiny_policy, scorer, config, heads) as running,
        AligndClient(f"127.0.0.1:{running.port}", timeout=60) as client,
    ):
        objectives = {o.name: o for o in client.server_info().objectives}
    assert objectives["positivity"].auto_value_source == "prefix"
    assert dict(objectives["positivity"].value_source_pair_accuracy) == pytest.approx({"heads": 0.61, "prefix": 0.74})
    assert objectives["conciseness"].auto_value_source == "heads"
    assert list(objectives["conciseness"].value_sources) == ["heads", "prefix"]
    assert list(objectives["harmlessness"].value_sources) == ["prefix"]
    assert objectives["harmlessness"].auto_value_source == "prefix"
    narrower = ServerConfig(port=0, objectives=("positivity",), value_heads=str(path))
    assert set(load_scorer(narrower, tiny_policy)[0].value_sources) == {"positivity"}


@pytest.mark.parametrize("heads_accuracy, shadow", [(0.9, True), (0.6, False)])
def test_a_shadow_is_loaded_only_when_auto_sends_an_objective_to_the_heads(
    tiny_policy, tmp_path, monkeypatch, heads_accuracy, shadow
):
    import alignd.server.app as app

    asked = []
    monkeypatch.setattr(app, "_ensure_hidden_states", lambda config, field, policy: asked.append(field))
    meta = HeadMetadata(
        "value",
        "tiny",
        tiny_policy.hidden_size,
        ["positivity"],
        [0.0],
        [1.0],
        metrics={"positivity@50%_heads_pair_accuracy": heads_accuracy, "positivity@50%_prefix_pair_accuracy": 0.75},
    )
    path = Head(meta).save(tmp_path / "value_heads")
    scorer, _ = load_scorer(ServerConfig(objectives=("positivity",), value_heads=str(path)), tiny_policy)
    assert scorer.value_sources["positivity"].auto == ("heads" if shadow else "prefix")
    assert asked == (["value_heads"] if shadow else [])


def test_auto_trusts_a_measurement_only_when_every_source_was_measured():
    from alignd.rewardmodels.value_sources import pick_auto

    assert pick_auto("x", ("heads", "prefix"), {"heads": 0.9, "prefix": 0.7}) == "heads"
    assert pick_auto("x", ("heads", "prefix"), {"heads": 0.48}) == "prefix"
    assert pick_auto("x", ("heads", "prefix"), {"heads": float("nan"), "prefix": 0.6}) == "prefix"
    assert pick_auto("x", ("prefix",), {}) == "prefix"
