"""Preference vectors applied per row: each row gets the logits of its own merged model."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import save_file

from alignd.backends.base import ChatPrompt, SamplingParams, steering_of
from alignd.backends.preference_vectors import LowRankDelta, PreferenceVectors, VectorInfo, VectorsError
from alignd.backends.transformers_policy import TransformersPolicy
from alignd.errors import InvalidArgument
from tests.tiny import tiny_model, tiny_tokenizer

TARGETS = ("q_proj", "v_proj", "down_proj")


def random_vectors(model: torch.nn.Module, names=("warm", "short"), rank: int = 4, seed: int = 1) -> PreferenceVectors:
    """Vectors with random factors on TARGETS, large enough to change the tiny model's logits."""
    generator = torch.Generator().manual_seed(seed)
    infos, deltas = {}, {}
    for name in names:
        infos[name] = VectorInfo(name, name, "tiny", rank, TARGETS)
        deltas[name] = {}
        for module_name, module in model.named_modules():
            if module_name.rsplit(".", 1)[-1] in TARGETS:
                out_features, in_features = module.weight.shape
                down = torch.randn(rank, in_features, generator=generator) * 0.8
                up = torch.randn(out_features, rank, generator=generator) * 0.8
                deltas[name][module_name] = LowRankDelta(down, up)
    return PreferenceVectors(infos, deltas)


@pytest.fixture(scope="module")
def steered():
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer), seed=3)
    vectors = random_vectors(model)
    base = copy.deepcopy(model)
    policy = TransformersPolicy(model=model, tokenizer=tokenizer, model_name="tiny", device="cpu", vectors=vectors)
    return policy, base, vectors, tokenizer


def merged_policy(base, vectors, tokenizer, strengths) -> TransformersPolicy:
    model = vectors.merged_into(copy.deepcopy(base), strengths)
    return TransformersPolicy(model=model, tokenizer=tokenizer, model_name="merged", device="cpu")


MIX = [{}, {"warm": 1.0}, {"short": -0.5}, {"warm": 0.7, "short": 1.3}, {"warm": -1.0}]


def test_a_mixed_batch_gives_each_row_its_merged_models_logits(steered):
    policy, base, vectors, tokenizer = steered
    prompts = [ChatPrompt("how do I bake bread"), ChatPrompt("thank you"), ChatPrompt("a good answer")] * 2
    rows = [steering_of(MIX[i % len(MIX)]) for i in range(len(prompts))]
    sampling = SamplingParams(temperature=1.0, max_tokens=6, seed=5)
    partial = policy.begin_many(prompts, sampling, steering=rows)
    # A few teacher-forced steps, so the check covers the cached decode as well as the prefill.
    tokens = [[7, 9, 11, 13]] * len(prompts)
    for step in range(4):
        policy.append(partial, [t[step] for t in tokens], [0.0] * len(prompts))
    logits = policy.next_token_logits(partial)
    for row, strengths in enumerate(rows):
        reference = merged_policy(base, vectors, tokenizer, dict(strengths))
        alone = reference.begin(prompts[row], sampling)
        for step in range(4):
            reference.append(alone, [tokens[row][step]], [0.0])
        assert torch.allclose(logits[row], reference.next_token_logits(alone)[0], atol=1e-4), strengths


def test_steering_changes_the_logits_and_zero_strength_is_the_base_model(steered):
    policy, base, _, tokenizer = steered
    plain = TransformersPolicy(model=copy.deepcopy(base), tokenizer=tokenizer, model_name="base", device="cpu")
    prompt = ChatPrompt("the quick brown fox")
    sampling = SamplingParams(max_tokens=4)
    unsteered = policy.next_token_logits(policy.begin(prompt, sampling))
    assert torch.allclose(unsteered, plain.next_token_logits(plain.begin(prompt, sampling)), atol=1e-6)
    warm = policy.next_token_logits(policy.begin(prompt, SamplingParams(max_tokens=4, steering=(("warm", 1.0),))))
    assert (warm - unsteered).abs().max() > 1e-2


def test_sampling_keeps_each_rows_strengths_through_cache_copies(steered):
    """best_of_n and blockwise strategies copy cache rows (`select`, `extend`): the copies keep
    their policy, so a steered sample equals the merged model's sample with the same seed."""
    policy, base, vectors, tokenizer = steered
    sampling = SamplingParams(temperature=1.0, max_tokens=8, seed=11, steering=(("short", 0.8), ("warm", -0.4)))
    prompts = [ChatPrompt("how do I bake bread"), ChatPrompt("stop here")]
    sampled = policy.sample(prompts, 3, sampling)
    reference = merged_policy(base, vectors, tokenizer, {"short": 0.8, "warm": -0.4})
    expected = reference.sample(prompts, 3, SamplingParams(temperature=1.0, max_tokens=8, seed=11))
    assert [[c.token_ids for c in g] for g in sampled.completions] == [
        [c.token_ids for c in g] for g in expected.completions
    ]


def test_an_unknown_vector_names_the_field(steered):
    policy = steered[0]
    with pytest.raises(InvalidArgument, match=r"preference_vectors.*'kind'"):
        policy.sample([ChatPrompt("hi")], 1, SamplingParams(max_tokens=2, steering=(("kind", 1.0),)))


def test_vectors_round_trip_through_their_files(tmp_path, steered):
    _, _, vectors, _ = steered
    path = vectors.save(tmp_path / "vectors", dtype=torch.float32)
    loaded = PreferenceVectors.load(path)
    assert loaded.names == vectors.names and loaded.infos == vectors.infos
    for name in vectors.names:
        for layer, delta in vectors.deltas[name].items():
            assert torch.equal(loaded.deltas[name][layer].weight(), delta.weight())


def test_a_malformed_vectors_file_says_what_is_wrong(tmp_path, steered):
    _, _, vectors, _ = steered
    path = vectors.save(tmp_path / "vectors")
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["vectors"][0]["colour"] = "red"
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(VectorsError, match="colour"):
        PreferenceVectors.load(path)
    meta["vectors"][0].pop("colour")
    meta["vectors"][0]["name"] = "base"
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(VectorsError, match="not 'base'"):
        PreferenceVectors.load(path)
    flat = {
        f"{name}/{layer}/{part}": torch.ones(4) for name in vectors.names for layer in ["m"] for part in ("down", "up")
    }
    save_file(flat, str(vectors.save(tmp_path / "flat")))
    with pytest.raises(VectorsError, match="lacks matching factors"):
        PreferenceVectors.load(tmp_path / "flat")
    with pytest.raises(VectorsError, match="needs"):
        PreferenceVectors.load(tmp_path / "missing")


def test_vectors_for_another_model_are_refused(steered):
    _, _, vectors, tokenizer = steered
    other = tiny_model(len(tokenizer))
    other.model.layers = other.model.layers[:1]
    with pytest.raises(VectorsError, match="no linear layer"):
        vectors.check_model(other)
    embedding = next(iter(vectors.deltas["warm"].values()))
    on_embeddings = PreferenceVectors(vectors.infos, {"warm": {"model.embed_tokens": embedding}, "short": {}})
    with pytest.raises(VectorsError, match=r"no linear layer 'model\.embed_tokens'"):
        on_embeddings.check_model(other)


def test_vectors_are_checked_against_a_checkpoints_headers(tmp_path, steered):
    """What check_model checks, read from the safetensors files of a saved model."""
    _, base, vectors, tokenizer = steered
    base.save_pretrained(tmp_path / "same")
    vectors.check_checkpoint(tmp_path / "same")
    other = tiny_model(len(tokenizer))
    other.model.layers = other.model.layers[:1]
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(VectorsError, match=r"the checkpoint has no linear layer 'model\.layers\.1\."):
        vectors.check_checkpoint(tmp_path / "other")


def test_concurrent_requests_with_different_strengths_merge_into_one_forward(steered):
    """Requests decoding at once share forwards (the step batcher); each keeps its own policy."""
    from tests.backends.test_step_batching import concurrently

    policy, base, vectors, tokenizer = steered
    prompt = ChatPrompt("how do I bake bread")
    mixes = [{}, {"warm": 1.0}, {"short": -1.0, "warm": 0.5}]
    samplings = [SamplingParams(temperature=1.0, max_tokens=10, seed=3, steering=steering_of(m)) for m in mixes]
    merged_before = policy.batcher.stats.merged_by_kind["decode"]
    results = concurrently([lambda s=s: policy.sample([prompt], 2, s) for s in samplings])
    assert policy.batcher.stats.merged_by_kind["decode"] > merged_before
    for mix, result in zip(mixes, results):
        reference = merged_policy(base, vectors, tokenizer, mix)
        expected = reference.sample([prompt], 2, SamplingParams(temperature=1.0, max_tokens=10, seed=3))
        assert [c.token_ids for c in result.completions[0]] == [c.token_ids for c in expected.completions[0]]


def test_a_preset_adapter_is_the_vector_at_its_strength(tmp_path, steered):
    """vLLM presets are peft adapters: loaded into the model they give the merged weights' logits."""
    from peft import PeftModel

    from alignd.backends.vector_presets import write_presets

    _, base, vectors, _ = steered
    folders = write_presets(vectors, (-0.5, 1.0, 0.1, 0.1000001), tmp_path, "tiny")
    assert set(folders) == {(n, eta) for n in vectors.names for eta in (-0.5, 1.0, 0.1, 0.1000001)}
    assert len(set(folders.values())) == len(folders)  # every preset its own adapter
    ids = torch.tensor([[5, 9, 17, 33, 41]])
    adapted = PeftModel.from_pretrained(copy.deepcopy(base), str(folders[("warm", -0.5)])).eval()
    merged = vectors.merged_into(copy.deepcopy(base), {"warm": -0.5}).eval()
    with torch.no_grad():
        assert torch.allclose(adapted(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4)
        assert not torch.allclose(base(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-3)


def test_teacher_forced_tokens_run_under_each_rows_policy(steered):
    """feed_tokens (the vLLM backend's hidden-state shadow) keeps the rows' strengths."""
    policy, base, vectors, tokenizer = steered
    sampling = SamplingParams(max_tokens=8, steering=(("warm", 1.0),))
    partial = policy.feed_tokens(policy.begin(ChatPrompt("thank you"), sampling), [[7, 9, 11]])
    reference = merged_policy(base, vectors, tokenizer, {"warm": 1.0})
    expected = reference.feed_tokens(
        reference.begin(ChatPrompt("thank you"), SamplingParams(max_tokens=8)), [[7, 9, 11]]
    )
    assert torch.allclose(partial.hidden, expected.hidden, atol=1e-4)
    assert torch.allclose(policy.next_token_logits(partial), reference.next_token_logits(expected), atol=1e-4)
