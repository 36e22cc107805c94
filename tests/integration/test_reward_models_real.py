"""A reward model trained and exported by alignd itself, served beside the built-ins and a
multi-output model, on the real SmolLM2 server through gRPC."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoConfig

from alignd.cli import main
from alignd.clients import AligndClient
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
