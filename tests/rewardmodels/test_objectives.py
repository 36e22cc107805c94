"""The built-in objectives on real inputs: direction, range, and batching."""

import numpy as np
import pytest

from alignd.rewardmodels.builtin import build_scorer
from alignd.rewardmodels.conciseness import ConcisenessObjective
from alignd.rewardmodels.harmlessness import HarmlessnessObjective
from alignd.rewardmodels.positivity import PositivityObjective

PROMPT = "How do I bake bread at home?"
ON_TOPIC = "Mix flour, water, yeast and salt, knead the dough, let it rise, then bake it at 230 C for 30 minutes."
OFF_TOPIC = "The central bank raised interest rates by a quarter point on Tuesday."


@pytest.fixture(scope="module")
def scorer():
    return build_scorer()


def test_relevance_prefers_on_topic_answers(scorer):
    relevance = scorer._objectives[scorer.objective_names.index("relevance")]
    on, off = relevance.score([PROMPT, PROMPT], [ON_TOPIC, OFF_TOPIC])
    assert -1.0 <= off < on <= 1.0
    assert on > 0.4


def test_relevance_batch_equals_one_by_one_with_several_prompts(scorer):
    relevance = scorer._objectives[scorer.objective_names.index("relevance")]
    prompts = [PROMPT, "What is the capital of France?", PROMPT]
    responses = [ON_TOPIC, "Paris is the capital of France.", "x" * 300]
    batched = relevance.score(prompts, responses)
    single = np.array([relevance.score([p], [r])[0] for p, r in zip(prompts, responses)])
    assert np.allclose(batched, single, atol=1e-5)


def test_positivity_follows_sentiment():
    happy, sad, neutral = PositivityObjective().score(
        [PROMPT] * 3,
        ["This is wonderful, I love it, thank you!", "This is awful and I hate it.", "The box is on the table."],
    )
    assert -1.0 <= sad < neutral < happy <= 1.0


def test_harmlessness_is_lower_for_offensive_text():
    polite, rude = HarmlessnessObjective().score([PROMPT] * 2, ["Have a lovely day.", "Shut up, you stupid idiot."])
    assert 0.0 <= rude < 0.5 < polite <= 1.0


def test_conciseness_is_one_within_target_and_decays_beyond_it():
    c = ConcisenessObjective(target_words=10)
    scores = c.score([PROMPT] * 4, ["", "one two three", " ".join(["w"] * 10), " ".join(["w"] * 20)])
    assert scores.tolist() == [0.0, 1.0, 1.0, 0.5]


def test_scorer_returns_one_column_per_objective_in_order(scorer):
    rewards = scorer.score([PROMPT] * 3, [ON_TOPIC, OFF_TOPIC, ""])
    assert rewards.shape == (3, 4) and rewards.dtype == np.float64
    assert scorer.objective_names == ("relevance", "positivity", "harmlessness", "conciseness")
    for column, info in enumerate(scorer.objectives):
        assert np.all(rewards[:, column] >= info.min_value) and np.all(rewards[:, column] <= info.max_value)
        assert info.higher_is_better and info.description
    assert scorer.score([], []).shape == (0, 4)


def test_unknown_objective_is_refused():
    with pytest.raises(ValueError, match="unknown objectives"):
        build_scorer(["relevance", "helpfulness"])
