"""linear_alignment and evolutionary through gRPC on the tiny model: sampling defaults, stream
events, and errors that name the field."""

from __future__ import annotations

import grpc
import pytest

from alignd.clients import AligndClientError, Generation, Progress, SamplingSettings


def test_server_info_lists_each_strategys_sampling_defaults(client):
    strategies = {s.name: s for s in client.server_info().strategies}
    linear = strategies["linear_alignment"]
    assert (linear.sampling_defaults.temperature, linear.sampling_defaults.top_p) == pytest.approx((0.5, 0.8))
    assert linear.sampling_defaults.top_k is None  # unset: the server's default applies
    evolutionary = strategies["evolutionary"]
    assert (evolutionary.sampling_defaults.temperature, evolutionary.sampling_defaults.top_k) == (
        pytest.approx(0.7),
        40,
    )
    assert strategies["sample"].sampling_defaults == SamplingSettings()
    assert set(linear.requires) == {"sample", "extend", "tokenwise"}


def test_linear_alignment_through_grpc(client):
    events = list(
        client.generate_stream(
            "hi", strategy="linear_alignment", principle="answer kindly", alpha=2.5, max_tokens=16, seed=1, top_p=1.0
        )
    )
    out = events[-1]
    assert isinstance(out, Generation) and out.kl[0].name == "linear_alignment_estimate"
    assert set(out.details) == {"alpha", "mean_support_tokens", "overridden_fraction"} and len(out.token_ids) <= 16
    assert out.details["alpha"] == 2.5 and out.details["mean_support_tokens"] >= 1
    # One event per token, each with the text it committed: together they are the answer.
    assert all(isinstance(e, Progress) and e.phase == "token" for e in events[:-1])
    assert len(events) - 1 == len(out.token_ids)
    assert "".join(e.text_delta for e in events[:-1]) == out.text
    # The same seed gives the same text; the request's own sampling settings override the defaults.
    again = client.generate(
        "hi", strategy="linear_alignment", principle="answer kindly", alpha=2.5, max_tokens=16, seed=1, top_p=1.0
    )
    assert again.token_ids == out.token_ids
    # placement reaches the strategy: in the user's turn the principle needs no system turn of its own.
    placed = {
        where: client.generate(
            "hi", strategy="linear_alignment", principle="answer kindly", placement=where, max_tokens=8, seed=1
        )
        for where in ("system", "user")
    }
    assert placed["user"].usage.prompt_tokens < placed["system"].usage.prompt_tokens


def test_evolutionary_through_grpc(client):
    events = list(
        client.generate_stream(
            "hi",
            strategy="evolutionary",
            beams=3,
            keep_top=1,
            replace_every=6,
            cycles=2,
            max_tokens=12,
            mutation_tokens=16,
            seed=2,
        )
    )
    out = events[-1]
    assert isinstance(out, Generation) and out.details["cycles"] == 2
    phases = [e.phase for e in events[:-1]]
    assert phases.count("mutation") == 2 and phases.count("cycle") == 2 and "replace" in phases
    cycle = next(e for e in events[:-1] if e.phase == "cycle")
    assert len(cycle.instructions) == len(cycle.candidates) == 3 and cycle.instructions[0] == "hi"


@pytest.mark.parametrize(
    "strategy, options, field",
    [
        ("linear_alignment", {"principle": ""}, "linear_alignment.principle"),
        ("linear_alignment", {"principle": "p" * 2001}, "linear_alignment.principle"),
        ("linear_alignment", {"alpha": float("inf")}, "linear_alignment.alpha"),
        ("linear_alignment", {"alpha": float("nan")}, "linear_alignment.alpha"),
        ("linear_alignment", {"placement": "assistant"}, "linear_alignment.placement"),
        ("evolutionary", {"beams": 1}, "evolutionary.beams"),
        ("evolutionary", {"replace_every": 0}, "evolutionary.replace_every"),
        ("evolutionary", {"cycles": 0}, "evolutionary.cycles"),
        ("evolutionary", {"beams": 3, "keep_top": 3}, "evolutionary.keep_top"),
    ],
)
def test_bad_search_parameters_name_the_field(client, strategy, options, field):
    with pytest.raises(AligndClientError) as error:
        client.generate("hi", strategy=strategy, **options)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details.startswith(field + ":")
