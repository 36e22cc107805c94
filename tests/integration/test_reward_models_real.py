"""A reward model trained and exported by alignd itself, served beside the built-ins and a
multi-output model, on the real SmolLM2 server through gRPC."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from transformers import AutoConfig

from alignd.cli import main
from alignd.clients import AligndClient
from alignd.rewardmodels.engine import ScoringEngine
from alignd.rewardmodels.objective_scorer import ObjectiveScorer
from alignd.rewardmodels.objective_tables import load_objectives, parse_objectives
from tests.integration.conftest import start_serve, stop
from tests.rewardmodels.test_reward_models import LABELS, save_classifier

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """rollouts of the embedded model -> pairs ranked by positivity -> `train reward --export hf`."""
    folder = tmp_path_factory.mktemp("reward")
    rollouts, pairs = folder / "rollouts.jsonl", folder / "pairs.jsonl"
    make_rollouts = ["train", "rollouts", "--limit", "16", "--samples-per-prompt", "4", "--max-tokens", "24"]
    make_rollouts += ["--device", "cpu", "--objectives", "positivity", "--output", str(rollouts)]
    assert main(make_rollouts) == 0
    assert (
        main(["train", "pairs", "--rollouts", str(rollouts), "--objective", "positivity", "--output", str(pairs)]) == 0
    )
    out = folder / "rm-positivity"
    code = main(
        [
            "train",
            "reward",
            "--export",
            "hf",
            "--pairs",
            str(pairs),
            "--eval-fraction",
            "0.25",
            "--name",
            "rm_positivity",
            "--device",
            "cpu",
            "--output",
            str(out),
        ]
    )
    assert code == 0
    return out


def test_exported_and_multi_output_reward_models_steer_the_real_server(exported, tmp_path):
    stored = AutoConfig.from_pretrained(exported).alignd
    assert stored["base_model"] == "smollm2-135m-instruct" and stored["score_std"] > 0
    multi = save_classifier(tmp_path / "rm3", LABELS)
    config = tmp_path / "alignd.toml"
    config.write_text(
        f"""
objectives = [
  "relevance", "positivity", "harmlessness", "conciseness",
  {{ name = "rm_positivity", kind = "sequence_classification", path = "{exported}", transform = "standardise" }},
  {{ name = "helpful", kind = "sequence_classification", path = "{multi}", output = "helpful" }},
  {{ name = "terse", kind = "sequence_classification", path = "{multi}", output = 2, transform = "sigmoid" }},
]
"""
    )
    server = start_serve(tmp_path, "--config", str(config))
    try:
        with AligndClient(server.target, timeout=300) as client:
            info = {o.name: o for o in client.server_info().objectives}
            assert info["rm_positivity"].source == f"sequence_classification {exported} output 0"
            assert info["relevance"].source == "built-in"
            weights = {"relevance": 0.3, "rm_positivity": 0.4, "helpful": 0.2, "terse": 0.1}
            prompt = "Give me two tips for a good night's sleep."
            best = client.generate(
                prompt, strategy="best_of_n", n=4, weights=weights, max_tokens=24, seed=5, return_candidates=True
            )
            assert set(best.rewards) == set(info)
            scores = [sum(w * c.rewards[k] for k, w in weights.items()) for c in best.candidates]
            assert best.text == best.candidates[int(np.argmax(scores))].text
            for strategy in ("controlled", "robust"):
                steered = client.generate(
                    prompt,
                    strategy=strategy,
                    weights=weights,
                    num_candidates=2,
                    block_tokens=8,
                    max_tokens=16,
                    value_source="prefix",
                    seed=5,
                )
                assert steered.text and set(steered.rewards) == set(info)
                assert steered.usage.scored_texts >= 4
    finally:
        assert stop(server) == 0


@pytest.fixture(scope="module")
def smollm_reward_model(tmp_path_factory):
    """The embedded model's backbone with a seeded score layer of three outputs, saved."""
    from alignd import models
    from alignd.rewardmodels.sequence_classification import SequenceClassifier

    folder = tmp_path_factory.mktemp("smollm-rm")
    classifier = SequenceClassifier(str(models.resolve(models.DEFAULT_MODEL)), num_labels=3)
    torch.manual_seed(0)
    with torch.no_grad():
        classifier.model.score.weight.normal_(0.0, 0.05)
    classifier.model.config.id2label = dict(LABELS)
    classifier.model.config.label2id = {v: k for k, v in LABELS.items()}
    classifier.model.save_pretrained(folder)
    classifier.tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_the_vllm_pooling_runner_gives_the_engines_scores(smollm_reward_model):
    tables = [
        {"name": f"{label}_{runner}", "kind": "sequence_classification", "path": str(smollm_reward_model)}
        | {"output": label, "runner": runner}
        for runner in ("engine", "vllm")
        for label in ("helpful", "terse")
    ]
    engine = ScoringEngine()
    scorer = ObjectiveScorer(load_objectives(parse_objectives(tables), engine))
    assert len(engine.models) == 2  # one copy per runner, two outputs each
    assert "vLLM pooling runner" in scorer.objectives[2].description
    prompts = ["How do I bake bread?"] * 5 + ["Name a colour."] * 3
    responses = ["Mix flour, water, yeast and salt; knead, rise, bake."] + [
        "word " * n for n in (3, 40, 12, 90, 1, 7, 25)
    ]
    try:
        rewards = scorer.score(prompts, responses)
    finally:
        engine.close()  # stops vLLM's engine processes
    np.testing.assert_allclose(rewards[:, 2:], rewards[:, :2], atol=2e-3)
    assert np.ptp(rewards[:, 0]) > 0.01  # the outputs tell responses apart
