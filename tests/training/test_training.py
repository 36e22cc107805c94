"""Training commands end to end on a tiny in-process model saved as a checkpoint folder."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from alignd.cli import main
from alignd.rewardmodels.engine import ScoringEngine
from alignd.rewardmodels.heads import Head
from alignd.rewardmodels.objective_tables import load_objectives, parse_objectives
from alignd.training.data import DataError, load_prompts, read_jsonl


@pytest.fixture(scope="module")
def rollouts(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "rollouts.jsonl"
    code = main(
        [
            "train",
            "rollouts",
            "--model",
            str(tiny_checkpoint),
            "--device",
            "cpu",
            "--limit",
            "6",
            "--samples-per-prompt",
            "4",
            "--max-tokens",
            "12",
            "--temperature",
            "1.0",
            "--objectives",
            "positivity",
            "conciseness",
            "--output",
            str(out),
        ]
    )
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
    code = main(
        [
            "train",
            "value",
            "--rollouts",
            str(rollouts),
            "--model",
            str(tiny_checkpoint),
            "--device",
            "cpu",
            "--epochs",
            "3",
            "--width",
            "16",
            "--eval-fraction",
            "0.34",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    for objective in ("positivity", "conciseness"):
        for fraction in ("25%", "50%", "75%", "100%"):
            assert any(line.startswith(f"heads   {objective}") and fraction in line for line in printed.splitlines())
    head = Head.load(out)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert head.objectives == ["positivity", "conciseness"] and meta["kind"] == "value"
    assert meta["base_model"] == tiny_checkpoint.name and meta["data_hash"]
    assert "positivity@50%_mse" in meta["metrics"] and meta["metrics"]["eval_rollouts"] == 8
    # Both sources are reported; figures undefined on this tiny data (all ties) are left out.
    for objective in ("positivity", "conciseness"):
        assert any(line.startswith(f"prefix  {objective}") for line in printed.splitlines())
    assert all(math.isfinite(v) for v in meta["metrics"].values())

    # The trained file loads in the server and shows in GetServerInfo.
    from alignd.backends.loading import load_policy
    from alignd.clients import AligndClient
    from alignd.config import ServerConfig
    from alignd.server.app import load_scorer
    from tests.server.conftest import running_server

    policy = load_policy(str(tiny_checkpoint), device="cpu")
    config = ServerConfig(port=0, objectives=("positivity", "conciseness"), value_heads=str(out))
    scorer, heads = load_scorer(config, policy)
    assert all(s.available == ("heads", "prefix") for s in scorer.value_sources.values())

    with (
        running_server(policy, scorer, config, heads) as running,
        AligndClient(f"127.0.0.1:{running.port}", timeout=60) as client,
    ):
        (info,) = client.server_info().heads
        assert info.kind == "value" and info.path == str(out) and "positivity@50%_mse" in info.metrics
        steered = client.generate(
            "hi",
            strategy="controlled",
            weights={"conciseness": 1.0},
            max_tokens=8,
            num_candidates=2,
            block_tokens=4,
        )
        assert set(steered.rewards) == {"positivity", "conciseness"}


def test_pairs_from_rollouts_rank_by_the_objective(rollouts, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    assert (
        main(["train", "pairs", "--rollouts", str(rollouts), "--objective", "conciseness", "--output", str(pairs)]) == 0
    )
    by_prompt = {}
    for row in read_jsonl(rollouts, {"prompt": str, "response": str, "rewards": dict}):
        by_prompt.setdefault(row["prompt"], {})[row["response"]] = row["rewards"]["conciseness"]
    for pair in read_jsonl(pairs, {"prompt": str, "chosen": str, "rejected": str}):
        scores = by_prompt[pair["prompt"]]
        assert scores[pair["chosen"]] == max(scores.values()) > scores[pair["rejected"]] == min(scores.values())


def polite_pairs(path):
    """Distinct pairs whose preferred answer always ends in the same polite words: a linear head
    on the final hidden state can pick that up and must generalise to unseen pairs."""
    topics = [
        "bread",
        "dogs",
        "rain",
        "music",
        "tea",
        "maps",
        "boats",
        "snow",
        "chess",
        "bees",
        "glass",
        "kites",
        "salt",
        "clocks",
        "ferns",
        "owls",
        "soap",
        "rope",
        "jam",
        "ink",
    ]
    rows = [
        {
            "prompt": f"tell me about {t}",
            "chosen": f"{t} is nice. thank you, that is wonderful",
            "rejected": f"{t} is nice. stop here",
        }
        for t in topics
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_reward_head_learns_a_held_out_preference(tiny_checkpoint, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    polite_pairs(pairs)
    out = tmp_path / "rm.safetensors"
    code = main(
        [
            "train",
            "reward",
            "--pairs",
            str(pairs),
            "--model",
            str(tiny_checkpoint),
            "--device",
            "cpu",
            "--epochs",
            "60",
            "--eval-fraction",
            "0.25",
            "--name",
            "rm_polite",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    assert "pairwise accuracy: train" in capsys.readouterr().out
    head = Head.load(out)
    assert head.metadata.kind == "reward" and head.objectives == ["rm_polite"]
    assert head.metadata.metrics["eval_pairs"] == 5
    assert head.metadata.metrics["eval_accuracy"] >= 0.8


def test_reward_export_writes_a_standard_checkpoint_that_objectives_serve(tiny_checkpoint, tmp_path, capsys):
    rows = polite_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "rm-polite"
    train = ["train", "reward", "--export", "hf", "--pairs", str(tmp_path / "pairs.jsonl"), "--name", "polite"]
    options = ["--model", str(tiny_checkpoint), "--device", "cpu", "--epochs", "60", "--eval-fraction", "0.25"]
    assert main([*train, *options, "--output", str(out)]) == 0
    assert "wrote the reward model" in capsys.readouterr().out
    # A standard checkpoint: plain transformers loads it, with the stats alignd wrote.
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.num_labels == 1 and model.config.id2label == {0: "polite"}
    stored = model.config.alignd
    assert stored["objective"] == "polite" and stored["eval_pairs"] == 5 and stored["score_std"] > 0
    assert stored["eval_accuracy"] >= 0.8
    # Served through the generic path, standardised with the stored statistics.
    specs = parse_objectives(
        [{"name": "polite", "kind": "sequence_classification", "path": str(out), "transform": "standardise"}]
    )
    (objective,) = load_objectives(specs, ScoringEngine())
    prompts = [r["prompt"] for r in rows]
    chosen = objective.score(prompts, [r["chosen"] for r in rows])
    rejected = objective.score(prompts, [r["rejected"] for r in rows])
    assert (chosen > rejected).mean() >= 0.8
    # The same numbers as one plain forward of the rendered text.
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompts[0]}, {"role": "assistant", "content": rows[0]["chosen"]}], tokenize=False
    )
    with torch.no_grad():
        raw = model(**tokenizer(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0].item()
    assert chosen[0] == pytest.approx((raw - stored["score_mean"]) / stored["score_std"], abs=1e-4)


def test_reward_export_needs_a_linear_layer(tiny_checkpoint, tmp_path, capsys):
    polite_pairs(tmp_path / "pairs.jsonl")
    code = main(
        [
            "train",
            "reward",
            "--export",
            "hf",
            "--width",
            "8",
            "--pairs",
            str(tmp_path / "pairs.jsonl"),
            "--model",
            str(tiny_checkpoint),
            "--output",
            str(tmp_path / "rm"),
        ]
    )
    assert code == 2
    assert "--export hf writes a linear score layer" in capsys.readouterr().err


def test_every_prefix_regresses_to_its_rollouts_final_reward():

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


def test_ranking_pairs_share_a_prompt_and_a_prefix_length():

    from alignd.training.value_trainer import RankingPairs

    prompts = ["a", "a", "b", "b", "b", "c"]  # "c" has one rollout: it can never be paired
    lengths = [3, 5, 2, 4, 6, 7]
    states = [torch.zeros(n + 1, 2) for n in lengths]
    owner = [i for i, n in enumerate(lengths) for _ in range(n + 1)]
    position = [t for n in lengths for t in range(n + 1)]
    pairs = RankingPairs(prompts, states)
    first, second = pairs.sample(2000, torch.Generator().manual_seed(0))
    for a, b in zip(first.tolist(), second.tolist()):
        assert owner[a] != owner[b] and prompts[owner[a]] == prompts[owner[b]] != "c"
        assert 1 <= position[a] == position[b] <= min(lengths[owner[a]], lengths[owner[b]])
    assert {position[a] for a in first.tolist()} == set(range(1, 5))  # every shared length is drawn


def test_ranking_loss_rewards_the_final_rewards_order_and_ignores_ties():

    from alignd.training.value_trainer import ranking_loss

    target_a, target_b = torch.tensor([[1.0], [0.0], [2.0]]), torch.tensor([[0.0], [1.0], [2.0]])
    right = ranking_loss(torch.tensor([[3.0], [-3.0], [0.0]]), torch.zeros(3, 1), target_a, target_b)
    wrong = ranking_loss(torch.tensor([[-3.0], [3.0], [0.0]]), torch.zeros(3, 1), target_a, target_b)
    assert right < 0.1 < 3.0 < wrong
    # The tied third pair carries no order: its prediction does not change the loss.
    moved = ranking_loss(torch.tensor([[3.0], [-3.0], [50.0]]), torch.zeros(3, 1), target_a, target_b)
    assert moved == pytest.approx(float(right))


def test_within_prompt_figures_ignore_what_tells_prompts_apart():
    import numpy as np

    from alignd.training.ranking import objective_conflicts, pair_accuracy, prompt_groups, within_prompt_spearman

    groups = prompt_groups(["p", "p", "p", "q", "q", "q"])
    assert groups == [[0, 1, 2], [3, 4, 5]]
    truth = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    # Tells the prompts apart perfectly, orders within each prompt backwards.
    backwards = np.array([0.3, 0.2, 0.1, 0.9, 0.8, 0.7])
    assert np.corrcoef(truth, backwards)[0, 1] > 0.6
    assert pair_accuracy(groups, truth, backwards) == (0.0, 6)
    assert within_prompt_spearman(groups, truth, backwards) == pytest.approx(-1.0)
    # Ties in the guess count one half; ties in the truth are no pair.
    assert pair_accuracy(groups, truth, np.zeros(6)) == (0.5, 6)
    assert pair_accuracy(groups, np.array([1.0, 1.0, 2.0, 0.0, 0.0, 0.0]), np.arange(6.0)) == (1.0, 2)
    rewards = np.stack([truth, -truth + np.repeat([0.0, 5.0], 3), np.repeat([1.0, 2.0], 3)], axis=1)
    matrix, spread = objective_conflicts(groups, rewards)
    assert matrix[0, 1] == pytest.approx(-1.0)  # within a prompt, raising one lowers the other
    assert spread[2] == pytest.approx(0.0)  # constant given the prompt


def test_value_training_measures_both_sources_within_prompts_for_auto(tiny_policy, letter_scorer, tmp_path):
    from alignd.backends.base import ChatPrompt, SamplingParams
    from alignd.rewardmodels.guided_scorer import ValueGuidedScorer
    from alignd.training.data import write_jsonl
    from alignd.training.value_trainer import ValueConfig, train_value_heads

    rows = []
    for index, prompt in enumerate(["tell me about bread", "a poem on rain", "list three owls", "why is ink blue"]):
        batch = tiny_policy.sample([ChatPrompt(prompt)], 8, SamplingParams(temperature=1.0, max_tokens=16, seed=index))
        completions = batch.completions[0]
        rewards = letter_scorer.score([prompt] * 8, [c.text for c in completions])
        rows += [
            {
                "prompt": prompt,
                "token_ids": c.token_ids,
                "rewards": dict(zip(letter_scorer.objective_names, map(float, r))),
            }
            for c, r in zip(completions, rewards)
        ]
    write_jsonl(tmp_path / "rollouts.jsonl", rows)
    config = ValueConfig(rollouts=str(tmp_path / "rollouts.jsonl"), eval_fraction=0.5, epochs=2, ranking_weight=1.0)
    head, report = train_value_heads(tiny_policy, config, progress=False, scorer=letter_scorer)
    metrics = head.metadata.metrics
    for name in ("e_count", "o_count"):
        for source in ("heads", "prefix"):
            assert 0.0 <= metrics[f"{name}@50%_{source}_pair_accuracy"] <= 1.0
        # The whole response's text gives the final reward itself.
        assert metrics[f"{name}@100%_prefix_pair_accuracy"] == 1.0
        assert f"{name}@50%_spearman" in metrics
    sources = ValueGuidedScorer(letter_scorer, head).value_sources
    for name, entry in sources.items():
        measured = {s: metrics[f"{name}@50%_{s}_pair_accuracy"] for s in ("heads", "prefix")}
        assert entry.pair_accuracy == pytest.approx(measured)
        assert entry.auto == max(measured, key=measured.get)
    assert {r["source"] for r in report.rows} == {"heads", "prefix"}
