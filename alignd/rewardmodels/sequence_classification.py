"""Reward models as objectives: any transformers `AutoModelForSequenceClassification` checkpoint.

A checkpoint is loaded once (`SequenceClassifier`, on the scoring engine) and each objective
(`ModelOutputObjective`) reads one of its outputs: a single-score reward model serves one
objective, a multi-attribute one serves several from one forward.

Each (prompt, response) pair is rendered as the reward model expects:
- `chat`: the checkpoint's own chat template over [user: prompt, assistant: response], as reward
  models trained on chat data read it;
- `plain`: the tokenizer's text-pair encoding (prompt, response), e.g. [CLS] p [SEP] r [SEP] for
  an encoder, the two texts in sequence for a decoder;
- `auto`: `chat` when the tokenizer has a chat template, else `plain`.
Texts longer than `max_length` tokens are cut: a chat rendering loses its beginning (the response's
end, where decoders pool, is kept); a text pair loses tokens from its longer text first. The model
pools its own way (decoders: the last token that is not padding; encoders: their [CLS] head).
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignd.errors import FailedPrecondition
from alignd.rewardmodels.base import Objective, ObjectiveInfo
from alignd.rewardmodels.engine import EngineModel, ScoringEngine, pad_batch

TEMPLATES = ("auto", "chat", "plain")
DEFAULT_MAX_LENGTH = 512
TRANSFORMS = ("raw", "sigmoid", "standardise")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# Written by `alignd train reward --export hf` into config.json: what the model was trained for
# and the mean and std of its scores on its training responses (the `standardise` defaults).
METADATA_KEY = "alignd"


class ScoringError(FailedPrecondition):
    """A reward model gave an unusable score (FAILED_PRECONDITION: the request was fine, this
    server's reward model is not)."""


def check_finite(values: np.ndarray, objective: str, source: str) -> np.ndarray:
    """`values`, or ScoringError naming the objective and the first non-finite candidate."""
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ScoringError(
            f"objectives.{objective}: {source} gave a non-finite score ({values[bad[0]]}) for candidate {int(bad[0])}"
        )
    return values


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: half precision (bfloat16, or float16 where bf16 is unsupported) on CUDA, float32
    on the CPU."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, dtype)


def read_checkpoint_config(path: str) -> Any:
    """The checkpoint's `PretrainedConfig` (config.json only, no weights): what the start-up
    checks need. Raises OSError/ValueError when there is no usable checkpoint at `path`."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)


def checkpoint_id(path: str) -> str:
    """A checkpoint's identity in engine keys: the resolved folder, or the hub id as given."""
    return str(Path(path).resolve()) if Path(path).exists() else path


def output_labels(config: Any) -> list[str]:
    """The label of each output, in order (`id2label`; transformers fills LABEL_i by default)."""
    return [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]


def score_statistics(config: Any) -> tuple[float, float] | None:
    """(mean, std) stored by an alignd export, else None."""
    stored = getattr(config, METADATA_KEY, None)
    if isinstance(stored, dict) and "score_mean" in stored and "score_std" in stored:
        return float(stored["score_mean"]), float(stored["score_std"])
    return None


class RewardModel(EngineModel):
    """What every runner of a reward-model checkpoint shares: its tokenizer, how (prompt,
    response) pairs are rendered and encoded, its labels, and `scores` through the engine."""

    path: str
    config: Any  # the checkpoint's PretrainedConfig
    outputs: int

    def _set_up_inputs(self, path: str, max_length: int, template: str) -> None:
        from transformers import AutoTokenizer

        self.path = path
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.template = ("chat" if self.tokenizer.chat_template else "plain") if template == "auto" else template
        if self.template == "chat" and not self.tokenizer.chat_template:
            raise ValueError(f"{path}: template 'chat' asked for, but the tokenizer has no chat template")
        if self.template == "chat":
            self.tokenizer.truncation_side = "left"
        # Request threads encode concurrently; a fast tokenizer changing its truncation settings
        # while another thread encodes fails with "Already borrowed".
        self._lock = threading.Lock()

    def _fallback_pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        return int(pad)

    @property
    def labels(self) -> list[str]:
        return output_labels(self.config)

    def render(self, prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
        """The chat-template texts (template `chat` only)."""
        conversations = [
            [{"role": "user", "content": p}, {"role": "assistant", "content": r}] for p, r in zip(prompts, responses)
        ]
        return list(self.tokenizer.apply_chat_template(conversations, tokenize=False))

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        """Token ids of each pair as the model reads it, at most max_length each."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
        with self._lock:
            if self.template == "chat":
                encoded = self.tokenizer(
                    self.render(prompts, responses),
                    add_special_tokens=False,
                    truncation=True,
                    max_length=self.max_length,
                )
            else:
                encoded = self.tokenizer(list(prompts), list(responses), truncation=True, max_length=self.max_length)
        # An empty text pair (no special tokens to add) still needs one token to pool on.
        return [ids if ids else [self.pad_id] for ids in encoded["input_ids"]]

    def encode_shared(self, prompts: Sequence[str], responses: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        """The pairs' token ids as (the prefix they all share, each one's rest). Every rest
        keeps its last token that is not the pad id: decoders pool on it, and a rest of pad ids
        alone (a template ending in EOS when EOS pads) would pool elsewhere."""
        encoded = self.encode(prompts, responses)
        if len(encoded) < 2:
            return [], encoded
        last_real = min(last_not_pad(ids, self.pad_id) for ids in encoded)
        if last_real < 1:
            return [], encoded
        head = np.array([ids[:last_real] for ids in encoded])
        differs = np.flatnonzero((head != head[0]).any(axis=0))
        shared = int(differs[0]) if differs.size else last_real
        return encoded[0][:shared], [ids[shared:] for ids in encoded]

    def scores(self, engine: ScoringEngine, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Raw outputs [N, num_labels] for the pairs, through the engine (their shared prefix
        read once where the model allows)."""
        if not responses:
            return np.zeros((0, self.outputs))
        if self.shares_prefix:
            prefix, rest = self.encode_shared(prompts, responses)
            return engine.run(self, rest, prefix).double().numpy()
        return engine.run(self, self.encode(prompts, responses)).double().numpy()


class SequenceClassifier(RewardModel):
    """One sequence-classification checkpoint on the engine: texts -> logits [N, num_labels]."""

    def __init__(
        self,
        path: str,
        device: str | torch.device = "cpu",
        dtype: str = "auto",
        max_length: int = DEFAULT_MAX_LENGTH,
        template: str = "auto",
        num_labels: int | None = None,
    ) -> None:
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        self._set_up_inputs(path, max_length, template)
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        extra = {} if num_labels is None else {"num_labels": num_labels}
        verbosity = hf_logging.get_verbosity()
        if num_labels is not None:  # a fresh score layer (training an export): no warning about it
            hf_logging.set_verbosity_error()
        try:
            model = AutoModelForSequenceClassification.from_pretrained(path, dtype=self.dtype, **extra)
        finally:
            hf_logging.set_verbosity(verbosity)
        if model.config.pad_token_id is None:
            # Decoders find each row's last token by the pad id; without one they refuse batches.
            model.config.pad_token_id = self._fallback_pad_id()
        self.pad_id = int(model.config.pad_token_id)
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.outputs = int(model.config.num_labels)
        self.key = self.key_for(path, device, dtype, max_length, template)
        # Encoders read a text pair with segment ids (BERT: 0 up to the first [SEP], 1 after);
        # the engine passes ids and mask only, so `forward` rebuilds them from the [SEP] token.
        self._pair_segments = (
            self.template == "plain"
            and "token_type_ids" in self.tokenizer.model_input_names
            and getattr(model.config, "type_vocab_size", 1) > 1
            and self.tokenizer.sep_token_id is not None
        )
        self.shares_prefix = self._prefix_reuse_works()

    @staticmethod
    def key_for(path: str, device: str | torch.device, dtype: str, max_length: int, template: str) -> tuple:
        """The engine key: one copy per checkpoint and settings however many objectives read it."""
        return ("sequence_classification", checkpoint_id(path), str(torch.device(device)), dtype, max_length, template)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if not self._pair_segments:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        sep = (input_ids == self.tokenizer.sep_token_id).long()
        segments = ((sep.cumsum(1) - sep) >= 1).long() * attention_mask
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=segments).logits

    def prefix_state(self, prefix_ids: torch.Tensor) -> Any:
        return self.model.base_model(input_ids=prefix_ids, use_cache=True).past_key_values

    def forward_after(self, state: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        cache = copy.deepcopy(state)  # the forward appends to it; the prefix's stays for the next batch
        cache.batch_repeat_interleave(input_ids.shape[0])
        done = cache.get_seq_length()
        rows, width = input_ids.shape
        mask = torch.cat([attention_mask.new_ones((rows, done)), attention_mask], dim=1)
        positions = torch.arange(done, done + width, device=input_ids.device).expand(rows, width)
        return self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
        ).logits

    @torch.inference_mode()
    def _prefix_reuse_works(self) -> bool:
        """Whether reading a prefix once gives the scores of full forwards: checked on two probe
        pairs at load (decoders with a key/value cache pass; encoders, which read both ways, and
        models without a cache do not)."""
        if getattr(self.model.config, "is_encoder_decoder", False) or not hasattr(self.model, "score"):
            return False
        try:
            prefix, rest = self.encode_shared(["Is this a probe?"] * 2, ["Yes, a short one.", "No."])
            if not prefix:
                return False
            full = self.forward(*pad_batch([[*prefix, *r] for r in rest], self.pad_id, self.device))
            after = self.forward_after(
                self.prefix_state(torch.tensor([prefix], device=self.device)),
                *pad_batch(rest, self.pad_id, self.device),
            )
        except (TypeError, ValueError, RuntimeError, AttributeError):
            return False
        # Half precision rounds the two orders of work differently, as it does different batches.
        tolerance = 1e-3 if self.dtype == torch.float32 else 3e-2
        scale = max(1.0, float(full.float().abs().max()))
        return bool(torch.allclose(full.float(), after.float(), atol=tolerance * scale, rtol=0.0))


def last_not_pad(ids: Sequence[int], pad_id: int) -> int:
    """Index of the last token that is not `pad_id` (0 if there is none)."""
    for index in range(len(ids) - 1, -1, -1):
        if ids[index] != pad_id:
            return index
    return 0


@dataclass(frozen=True)
class Transform:
    """What an objective applies to its raw output: raw, sigmoid, or (x - mean) / std; then the
    sign that makes higher better."""

    kind: str = "raw"
    mean: float = 0.0
    std: float = 1.0
    negate: bool = False

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if self.kind == "sigmoid":
            out = 0.5 * (1.0 + np.tanh(0.5 * raw))  # the logistic function, without exp overflow
        elif self.kind == "standardise":
            out = (raw - self.mean) / self.std
        else:
            out = raw
        return -out if self.negate else out

    @property
    def range(self) -> tuple[float, float]:
        low, high = (0.0, 1.0) if self.kind == "sigmoid" else (-math.inf, math.inf)
        return (-high, -low) if self.negate else (low, high)

    def describe(self) -> str:
        text = {"raw": "raw", "sigmoid": "sigmoid", "standardise": f"(x - {self.mean:.4g}) / {self.std:.4g}"}[self.kind]
        return f"negated {text}" if self.negate else text


class ModelOutputObjective(Objective):
    """One output of a sequence-classification model, transformed. Objectives on the same
    model share its forward: a scorer asks `model_scores` once and gives each its column."""

    def __init__(
        self,
        name: str,
        classifier: RewardModel,
        engine: ScoringEngine,
        output: int,
        transform: Transform = Transform(),
    ) -> None:
        self.classifier = classifier
        self.engine = engine
        self.output = output
        self.transform = transform
        low, high = transform.range
        label = classifier.labels[output]
        self.info = ObjectiveInfo(
            name=name,
            description=(
                f"output {output} ({label}) of the reward model at {classifier.path}, {transform.describe()}"
                + (" (vLLM pooling runner)" if classifier.schedules_itself else "")
            ),
            min_value=low,
            max_value=high,
            source=f"sequence_classification {classifier.path} output {output}",
        )

    @property
    def shared_model(self) -> RewardModel:
        return self.classifier

    def model_scores(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return self.classifier.scores(self.engine, prompts, responses)

    def from_model_scores(self, raw: np.ndarray) -> np.ndarray:
        return check_finite(
            self.transform(raw[:, self.output]), self.name, f"the reward model at {self.classifier.path}"
        )

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        if not responses:
            return np.zeros(0)
        return self.from_model_scores(self.model_scores(prompts, responses))
