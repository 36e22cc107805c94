"""The shipped preference vectors on SmolLM2: exact per-row steering, and the real server."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignd import models
from alignd.backends.base import ChatPrompt, SamplingParams
from alignd.backends.preference_vectors import PreferenceVectors, shipped_vectors
from alignd.backends.transformers_policy import TransformersPolicy
from alignd.rewardmodels.builtin import BUILTIN_OBJECTIVES

pytestmark = pytest.mark.integration

ROWS = [(), (("positivity", 1.0),), (("positivity", -0.5), ("relevance", 1.0)), (("relevance", -1.0),)]
PROMPTS = ["Tell me about Mondays.", "How do I bake bread?", "Describe the sea.", "Why do cats purr?"]


@pytest.fixture(scope="module")
def shipped():
    path = shipped_vectors(models.DEFAULT_MODEL)
    assert path is not None, "the embedded model ships preference vectors"
    vectors = PreferenceVectors.load(path)
    policy = TransformersPolicy(models.resolve(models.DEFAULT_MODEL), model_name=models.DEFAULT_MODEL, vectors=vectors)
    return policy, vectors, path


def test_the_shipped_vectors_are_small_and_describe_themselves(shipped):
    _, vectors, path = shipped
    assert vectors.names == ("positivity", "relevance")
    assert path.stat().st_size < 8 * 2**20
    for info in vectors.infos.values():
        assert info.base_model == models.DEFAULT_MODEL and info.rank == 16
        assert set(info.shift) == set(BUILTIN_OBJECTIVES)
        assert info.shift[info.objective] > 0  # measured on the eval prompts when trained


def test_a_mixed_batch_gives_each_row_its_merged_models_logits_on_smollm2(shipped):
    policy, vectors, _ = shipped
    sampling = SamplingParams(temperature=1.0, max_tokens=8)
    partial = policy.begin_many([ChatPrompt(p) for p in PROMPTS], sampling, steering=ROWS)
    tokens = policy.tokenize(" It is a")
    for token in tokens:
        policy.append(partial, [token] * len(ROWS), [0.0] * len(ROWS))
    logits = policy.next_token_logits(partial)
    checkpoint = models.resolve(models.DEFAULT_MODEL)
    for row, steering in enumerate(ROWS):
        merged = vectors.merged_into(AutoModelForCausalLM.from_pretrained(str(checkpoint)), dict(steering))
        reference = TransformersPolicy(model=merged, tokenizer=policy.tokenizer, device="cpu")
        alone = reference.begin(ChatPrompt(PROMPTS[row]), sampling)
        for token in tokens:
            reference.append(alone, [token], [0.0])
        difference = (logits[row] - reference.next_token_logits(alone)[0]).abs().max()
        assert difference < 1e-4, (steering, float(difference))
        del merged, reference
    assert not torch.allclose(logits[0], logits[1], atol=1e-2)
