"""evolutionary (DARWIN) on the tiny model: mutation parsing, replacement rounds, the archive."""

import math

import numpy as np
import pytest

from alignd.backends.base import ChatPrompt, Completion, FinishReason, SampleBatch, SamplingParams
from alignd.decoding.base import DecodeRequest, get_strategy
from alignd.decoding.evolutionary import MUTATION_PROMPT, parse_variants
from alignd.decoding.params import Limits, validate_params
from alignd.decoding.weights import parse_weights
from alignd.errors import InvalidArgument
from alignd.rewardmodels.objective_scorer import ObjectiveScorer
from tests.conftest import CountingObjective

ORIGINAL = "tell me about bread"
VARIANTS = [
    "Describe how bread is made at home.",
    "Explain the history of bread briefly.",
    "List three kinds of bread and what sets them apart.",
    "Give a short overview of bread.",
]


class ScriptedMutations:
    """The tiny policy, except that mutation prompts get a fixed numbered-list reply."""

    def __init__(self, policy, reply):
        self._policy, self.reply, self.mutation_calls = policy, reply, []

    def __getattr__(self, name):
        return getattr(self._policy, name)

    def sample(self, prompts, n, sampling, cancel=None):
        if not prompts[0].user.startswith(MUTATION_PROMPT.split("{")[0]):
            return self._policy.sample(prompts, n, sampling, cancel)
        self.mutation_calls.append([p.user for p in prompts])
        reply = Completion(self.reply, [1, 2, 3], [0.0] * 3, FinishReason.STOP)
        return SampleBatch([[reply] for _ in prompts], [10] * len(prompts), 10 * len(prompts))


class PromptRecorder(CountingObjective):
    def __init__(self):
        super().__init__("e_count", "e")
        self.prompts = set()

    def score(self, prompts, responses):
        self.prompts.update(prompts)
        return super().score(prompts, responses)


def params(**values):
    return validate_params("evolutionary", get_strategy("evolutionary").Params, values, Limits())


def run(policy, scorer, chosen, max_tokens=24, seed=3):
    strategy = get_strategy("evolutionary")
    events = []
    sampling = strategy.default_sampling(SamplingParams(max_tokens=max_tokens, seed=seed))
    request = DecodeRequest(
        ChatPrompt(ORIGINAL),
        sampling,
        parse_weights({}, scorer.objective_names),
        return_candidates=True,
        on_progress=events.append,
    )
    return strategy.decode(request, chosen, policy, scorer), events


def test_parse_variants_reads_numbered_and_bulleted_lists():
    reply = (
        'Sure! Here are rewrites:\n1. "Describe how bread is made at home."\n2) Explain bread.\n'
        "3: tell me about bread\n- Instruction 4: List three kinds of bread.\n* x\n4. Describe how bread is "
        "made at home.\nSome closing words."
    )
    seen = {ORIGINAL}
    assert parse_variants(reply, ORIGINAL, seen) == [
        "Describe how bread is made at home.",
        "Explain bread.",
        "List three kinds of bread.",
    ]
    assert parse_variants("no list at all", ORIGINAL, set()) == []
    assert parse_variants("1. " + "very long " * 100, ORIGINAL, set()) == []


def test_mutations_become_beams_and_rewards_use_the_original_instruction(tiny_policy):
    policy = ScriptedMutations(tiny_policy, "\n".join(f"{i + 1}. {v}" for i, v in enumerate(VARIANTS)))
    recorder = PromptRecorder()
    scorer = ObjectiveScorer([recorder, CountingObjective("o_count", "o")])
    result, events = run(policy, scorer, params(beams=5, replace_every=8, keep_top=3, cycles=2))
    mutations = [e for e in events if e.phase == "mutation"]
    assert [e.step for e in mutations] == [1, 2]
    assert mutations[0].instructions == [ORIGINAL, *VARIANTS]
    assert policy.mutation_calls[0] == [MUTATION_PROMPT.format(count=4, instruction=ORIGINAL)]
    # Cycle 2 mutates the archive's best three instructions in one batched call.
    assert len(policy.mutation_calls[1]) == 3
    assert recorder.prompts == {ORIGINAL}
    assert result.details["mutation_fallbacks"] <= 4  # cycle 2 sees repeats of known instructions
    assert result.kl == []


def test_replacement_keeps_the_top_beams_and_copies_keep_their_instruction(tiny_policy, letter_scorer):
    policy = ScriptedMutations(tiny_policy, "\n".join(f"{i + 1}. {v}" for i, v in enumerate(VARIANTS)))
    result, events = run(policy, letter_scorer, params(beams=5, replace_every=6, keep_top=2, cycles=1), max_tokens=24)
    rounds = [e for e in events if e.phase == "replace"]
    assert 1 <= len(rounds) == result.details["replacement_rounds"] <= 3
    for event, following in zip(rounds, [*rounds[1:], next(e for e in events if e.phase == "cycle")]):
        scores = np.array([c.weighted_score for c in event.candidates])
        kept = {i for i, c in enumerate(event.candidates) if c.selected}
        assert len(kept) == 2 and min(scores[list(kept)]) >= max(np.delete(scores, list(kept)))
        # Every beam of the next round continues a kept beam, under that beam's instruction.
        for row, text in enumerate(c.completion.text for c in following.candidates):
            parents = [k for k in kept if text.startswith(event.candidates[k].completion.text)]
            assert parents and following.instructions[row] in {event.instructions[k] for k in parents}


def test_the_best_final_beam_over_all_cycles_is_returned(tiny_policy, letter_scorer):
    result, events = run(tiny_policy, letter_scorer, params(beams=3, replace_every=8, keep_top=2, cycles=2))
    finals = [c for e in events if e.phase == "cycle" for c in e.candidates]
    assert len(finals) == 6 == len(result.candidates)
    assert result.weighted_score == max(c.weighted_score for c in finals)
    assert result.rewards == {"e_count": result.text.count("e"), "o_count": result.text.count("o")}
    # The tiny model writes no numbered lists: every mutation slot falls back to the original.
    assert result.details["mutation_fallbacks"] == 2 * 2
    assert result.usage.generated_tokens >= sum(len(c.completion.token_ids) for c in finals)


def test_same_seed_same_search(tiny_policy, letter_scorer):
    first, _ = run(tiny_policy, letter_scorer, params(beams=3, replace_every=8, keep_top=1, cycles=2), seed=9)
    second, _ = run(tiny_policy, letter_scorer, params(beams=3, replace_every=8, keep_top=1, cycles=2), seed=9)
    assert first.token_ids == second.token_ids and first.weighted_score == second.weighted_score


def test_authors_defaults():
    strategy = get_strategy("evolutionary")
    defaults = strategy.Params()
    assert (defaults.beams, defaults.replace_every, defaults.keep_top, defaults.cycles) == (5, 40, 3, 3)
    sampling = strategy.default_sampling(SamplingParams())
    assert (sampling.temperature, sampling.top_k) == (0.7, 40)


@pytest.mark.parametrize(
    "values, field",
    [
        ({"beams": 1}, "evolutionary.beams"),
        ({"replace_every": 0}, "evolutionary.replace_every"),
        ({"cycles": 0}, "evolutionary.cycles"),
        ({"keep_top": 0}, "evolutionary.keep_top"),
        ({"cycles": 11}, "evolutionary.cycles"),
        ({"beams": 65}, "evolutionary.beams"),
        ({"beams": math.nan}, "evolutionary.beams"),
    ],
)
def test_bad_evolutionary_params_are_invalid_argument(values, field):
    with pytest.raises(InvalidArgument) as error:
        params(**values)
    assert error.value.field == field


def test_keep_top_must_be_below_beams(tiny_policy, letter_scorer):
    with pytest.raises(InvalidArgument) as error:
        run(tiny_policy, letter_scorer, params(beams=3, keep_top=3))
    assert error.value.field == "evolutionary.keep_top"
