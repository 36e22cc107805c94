"""`alignd train vectors` on a tiny model: DPO adapters both ways, phi = theta+ - theta-."""

from __future__ import annotations

import json

import pytest
import torch

from alignd.backends.base import ChatPrompt, SamplingParams
from alignd.backends.preference_vectors import PreferenceVectors
from alignd.backends.transformers_policy import TransformersPolicy
from alignd.cli import main
from alignd.training.vector_trainer import VectorsConfig, difference, lora_deltas
from tests.tiny import tiny_model, tiny_tokenizer

PROMPTS = ["how do I bake bread", "a good answer", "the quick brown fox", "numbers and punctuation"]
KIND = "thank you, that is wonderful and very helpful"
LAZY = "the lazy dog jumps over the fox"


def write_rollouts(path, objective: str, prompts) -> str:
    """Two scored responses per prompt: the kind one scores 1 on `objective`, the lazy one 0."""
    with open(path, "w") as out:
        for prompt in prompts:
            for response, reward in ((KIND, 1.0), (LAZY, 0.0)):
                out.write(json.dumps({"prompt": prompt, "response": response, "rewards": {objective: reward}}) + "\n")
    return str(path)


def train_vectors_command(checkpoint, rollouts: str, *options: str) -> int:
    """`alignd train vectors` on the tiny checkpoint, without the eval-prompt measurement."""
    return main(
        ["train", "vectors", "--model", str(checkpoint), "--rollouts", rollouts, "--eval-prompts", "", *options]
    )


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, tmp_path_factory):
    """Vectors for `kindness` (the kind reply scores 1, the lazy one 0) trained through the CLI."""
    folder = tmp_path_factory.mktemp("vectors")
    rollouts = write_rollouts(folder / "rollouts.jsonl", "kindness", PROMPTS * 4)
    output = folder / "vectors.safetensors"
    code = train_vectors_command(
        tiny_checkpoint,
        rollouts,
        "--output",
        str(output),
        "--objectives",
        "kindness",
        "--rank",
        "4",
        "--target-modules",
        "q_proj",
        "v_proj",
        "down_proj",
        "--learning-rate",
        "5e-3",
        "--epochs",
        "12",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--bf16",
        "no",
    )
    assert code == 0
    return PreferenceVectors.load(output)


def response_logprob(policy: TransformersPolicy, prompt: str, response: str, eta: float) -> float:
    """log pi_eta(response | prompt), teacher-forced through the policy's steered forward."""
    tokens = [*policy.tokenize(response), policy.tokenizer.eos_token_id]
    sampling = SamplingParams(temperature=1.0, max_tokens=len(tokens) + 1, steering=(("kindness", eta),))
    partial = policy.begin(ChatPrompt(prompt), sampling)
    total = 0.0
    for token in tokens:
        total += float(torch.log_softmax(policy.next_token_logits(partial)[0], -1)[token])
        policy.append(partial, [token], [0.0])
    return total


def test_the_vector_moves_the_policy_toward_its_objective_and_back(trained, tiny_checkpoint):
    info = trained.infos["kindness"]
    assert info.rank == 8 and info.objective == "kindness" and info.training["pairs"] == len(PROMPTS)
    assert {layer.rsplit(".", 1)[-1] for layer in trained.deltas["kindness"]} == {"q_proj", "v_proj", "down_proj"}
    policy = TransformersPolicy(tiny_checkpoint, device="cpu", vectors=trained)
    margins = {
        eta: response_logprob(policy, PROMPTS[0], KIND, eta) - response_logprob(policy, PROMPTS[0], LAZY, eta)
        for eta in (-1.0, 0.0, 1.0)
    }
    # DPO raised the chosen response's likelihood against the rejected one's, and the reversed
    # adapter lowered it: their difference pushes one way at eta = 1 and the other at eta = -1.
    assert margins[1.0] > margins[0.0] + 0.5 > margins[-1.0] + 1.0, margins


def test_a_vector_is_the_exact_difference_of_its_two_adapters():
    from peft import LoraConfig, get_peft_model

    tokenizer = tiny_tokenizer()
    adapters = []
    for seed in (1, 2):
        model = get_peft_model(
            tiny_model(len(tokenizer)),
            LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False),
        )
        torch.manual_seed(seed)
        for module in model.modules():
            if hasattr(module, "lora_B") and "default" in module.lora_B:
                torch.nn.init.normal_(module.lora_B["default"].weight)
        merged = {
            name: module.get_delta_weight("default")
            for name, module in model.named_modules()
            if hasattr(module, "get_delta_weight")
        }
        adapters.append((lora_deltas(model), merged))
    (positive, positive_merged), (negative, negative_merged) = adapters
    phi = difference(positive, negative)
    for layer, delta in phi.items():
        expected = positive_merged["base_model.model." + layer] - negative_merged["base_model.model." + layer]
        assert torch.allclose(delta.weight(), expected, atol=1e-6)
        assert delta.down.shape[0] == 4


def test_bad_bf16_setting_is_an_error(tmp_path, tiny_checkpoint, capsys):
    rollouts = write_rollouts(tmp_path / "r.jsonl", "k", PROMPTS)
    code = train_vectors_command(tiny_checkpoint, rollouts, "--objectives", "k", "--bf16", "maybe")
    assert code == 2 and "--bf16" in capsys.readouterr().err


def test_config_defaults_match_the_shipped_recipe():
    config = VectorsConfig()
    assert config.objectives == ("positivity", "relevance") and config.rank == 8
