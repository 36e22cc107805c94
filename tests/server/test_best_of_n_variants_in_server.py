"""speculative_best_of_n and soft_best_of_n through gRPC on the tiny model: documented parameters,
the rejection rounds in the stream, and errors that name the field."""

from __future__ import annotations

import grpc
import pytest

from alignd.clients import AligndClientError, Generation


def test_server_info_documents_both_strategies(client):
    strategies = {s.name: s for s in client.server_info().strategies}
    speculative, soft = strategies["speculative_best_of_n"], strategies["soft_best_of_n"]
    assert speculative.parameter("rejection").choices == ["tokens", "memory"]
    assert speculative.parameter("keep_fraction").max_value == 1.0
    assert speculative.parameter("num_candidates").default_value == "32"
    assert set(speculative.requires) == {"sample", "extend"}
    assert soft.parameter("beta").min_value == 0.0 and "exp(w^T r_i / beta)" in soft.parameter("beta").description


def test_speculative_rejection_rounds_stream_their_scores_and_kept_rows(client):
    events = list(
        client.generate_stream(
            "hi",
            strategy="speculative_best_of_n",
            num_candidates=8,
            keep_fraction=0.5,
            rejection_tokens=4,
            max_rejections=2,
            value_source="prefix",
            weights={"e_count": 1.0},
            max_tokens=16,
            seed=4,
        )
    )
    out = events[-1]
    assert isinstance(out, Generation) and out.details["rejection_rounds"] == 2
    rounds = [e for e in events[:-1] if e.phase == "rejection"]
    assert [len(e.candidates) for e in rounds] == [8, 4]
    assert [sum(c.selected for c in e.candidates) for e in rounds] == [4, 2]
    assert out.usage.generated_tokens > len(out.token_ids)


def test_soft_best_of_n_through_grpc(client):
    out = client.generate("hi", strategy="soft_best_of_n", n=4, beta=0.05, max_tokens=8, seed=2, return_candidates=True)
    assert len(out.candidates) == 4 and sum(c.selected for c in out.candidates) == 1
    assert 0.0 < out.details["chosen_probability"] <= 1.0
    assert [k.kind for k in out.kl] == ["upper_bound"]


@pytest.mark.parametrize(
    "strategy, options, field",
    [
        ("soft_best_of_n", {"beta": 0.0}, "soft_best_of_n.beta"),
        ("soft_best_of_n", {"beta": float("inf")}, "soft_best_of_n.beta"),
        ("speculative_best_of_n", {"keep_fraction": 0.0}, "speculative_best_of_n.keep_fraction"),
        ("speculative_best_of_n", {"num_candidates": 10_000}, "speculative_best_of_n.num_candidates"),
        ("speculative_best_of_n", {"rejection": "sometimes"}, "speculative_best_of_n.rejection"),
        ("speculative_best_of_n", {"rejection": "memory", "memory_tokens": 10}, "speculative_best_of_n.memory_tokens"),
        ("speculative_best_of_n", {"value_source": "heads"}, "speculative_best_of_n.value_source"),
    ],
)
def test_bad_parameters_name_the_field(client, strategy, options, field):
    with pytest.raises(AligndClientError) as error:
        client.generate("hi", strategy=strategy, **options)
    assert error.value.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
    assert error.value.details.startswith(field + ":")
