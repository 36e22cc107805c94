import math

import numpy as np
import pytest

from alignd.decoding.base import get_strategy
from alignd.decoding.params import Limits, describe_params, validate_params
from alignd.decoding.weights import parse_weights
from alignd.errors import InvalidArgument

NAMES = ("relevance", "positivity", "harmlessness", "conciseness")


def test_weights_are_normalised_and_unnamed_objectives_get_zero():
    w = parse_weights({"relevance": 0.6, "harmlessness": 0.2}, NAMES)
    assert w.as_dict() == pytest.approx(
        {"relevance": 0.75, "positivity": 0.0, "harmlessness": 0.25, "conciseness": 0.0}
    )
    assert w.weighted(np.array([[1.0, 5.0, 2.0, 9.0]]))[0] == pytest.approx(0.75 + 0.5)


def test_empty_weights_take_the_defaults_or_uniform():
    assert parse_weights({}, NAMES).as_dict() == {n: 0.25 for n in NAMES}
    assert parse_weights({}, NAMES, {"positivity": 2.0}).as_dict()["positivity"] == 1.0


@pytest.mark.parametrize(
    "weights, field",
    [
        ({"helpfulness": 1.0}, "weights[helpfulness]"),
        ({"relevance": math.nan}, "weights[relevance]"),
        ({"relevance": math.inf}, "weights[relevance]"),
        ({"relevance": -0.1, "positivity": 1.0}, "weights[relevance]"),
        ({"relevance": 0.0, "positivity": 0.0}, "weights"),
    ],
)
def test_bad_weights_name_the_field(weights, field):
    with pytest.raises(InvalidArgument) as error:
        parse_weights(weights, NAMES)
    assert error.value.field == field
    assert str(error.value).startswith(field + ":")


def test_params_take_defaults_and_respect_server_limits():
    params_cls = get_strategy("best_of_n").Params
    assert validate_params("best_of_n", params_cls, {}, Limits()).n == 8
    assert validate_params("best_of_n", params_cls, {"n": 16}, Limits(max_candidates=16)).n == 16
    with pytest.raises(InvalidArgument, match=r"^best_of_n\.n: must be <= 16"):
        validate_params("best_of_n", params_cls, {"n": 17}, Limits(max_candidates=16))
    with pytest.raises(InvalidArgument, match=r"^best_of_n\.n: must be >= 1"):
        validate_params("best_of_n", params_cls, {"n": 0}, Limits())
    with pytest.raises(InvalidArgument, match=r"^best_of_n\.m: unknown parameter"):
        validate_params("best_of_n", params_cls, {"m": 2}, Limits())
    with pytest.raises(InvalidArgument, match=r"^best_of_n\.n: must be an integer"):
        validate_params("best_of_n", params_cls, {"n": 2.5}, Limits())


def test_described_params_show_the_limit_as_maximum():
    (n,) = describe_params(get_strategy("best_of_n").Params, Limits(max_candidates=32))
    assert (n.name, n.type, n.default, n.min, n.max) == ("n", "int", 8, 1, 32)


def test_unknown_strategy_names_the_field():
    with pytest.raises(InvalidArgument, match=r"^strategy: unknown strategy 'beam'"):
        get_strategy("beam")


def test_no_strategy_parameter_shares_a_name_with_a_sampling_setting():
    # The client routes keyword arguments named like sampling settings to `sampling`, so a
    # strategy parameter with such a name could never be set.
    import dataclasses

    from alignd.clients.client import _SAMPLING_FIELDS
    from alignd.decoding.base import STRATEGIES

    for strategy in STRATEGIES.values():
        clash = {f.name for f in dataclasses.fields(strategy.Params)} & set(_SAMPLING_FIELDS)
        assert not clash, f"{strategy.name} parameters {clash} clash with sampling settings"
