"""Text handling both backends share: the chat template and stop sequences."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Sequence
from typing import Any

from alignd.backends.base import ChatPrompt
from alignd.errors import InvalidArgument


class TokenizerText:
    """render / tokenize / detokenize for a policy with a Hugging Face `tokenizer`. Calls hold
    `_tokenizer_lock`: worker threads call in at once, and a fast tokenizer used from two threads
    (or while the transformers backend switches its padding) fails with "Already borrowed"."""

    tokenizer: Any
    _tokenizer_lock: threading.Lock | threading.RLock

    def render(self, prompt: ChatPrompt) -> str:
        return render_chat(self.tokenizer, prompt)

    def tokenize(self, text: str) -> list[int]:
        with self._tokenizer_lock:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def detokenize(self, token_ids: Sequence[int]) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def detokenize_many(self, rows: Sequence[Sequence[int]]) -> list[str]:
        """Texts of several token-id lists in one batched decode (one lock, one call)."""
        with self._tokenizer_lock:
            return self.tokenizer.batch_decode([list(ids) for ids in rows], skip_special_tokens=True)


def render_chat(tokenizer: Any, prompt: ChatPrompt) -> str:
    """The exact text the model is conditioned on: the tokenizer's chat template unless the
    prompt is raw or the model has none."""
    if prompt.raw or not getattr(tokenizer, "chat_template", None):
        # No template: the texts one after another (a raw request has no history).
        earlier = [content for _, content in prompt.history]
        return "\n\n".join([*([prompt.system] if prompt.system is not None else []), *earlier, prompt.user])
    messages = []
    if prompt.system is not None:
        messages.append({"role": "system", "content": prompt.system})
    messages.extend({"role": role, "content": content} for role, content in prompt.history)
    messages.append({"role": "user", "content": prompt.user})
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as error:
        # Templates refuse what their model was not trained on (a system role, two user turns
        # in a row) by raising a jinja2 error: the request's, not the server's, problem.
        if not type(error).__module__.startswith("jinja2"):
            raise
        field = "history" if prompt.history else "system_prompt" if prompt.system is not None else "prompt"
        raise InvalidArgument(field, f"the model's chat template refuses this conversation: {error}") from None


def stop_window(stops: Sequence[str]) -> int:
    """Tokens to decode at each step to see a stop sequence that the newest token completed."""
    # A token covers at least one character, plus slack for tokens that decode to nothing alone.
    return max((len(s) for s in stops), default=0) + 2


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def eos_token_ids(tokenizer: Any, model_config: Any) -> set[int]:
    """Tokens that end a response: the tokenizer's EOS and the model config's (one id or a list)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(model_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return ids


def response_text(
    detokenize: Callable[[Sequence[int]], str], ids: Sequence[int], eos_ids: Collection[int], stops: Sequence[str]
) -> str:
    """A response's text: a final EOS dropped, cut before the first stop sequence."""
    return cut_at_stop(detokenize(_without_eos(ids, eos_ids)), stops)


def response_texts(
    detokenize_many: Callable[[Sequence[Sequence[int]]], list[str]],
    rows: Sequence[Sequence[int]],
    eos_ids: Collection[int],
    stops: Sequence[str],
) -> list[str]:
    """`response_text` of several rows, decoded in one batch."""
    return [cut_at_stop(text, stops) for text in detokenize_many([_without_eos(ids, eos_ids) for ids in rows])]


def _without_eos(ids: Sequence[int], eos_ids: Collection[int]) -> list[int]:
    return list(ids[:-1]) if ids and ids[-1] in eos_ids else list(ids)
