"""linear_alignment: Linear Alignment (Gao et al. 2024, "Linear Alignment: A Closed-form
Solution for Aligning Human Preferences without Tuning and Feedback").

Two contexts decode in lock-step, one batched forward per token: the prompt with a preference
principle in the system prompt (next-token logits z_p) and without it (z_0); with placement
"user" the principle follows the user's message instead (small models tend to follow an
instruction there more than in a system prompt). The next token is
drawn from softmax(z_hat / T) with z_hat = z_p + alpha (z_p - z_0), restricted to the top-p
support of softmax(z_p / T), and appended to both contexts. alpha = 0 is decoding under the
principle alone; larger alpha moves further along the direction the principle shifts the logits.
No reward model steers it; the final text is still scored by the objectives. Result details:
`mean_support_tokens`, the mean size of the top-p support per step (the room the extrapolation
has: with 1 token it cannot change anything), and `overridden_fraction`, the share of steps where
the extrapolated argmax differs from the principled model's.

T and p are the request's sampling temperature and top_p, which default to the authors' 0.5 and
0.8 for this strategy; temperature 0 picks argmax z_hat within the top-p support at T = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from alignd.backends.base import Capability, ChatPrompt, Policy
from alignd.decoding.base import Decode, DecodeContext, DecodeRequest, DecodeResult, KLEstimate, Strategy, register
from alignd.decoding.params import param
from alignd.errors import InvalidArgument
from alignd.rewardmodels.base import Scorer
from alignd.sampling import extrapolated_step, make_generator

DEFAULT_PRINCIPLE = (
    "You are a helpful, honest and harmless assistant. Answer the question directly and "
    "accurately, in a kind and respectful tone, and do not help with anything dangerous."
)


@dataclass(frozen=True)
class LinearAlignmentParams:
    principle: str = param(DEFAULT_PRINCIPLE, "the preference principle", min=1, max=2000)
    placement: str = param(
        "system",
        "where the principle goes: system (the system prompt, as in the paper) or "
        "user (after the user's message, where small models follow instructions better)",
        choices=("system", "user"),
    )
    alpha: float = param(
        3.0, "alpha: z_hat = z_p + alpha (z_p - z_0); 0 decodes under the principle alone", min=0.0, max=100.0
    )


@register
class LinearAlignmentStrategy(Strategy[LinearAlignmentParams]):
    name = "linear_alignment"
    description = (
        "Linear alignment: decode with and without a preference principle in lock-step and sample "
        "from z_p + alpha (z_p - z_0) within the top-p support of the principled distribution."
    )
    Params = LinearAlignmentParams
    requires = frozenset({Capability.SAMPLE, Capability.EXTEND, Capability.TOKENWISE})
    sampling_defaults: ClassVar[dict[str, Any]] = {"temperature": 0.5, "top_p": 0.8}  # the authors' settings

    def rows(self, params: LinearAlignmentParams) -> int:
        return 2

    def plan(self, request: DecodeRequest, params: LinearAlignmentParams, policy: Policy, scorer: Scorer) -> Decode:
        default_system = template_system(policy, request.prompt) if params.placement == "system" else None
        principled = policy.encode(with_principle(request.prompt, params.principle, default_system, params.placement))
        assert principled.token_ids is not None
        length = len(principled.token_ids) + request.sampling.max_tokens
        if policy.context_length is not None and length > policy.context_length:
            raise InvalidArgument(
                "linear_alignment.principle",
                f"prompt with the principle + max_tokens is {length} "
                f"tokens, over the model's context of {policy.context_length}",
            )
        return lambda ctx: decode_aligned(ctx, params, principled)


def decode_aligned(ctx: DecodeContext, params: LinearAlignmentParams, principled: ChatPrompt) -> DecodeResult:
    """Both contexts (with the principle, and the request's prompt) decoded in lock-step."""
    request, policy = ctx.request, ctx.policy
    partial = ctx.prefill([principled, request.prompt])
    ctx.usage.prompt_tokens = partial.prompt_tokens  # both contexts are this request's prompt
    generator = None
    kl = 0.0
    support_tokens = overridden = 0  # how much room the extrapolation had, and how often it used it
    with ctx.phase("decode"):
        while not partial.done:
            logits = policy.next_token_logits(partial)
            if generator is None:
                generator = make_generator(request.sampling.seed, logits.device)
            step = extrapolated_step(logits[0:1], logits[1:2], params.alpha, request.sampling, generator)
            kl += step.kl
            support_tokens += step.support_tokens
            overridden += step.overridden
            partial = ctx.append(partial, step.token, step.logprob)
            ctx.report_token(partial)
    estimate = KLEstimate(
        "linear_alignment_estimate",
        "estimate",
        max(kl, 0.0),
        "sum over steps of KL(aligned next-token distribution || the model without the "
        "principle at the same temperature) along the decoded path",
    )
    steps = max(ctx.usage.generated_tokens, 1)
    details = {
        "alpha": params.alpha,
        "mean_support_tokens": support_tokens / steps,
        "overridden_fraction": overridden / steps,
    }
    result, _ = ctx.finish_decoded(partial, [estimate], details)
    return result


def with_principle(
    prompt: ChatPrompt, principle: str, default_system: str | None = None, placement: str = "system"
) -> ChatPrompt:
    """The prompt with the principle appended to its system prompt, or to the user's message
    (placement "user"); raw prompts get it before their text either way. Without a system prompt
    of its own, a system principle follows the chat template's default one, so that the two
    contexts differ by the principle alone."""
    if prompt.raw:
        return ChatPrompt(f"{principle}\n\n{prompt.user}", None, True)
    if placement == "user":
        return ChatPrompt(f"{prompt.user}\n\n{principle}", prompt.system, False, prompt.history)
    system = prompt.system or default_system
    return ChatPrompt(prompt.user, f"{system}\n\n{principle}" if system else principle, False, prompt.history)


def template_system(policy: Policy, prompt: ChatPrompt) -> str | None:
    """The system prompt the chat template inserts when a request has none (SmolLM2's names the
    assistant), found by rendering once with a marker; None when it inserts none."""
    if prompt.raw or prompt.system:
        return None
    marker = "\x1f"
    plain = policy.render(prompt)
    before, found, after = policy.render(ChatPrompt(prompt.user, marker, history=prompt.history)).partition(marker)
    if found and plain.startswith(before) and plain.endswith(after) and len(plain) > len(before) + len(after):
        return plain[len(before) : len(plain) - len(after)]
    return None
