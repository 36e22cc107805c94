"""A strategy is one module: this file defines one, and the server serves it with no other wiring
(a strategy without parameters needs no proto message)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from alignd.backends.base import ChatPrompt, Policy, SamplingParams
from alignd.clients import AligndClient, AligndClientError
from alignd.config import ServerConfig
from alignd.decoding.base import (
    STRATEGIES,
    Decode,
    DecodeContext,
    DecodeRequest,
    DecodeResult,
    KLEstimate,
    Strategy,
    register,
)
from alignd.decoding.weights import parse_weights
from alignd.rewardmodels.base import Scorer
from tests.server.conftest import running_server


@dataclass(frozen=True)
class ShortestParams:
    pass


class ShortestOfFour(Strategy[ShortestParams]):
    name = "shortest_of_four"
    description = "Four samples, the shortest one returned."
    Params = ShortestParams
    refuses_greedy = True

    def rows(self, params: ShortestParams) -> int:
        return 4

    def plan(self, request: DecodeRequest, params: ShortestParams, policy: Policy, scorer: Scorer) -> Decode:
        def decode(ctx: DecodeContext) -> DecodeResult:
            (completions,) = ctx.sample(4)
            scored = ctx.score(completions)
            shortest = min(scored, key=lambda c: len(c.completion.token_ids))
            return ctx.finish(shortest, scored, [KLEstimate("none", "estimate", 0.0, "not estimated")])

        return decode


@pytest.fixture
def registered():
    register(ShortestOfFour)
    yield
    del STRATEGIES[ShortestOfFour.name]


def test_a_strategy_in_one_file_is_served_over_grpc(registered, tiny_policy, letter_scorer):
    config = ServerConfig(port=0, default_sampling=SamplingParams(max_tokens=12))
    with (
        running_server(tiny_policy, letter_scorer, config) as running,
        AligndClient(f"127.0.0.1:{running.port}", timeout=60) as client,
    ):
        assert "shortest_of_four" in {s.name for s in client.server_info().strategies}
        out = client.generate("hi", strategy="shortest_of_four", seed=3, return_candidates=True)
        with pytest.raises(AligndClientError, match=r"sampling\.temperature"):
            client.generate("hi", strategy="shortest_of_four", temperature=0.0)
    assert len(out.candidates) == 4 and [c.text for c in out.candidates if c.selected] == [out.text]
    assert (out.usage.scorer_calls, out.usage.scored_texts) == (1, 4)
    assert out.usage.prompt_tokens == len(tiny_policy.prompt_ids(ChatPrompt("hi")))


def test_the_context_counts_the_new_strategys_work(registered, tiny_policy, letter_scorer):
    sampling = SamplingParams(temperature=1.0, max_tokens=12, seed=5)
    request = DecodeRequest(ChatPrompt("hi"), sampling, parse_weights({}, letter_scorer.objective_names), True)
    result = ShortestOfFour().decode(request, ShortestParams(), tiny_policy, letter_scorer)
    lengths = [len(c.completion.token_ids) for c in result.candidates]
    assert len(result.token_ids) == min(lengths)
    assert result.usage.generated_tokens == sum(lengths)
    assert set(result.usage.phase_seconds) == {"sample", "score"}
