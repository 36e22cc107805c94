"""Start-up: the config is checked before the policy loads (a vLLM engine takes over a minute to
start), a failed start closes the policy, and the shipped value heads serve the objectives the
server scores whatever else they were trained for."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

import alignd.server.app as app
from alignd.backends.base import Capability, SamplingParams
from alignd.backends.preference_vectors import shipped_vectors
from alignd.backends.transformers_policy import TransformersPolicy
from alignd.clients import AligndClient
from alignd.config import ConfigError, EngineOptions, ServerConfig
from alignd.errors import AligndError
from alignd.rewardmodels.heads import Head, HeadMetadata
from alignd.server.app import check_config, load_scorer, shipped_value_heads
from tests.server.conftest import running_server
from tests.tiny import tiny_tokenizer

SHIPPED_MODEL = "smollm2-135m-instruct"
SHIPPED_HEADS = shipped_value_heads(SHIPPED_MODEL)
SHIPPED_OBJECTIVES = ["relevance", "positivity", "harmlessness", "conciseness"]
HIDDEN_SIZE = 576  # SmolLM2-135M's, which the shipped heads read

pytestmark = pytest.mark.skipif(SHIPPED_HEADS is None, reason="no value heads shipped for the default model")


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A model folder as check_config sees one: named like the shipped model, its config.json
    giving the hidden size. Nothing loads it: the tests stop before load_policy."""
    folder = tmp_path / SHIPPED_MODEL
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": HIDDEN_SIZE}))
    return folder


@pytest.fixture(scope="module")
def smollm_sized_policy() -> TransformersPolicy:
    """A one-layer model with SmolLM2-135M's hidden size under its name, so the shipped heads load."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    return TransformersPolicy(model=model, tokenizer=tokenizer, model_name=SHIPPED_MODEL, device="cpu")


def save_head(path: Path, kind: str, objectives: list[str], hidden_size: int = HIDDEN_SIZE) -> str:
    meta = HeadMetadata(kind, SHIPPED_MODEL, hidden_size, objectives, [0.0] * len(objectives), [1.0] * len(objectives))
    return str(Head(meta).save(path))


def rm(tmp: Path, path: str | None = None, **keys) -> dict:
    """An [[objectives]] table over a 3-output reward-model folder (config.json only: the checks
    read no weights). Keys set to None are left out."""
    folder = tmp / "rm3"
    folder.mkdir(exist_ok=True)
    labels = {"0": "helpful", "1": "safe", "2": "terse"}
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "id2label": labels}))
    table = {"name": "helpful", "kind": "sequence_classification", "path": path or str(folder), "output": 0, **keys}
    return {k: v for k, v in table.items() if v is not None}


def never_load_policy(*args, **kwargs):
    pytest.fail("load_policy was called although the config is wrong")


# -- the config is checked before the policy loads --------------------------------------------

BAD_ARM = {
    "name": "cfg",
    "arms": [
        {"name": "ok", "strategy": "sample", "split": 0.5},
        {"name": "broken", "strategy": "best_of_n", "params": {"n": 100000}, "split": 0.5},
    ],
}
GOOD_ARMS = {
    "name": "cfg",
    "arms": [{"name": "a", "strategy": "sample", "split": 0.5}, {"name": "b", "strategy": "best_of_n", "split": 0.5}],
}


@pytest.mark.parametrize(
    "settings, message",
    [
        (lambda tmp: {"objectives": ("positivty",)}, r"^objectives\[0\]\.name: unknown built-in objective 'positivty'"),
        (lambda tmp: {"objectives": ("positivity", "positivity")}, r"^objectives\[1\]\.name: duplicate"),
        (
            lambda tmp: {"objectives": (rm(tmp, path="/no/such/model"),)},
            r"^objectives\[0\]\.path: no reward model .*no such folder",
        ),
        (
            lambda tmp: {"objectives": (rm(tmp, output=3),)},
            r"^objectives\[0\]\.output: index 3 out of range; the model has 3",
        ),
        (
            lambda tmp: {"objectives": (rm(tmp, output="tone"),)},
            r"^objectives\[0\]\.output: unknown label 'tone'; labels: \['helpful'",
        ),
        (lambda tmp: {"objectives": (rm(tmp, output=None),)}, r"^objectives\[0\]\.output: the model has 3 outputs"),
        (
            lambda tmp: {"objectives": (rm(tmp, transform="standardise"),)},
            r"^objectives\[0\]\.transform: 'standardise' needs mean",
        ),
        (lambda tmp: {"objectives": (rm(tmp, transform="softmax"),)}, r"^objectives\[0\]\.transform: must be one of"),
        (lambda tmp: {"objectives": (rm(tmp, temperature=2),)}, r"^objectives\[0\]\.temperature: unknown key"),
        (lambda tmp: {"objectives": ({"name": "x", "kind": "onnx"},)}, r"^objectives\[0\]\.kind: must be one of"),
        (
            lambda tmp: {"objectives": ({"name": "x", "kind": "python", "entry_point": "nope"},)},
            r"^objectives\[0\]\.entry_point: no entry point 'nope' in group 'alignd.objectives'",
        ),
        (lambda tmp: {"scoring": EngineOptions(coalesce_ms=-1)}, r"^scoring\.coalesce_ms: must be a number"),
        (
            lambda tmp: {"objectives": (rm(tmp, max_length=4096),)},
            r"^objectives\[0\]\.max_length: 4096 is past the model's 2048 positions",
        ),
        (lambda tmp: {"objectives": (rm(tmp, device="gpu"),)}, r"^objectives\[0\]\.device: "),
        (
            lambda tmp: {"objectives": (rm(tmp, runner="vllm", device="cpu"),)},
            r"^objectives\[0\]\.device: the vllm runner places the model itself",
        ),
        (
            lambda tmp: {"objectives": (rm(tmp, gpu_memory_utilization=0.2),)},
            r"^objectives\[0\]\.gpu_memory_utilization: only used with runner = 'vllm'",
        ),
        (
            lambda tmp: {"objectives": (rm(tmp, runner="vllm", gpu_memory_utilization=1.5),)},
            r"^objectives\[0\]\.gpu_memory_utilization: must be in \(0, 1\]",
        ),
        (lambda tmp: {"objectives": (rm(tmp, template="chat"),)}, r"^objectives\[0\]\.path: cannot load the tokenizer"),
        (lambda tmp: {"objectives": (), "value_heads": ""}, r"^objectives: .*at least one objective"),
        (lambda tmp: {"value_heads": str(tmp / "nope")}, r"^value_heads: head .*needs"),
        (
            lambda tmp: {"value_heads": save_head(tmp / "narrow", "value", ["positivity"], HIDDEN_SIZE + 1)},
            r"^value_heads: .*hidden size 577, the served model 'smollm2-135m-instruct' has 576",
        ),
        (
            lambda tmp: {"objectives": ("positivity",), "value_heads": save_head(tmp / "v", "value", ["relevance"])},
            r"^value_heads: value heads predict \['relevance'\], none of which this server scores",
        ),
        (lambda tmp: {"reward_heads": (str(SHIPPED_HEADS),)}, r"^reward_heads\[0\]: expected reward heads"),
        (
            lambda tmp: {"reward_heads": (save_head(tmp / "rm", "reward", ["positivity"]),)},
            r"^reward_heads\[0\]: objective 'positivity' is already served",
        ),
        (lambda tmp: {"default_weights": {"fluency": 1.0}}, r"^default_weights\[fluency\]: unknown objective"),
        (
            lambda tmp: {"default_sampling": SamplingParams(temperature=-1.0)},
            r"^default_sampling\.temperature: must be 0",
        ),
        (
            lambda tmp: {"experiments": (BAD_ARM,), "experiment_store": str(tmp / "s.sqlite")},
            r"^experiments\[0\] \('cfg'\)\.arms\[1\]\.request\.best_of_n\.n: arm 'broken'",
        ),
        (lambda tmp: {"experiments": (GOOD_ARMS,), "experiment_store": ""}, r"^experiment_store: experiments are"),
        (
            lambda tmp: {"experiment_store": "mysql://alignd@db:3306/ab"},
            r"^experiment_store: mysql:// is not a store alignd can use: give a SQLite file path or a postgresql://",
        ),
        (lambda tmp: {"port": 70000}, r"^port: must be at most 65535"),
        (lambda tmp: {"workers": -1}, r"^workers: must be a whole number >= 0"),
        (lambda tmp: {"grace_seconds": "soon"}, r"^grace_seconds: must be a number"),
        (lambda tmp: {"backend": "tensorrt"}, r"^backend: unknown backend 'tensorrt'"),
    ],
)
def test_config_errors_stop_start_up_before_the_policy_loads(monkeypatch, tmp_path, checkpoint, settings, message):
    monkeypatch.setattr(app, "load_policy", never_load_policy)
    config = ServerConfig(**{"model": str(checkpoint), "backend": "vllm", "port": 0, **settings(tmp_path)})
    with pytest.raises(ConfigError, match=message) as error:
        asyncio.run(app.serve(config))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"q_proj": (HIDDEN_SIZE, 8)}, r"layer 'model\.layers\.0\.self_attn\.q_proj' is \(576, 8\) in the checkpoint"),
        (
            {"q_proj": (HIDDEN_SIZE, HIDDEN_SIZE)},
            r"the checkpoint has no linear layer 'model\.layers\.0\.self_attn\.v_proj'",
        ),
    ],
)
def test_vectors_that_do_not_fit_the_checkpoint_stop_start_up_before_the_engine(
    monkeypatch, checkpoint, weights, message
):
    """vLLM loads the model itself: the vectors are checked against the checkpoint's headers first."""
    tensors = {f"model.layers.0.self_attn.{name}.weight": torch.zeros(shape) for name, shape in weights.items()}
    save_file(tensors, str(checkpoint / "model.safetensors"))
    monkeypatch.setattr(app, "load_policy", never_load_policy)
    vectors = str(shipped_vectors(SHIPPED_MODEL))
    config = ServerConfig(model=str(checkpoint), backend="vllm", port=0, preference_vectors=vectors)
    with pytest.raises(ConfigError, match=r"^preference_vectors: vector 'positivity': " + message):
        asyncio.run(app.serve(config))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_a_device_without_hardware_stops_start_up_before_the_policy_loads(monkeypatch, checkpoint):
    monkeypatch.setattr(app, "load_policy", never_load_policy)
    with pytest.raises(ConfigError, match=r"^device: .*CUDA is not available"):
        asyncio.run(app.serve(ServerConfig(model=str(checkpoint), device="cuda", port=0)))


def test_an_unknown_model_stops_start_up_before_the_policy_loads(monkeypatch, tmp_path):
    monkeypatch.setattr(app, "load_policy", never_load_policy)
    with pytest.raises(AligndError, match="not found"):
        asyncio.run(app.serve(ServerConfig(model=str(tmp_path / "missing"), port=0)))


BAD_OBJECTIVE = ("--objectives", "positivty", "--port", "0")


class Reached(Exception):
    pass


def test_a_good_config_reaches_load_policy_with_its_settings(monkeypatch, checkpoint, tmp_path):
    def load_policy(model, **options):
        raise Reached(model, options)

    monkeypatch.setattr(app, "load_policy", load_policy)
    config = ServerConfig(
        model=str(checkpoint),
        backend="vllm",
        objectives=("positivity", "conciseness"),
        reward_heads=(save_head(tmp_path / "rm", "reward", ["rm_positivity"]),),
        default_weights={"positivity": 1.0, "rm_positivity": 1.0},
        experiments=(GOOD_ARMS,),
        experiment_store=str(tmp_path / "s.sqlite"),
        port=0,
    )
    with pytest.raises(Reached) as reached:
        asyncio.run(app.serve(config))
    assert reached.value.args[0] == str(checkpoint) and reached.value.args[1]["backend"] == "vllm"
    # The store is opened only once the service starts.
    assert not (tmp_path / "s.sqlite").exists()


class ClosingPolicy:
    model_name = SHIPPED_MODEL
    device = "cpu"
    hidden_size = HIDDEN_SIZE

    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


@pytest.mark.parametrize("failing", ["load_scorer", "start_server"])
def test_a_start_that_fails_after_the_policy_loaded_closes_it(monkeypatch, checkpoint, failing):
    policy = ClosingPolicy()

    def fail(*args, **kwargs):
        raise ConfigError(f"{failing}: failed")

    monkeypatch.setattr(app, "load_policy", lambda *args, **kwargs: policy)
    monkeypatch.setattr(app, "load_scorer", lambda *args: (None, []))
    monkeypatch.setattr(app, failing, fail)
    with pytest.raises(ConfigError, match=f"^{failing}: failed$"):
        asyncio.run(app.serve(ServerConfig(model=str(checkpoint), backend="vllm", port=0)))
    assert policy.closed == 1


def test_the_cli_reports_a_config_error_in_one_line_without_starting_the_engine(checkpoint):
    done = subprocess.run(
        [sys.executable, "-m", "alignd.cli", "serve", "--model", str(checkpoint), "--backend", "vllm", *BAD_OBJECTIVE],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("alignd: error: objectives[0].name: unknown built-in objective 'positivty'")
    assert done.stderr.strip().count("\n") == 0, done.stderr


# -- value heads and the objectives the server scores ----------------------------------------


def test_auto_serves_the_shipped_heads_for_the_objectives_the_server_scores(checkpoint):
    configured = check_config(ServerConfig(model=str(checkpoint), backend="vllm", objectives=("positivity",)))
    assert configured.value is not None
    path, head = configured.value
    assert Path(path) == SHIPPED_HEADS and head.objectives == SHIPPED_OBJECTIVES


def test_explicit_heads_for_more_objectives_serve_the_ones_the_server_scores(checkpoint):
    config = ServerConfig(model=str(checkpoint), objectives=("conciseness",), value_heads=str(SHIPPED_HEADS))
    assert check_config(config).value is not None


def test_auto_leaves_out_shipped_heads_that_cover_no_served_objective(checkpoint, tmp_path):
    reward = save_head(tmp_path / "rm", "reward", ["rm_positivity"])
    auto = ServerConfig(model=str(checkpoint), objectives=(), reward_heads=(reward,))
    configured = check_config(auto)
    assert configured.value is None and [p for p, _ in configured.reward] == [reward]
    # Named by path, heads that serve nothing are a mistake.
    explicit = ServerConfig(
        model=str(checkpoint), objectives=(), reward_heads=(reward,), value_heads=str(SHIPPED_HEADS)
    )
    with pytest.raises(ConfigError, match=r"^value_heads: .*none of which this server scores \['rm_positivity'\]"):
        check_config(explicit)


def test_shipped_heads_steer_the_one_objective_a_server_scores(smollm_sized_policy):
    config = ServerConfig(port=0, objectives=("positivity",), default_sampling=SamplingParams(max_tokens=8))
    scorer, heads = load_scorer(config, smollm_sized_policy)
    ((path, head),) = heads
    assert Path(path) == SHIPPED_HEADS and head.objectives == SHIPPED_OBJECTIVES
    assert set(scorer.value_sources) == {"positivity"}
    assert scorer.value_sources["positivity"].available == ("heads", "prefix")
    with (
        running_server(smollm_sized_policy, scorer, config, heads) as running,
        AligndClient(f"127.0.0.1:{running.port}", timeout=60) as client,
    ):
        info = client.server_info()
        out = client.generate(
            "hi",
            strategy="controlled",
            value_source="heads",
            num_candidates=2,
            block_tokens=4,
            seed=1,
        )
    assert [o.name for o in info.objectives] == ["positivity"]
    assert info.objective("positivity").value_sources == ["heads", "prefix"]
    (shipped,) = info.heads
    assert shipped.objectives == SHIPPED_OBJECTIVES and shipped.base_model == SHIPPED_MODEL
    assert set(out.rewards) == {"positivity"} and out.details["blocks"] >= 1


class EngineLikePolicy(ClosingPolicy):
    """Like VLLMPolicy after start: sampling and extension, no hidden states of its own."""

    capabilities = frozenset({Capability.SAMPLE, Capability.EXTEND})


def test_vllm_serving_one_objective_takes_the_shipped_heads_without_a_shadow(monkeypatch, checkpoint):
    """What `alignd serve --backend vllm --objectives positivity` does once the engine is up."""
    shadows = []
    monkeypatch.setattr(app, "_ensure_hidden_states", lambda config, field, policy: shadows.append(field))
    config = ServerConfig(model=str(checkpoint), backend="vllm", objectives=("positivity",))
    scorer, heads = load_scorer(config, EngineLikePolicy(), check_config(config))
    assert [Path(path) for path, _ in heads] == [SHIPPED_HEADS]
    sources = scorer.value_sources
    assert set(sources) == {"positivity"} and sources["positivity"].available == ("heads", "prefix")
    # The shipped measurements rank prefix scoring first for positivity: no transformers shadow.
    assert sources["positivity"].auto == "prefix" and shadows == []
