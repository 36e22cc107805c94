"""Text handling both backends share: the chat template and stop sequences."""

from __future__ import annotations

from collections.abc import Sequence

from alignd.backends.base import ChatPrompt


def render_chat(tokenizer, prompt: ChatPrompt) -> str:
    """The exact text the model is conditioned on: the tokenizer's chat template unless the
    prompt is raw or the model has none."""
    if prompt.raw or not getattr(tokenizer, "chat_template", None):
        return prompt.user if prompt.system is None else f"{prompt.system}\n\n{prompt.user}"
    messages = []
    if prompt.system is not None:
        messages.append({"role": "system", "content": prompt.system})
    messages.append({"role": "user", "content": prompt.user})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def stop_window(stops: Sequence[str]) -> int:
    """Tokens to decode at each step to see a stop sequence that the newest token completed."""
    # A token covers at least one character, plus slack for tokens that decode to nothing alone.
    return max((len(s) for s in stops), default=0) + 2


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]
