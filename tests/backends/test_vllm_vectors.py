"""Preference vectors on the real vLLM engine: preset strengths served as LoRA adapters."""

from __future__ import annotations

import importlib.util

import pytest

from alignd import models
from alignd.backends.base import ChatPrompt, SamplingParams
from alignd.backends.preference_vectors import PreferenceVectors, shipped_vectors
from alignd.errors import FailedPrecondition

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]

PROMPTS = [ChatPrompt(p) for p in ("Tell me about Mondays.", "Describe the sea.", "How do I bake bread?")]
GREEDY = SamplingParams(temperature=0.0, max_tokens=16)


@pytest.fixture(scope="module")
def policies():
    from alignd.backends.transformers_policy import TransformersPolicy
    from alignd.backends.vllm import VLLMOptions, VLLMPolicy

    vectors = PreferenceVectors.load(shipped_vectors(models.DEFAULT_MODEL))
    checkpoint = models.resolve(models.DEFAULT_MODEL)
    on_vllm = VLLMPolicy(
        checkpoint,
        model_name=models.DEFAULT_MODEL,
        options=VLLMOptions(max_model_len=1024, vector_presets=(1.0,)),
        vectors=vectors,
    )
    reference = TransformersPolicy(checkpoint, model_name=models.DEFAULT_MODEL, device="cpu", vectors=vectors)
    yield on_vllm, reference
    on_vllm.close()


def greedy_tokens(policy, steering):
    sampling = SamplingParams(temperature=0.0, max_tokens=16, steering=steering)
    return [row[0].token_ids for row in policy.sample(PROMPTS, 1, sampling).completions]


def test_a_preset_decodes_as_the_steered_transformers_model(policies):
    on_vllm, reference = policies
    steering = (("positivity", 1.0),)
    steered = greedy_tokens(on_vllm, steering)
    assert sum(a == b for a, b in zip(steered, greedy_tokens(reference, steering))) >= 2
    assert steered != greedy_tokens(on_vllm, ())  # the adapter changed the answers


def test_other_strengths_and_mixes_are_failed_preconditions(policies):
    on_vllm, _ = policies
    assert on_vllm.vector_presets == {"positivity": (1.0,), "relevance": (1.0,)}
    for steering in ((("positivity", 0.5),), (("positivity", 1.0), ("relevance", 1.0))):
        with pytest.raises(FailedPrecondition, match="presets"):
            on_vllm.check_steering(steering)
        with pytest.raises(FailedPrecondition):
            on_vllm.sample(PROMPTS[:1], 1, SamplingParams(max_tokens=4, steering=steering))
