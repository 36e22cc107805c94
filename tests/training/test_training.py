"""Training commands end to end on a tiny in-process model saved as a checkpoint folder."""

from __future__ import annotations

import json

import pytest

from alignd.cli import main
from alignd.rewardmodels.heads import Head
from alignd.training.data import DataError, load_prompts, read_jsonl
from tests.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = tiny_tokenizer()
    tiny_model(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def rollouts(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "rollouts.jsonl"
    code = main(["train", "rollouts", "--model", str(tiny_checkpoint), "--device", "cpu", "--limit", "6",
                 "--samples-per-prompt", "4", "--max-tokens", "12", "--temperature", "1.0",
                 "--objectives", "positivity", "conciseness", "--output", str(out)])
    assert code == 0
    return out


def test_shipped_prompt_sets_are_disjoint_and_sized():
    train, held = load_prompts("train"), load_prompts("eval")
    assert len(train) >= 200 and len(held) >= 40
    assert not set(train) & set(held)


def test_rollouts_are_scored_jsonl(rollouts):
    rows = [json.loads(line) for line in rollouts.read_text().splitlines()]
    assert len(rows) == 24
    for row in rows:
        assert set(row["rewards"]) == {"positivity", "conciseness"}
        assert 1 <= len(row["token_ids"]) <= 12 and row["finish_reason"] in {"stop", "length"}


def test_value_training_writes_loadable_heads_and_a_report(rollouts, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "value_heads.safetensors"
    code = main(["train", "value", "--rollouts", str(rollouts), "--model", str(tiny_checkpoint), "--device", "cpu",
                 "--epochs", "3", "--width", "16", "--eval-fraction", "0.34", "--output", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    for objective in ("positivity", "conciseness"):
        for fraction in ("25%", "50%", "75%", "100%"):
            assert any(line.startswith(objective) and fraction in line for line in printed.splitlines())
    head = Head.load(out)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert head.objectives == ["positivity", "conciseness"] and meta["kind"] == "value"
    assert meta["base_model"] == tiny_checkpoint.name and meta["data_hash"]
    assert "positivity@50%_mse" in meta["metrics"] and meta["metrics"]["eval_rollouts"] == 8

    # The trained file loads in the server and shows in GetServerInfo.
    from alignd.backends.loading import load_policy
    from alignd.clients import AligndClient
    from alignd.config import ServerConfig
    from alignd.server.app import load_scorer
    from tests.server.conftest import running_server

    policy = load_policy(str(tiny_checkpoint), device="cpu")
    config = ServerConfig(port=0, objectives=("positivity", "conciseness"), value_heads=str(out))
    scorer, heads = load_scorer(config, policy)
    assert scorer.value_objectives == {"positivity", "conciseness"}
    with running_server(policy, scorer, config, heads) as running:
        with AligndClient(f"127.0.0.1:{running.port}", timeout=60) as client:
            (info,) = client.server_info().heads
            assert info.kind == "value" and info.path == str(out) and "positivity@50%_mse" in info.metrics
            steered = client.generate("hi", strategy="controlled", weights={"conciseness": 1.0}, max_tokens=8,
                                      num_candidates=2, block_tokens=4)
            assert set(steered.rewards) == {"positivity", "conciseness"}


def test_pairs_from_rollouts_rank_by_the_objective(rollouts, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    assert main(["train", "pairs", "--rollouts", str(rollouts), "--objective", "conciseness", "--output", str(pairs)]) == 0
    by_prompt = {}
    for row in read_jsonl(rollouts, {"prompt": str, "response": str, "rewards": dict}):
        by_prompt.setdefault(row["prompt"], {})[row["response"]] = row["rewards"]["conciseness"]
    for pair in read_jsonl(pairs, {"prompt": str, "chosen": str, "rejected": str}):
        scores = by_prompt[pair["prompt"]]
        assert scores[pair["chosen"]] == max(scores.values()) > scores[pair["rejected"]] == min(scores.values())


def test_reward_head_learns_a_held_out_preference(tiny_checkpoint, tmp_path, capsys):
    # Distinct pairs whose preferred answer always ends in the same polite words: a linear head
    # on the final hidden state can pick that up and must generalise to unseen pairs.
    pairs = tmp_path / "pairs.jsonl"
    topics = ["bread", "dogs", "rain", "music", "tea", "maps", "boats", "snow", "chess", "bees",
              "glass", "kites", "salt", "clocks", "ferns", "owls", "soap", "rope", "jam", "ink"]
    rows = [{"prompt": f"tell me about {t}", "chosen": f"{t} is nice. thank you, that is wonderful",
             "rejected": f"{t} is nice. stop here"} for t in topics]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "rm.safetensors"
    code = main(["train", "reward", "--pairs", str(pairs), "--model", str(tiny_checkpoint), "--device", "cpu",
                 "--epochs", "60", "--eval-fraction", "0.25", "--name", "rm_polite", "--output", str(out)])
    assert code == 0
    assert "pairwise accuracy: train" in capsys.readouterr().out
    head = Head.load(out)
    assert head.metadata.kind == "reward" and head.objectives == ["rm_polite"]
    assert head.metadata.metrics["eval_pairs"] == 5
    assert head.metadata.metrics["eval_accuracy"] >= 0.8


def test_every_prefix_regresses_to_its_rollouts_final_reward():
    import torch

    from alignd.training.value_trainer import prefix_examples

    states = [torch.zeros(3, 4), torch.ones(2, 4)]  # rollouts of 2 and 1 tokens (+ the empty prefix)
    targets = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    x, y = prefix_examples(states, targets)
    assert x.shape == (5, 4)
    assert y.tolist() == [[1.0, -1.0]] * 3 + [[0.5, 2.0]] * 2


def test_malformed_jsonl_reports_the_line_number(tmp_path, tiny_checkpoint, capsys):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": \n')
    with pytest.raises(DataError, match=r"pairs.jsonl:2: not valid JSON"):
        list(read_jsonl(bad, {"prompt": str}))
    missing = tmp_path / "rollouts.jsonl"
    missing.write_text('{"prompt": "a", "token_ids": [1], "rewards": {}}\n\n{"prompt": "b", "rewards": {}}\n')
    code = main(["train", "value", "--rollouts", str(missing), "--model", str(tiny_checkpoint), "--device", "cpu"])
    assert code == 2
    assert "rollouts.jsonl:3: missing field 'token_ids'" in capsys.readouterr().err
