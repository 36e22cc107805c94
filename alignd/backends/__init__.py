"""Policy implementations: the language model behind the strategies."""

from alignd.backends.base import (
    Capability,
    ChatPrompt,
    Completion,
    FinishReason,
    Policy,
    SampleBatch,
    SamplingParams,
)

__all__ = ["Capability", "ChatPrompt", "Completion", "FinishReason", "Policy", "SampleBatch", "SamplingParams"]
