"""evolutionary: reward-steered evolutionary search (DARWIN; Hung et al., "Reward Steering with
Evolutionary Heuristics for Decoding-time Alignment").

Each cycle explores and exploits:
- exploration: the policy itself rewrites the best instructions found so far into variants (a
  numbered-list prompt; slots it fails to fill keep the original instruction);
- exploitation: one beam per instruction decodes in one batch; every m tokens the beams are scored
  and those outside the top-k are replaced by copies of top beams (a copy keeps its own
  instruction as context, since its KV cache is copied with it).
Rewards are always computed against the *original* instruction with the request's weights. An
archive keeps every instruction with the best reward its beams reached; the next cycle mutates
the archive's best. The best response over all cycles is returned.

No KL figure is reported: the beams are conditioned on other instructions than the request's, so
there is no estimate against pi_ref(. | x).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from alignd.backends.base import Capability, ChatPrompt, Policy
from alignd.decoding.base import (
    Decode,
    DecodeContext,
    DecodeRequest,
    DecodeResult,
    ScoredCandidate,
    Strategy,
    register,
)
from alignd.decoding.params import param
from alignd.errors import InvalidArgument
from alignd.rewardmodels.base import Scorer

MUTATION_PROMPT = (
    "Rewrite the instruction below in {count} different ways. Keep what it asks for, and make each rewrite "
    "clear and specific about what a good answer contains. Reply with a numbered list only, one rewrite per "
    "line.\n\nInstruction: {instruction}"
)
_LIST_ITEM = re.compile(r"^\s*(?:\d+\s*[.):]|[-*\u2022])\s*(.+?)\s*$")


@dataclass(frozen=True)
class EvolutionaryParams:
    beams: int = param(5, "beams per cycle, one per instruction variant", min=2, limit="max_candidates")
    replace_every: int = param(40, "m: tokens between replacement rounds", min=1, limit="max_tokens")
    keep_top: int = param(3, "beams kept at each replacement round (below beams)", min=1, limit="max_candidates")
    cycles: int = param(3, "mutation cycles", min=1, max=10)
    mutation_tokens: int = param(160, "max tokens of each mutation reply", min=16, limit="max_tokens")


@register
class EvolutionaryStrategy(Strategy[EvolutionaryParams]):
    name = "evolutionary"
    description = (
        "DARWIN: the policy mutates the instruction into variants, one beam per variant; every m tokens "
        "beams outside the top-k by reward are replaced by copies of top beams; a few mutation cycles."
    )
    Params = EvolutionaryParams
    requires = frozenset({Capability.SAMPLE, Capability.EXTEND})
    sampling_defaults: ClassVar[dict[str, Any]] = {"temperature": 0.7, "top_k": 40}

    def rows(self, params: EvolutionaryParams) -> int:
        return params.beams

    def plan(self, request: DecodeRequest, params: EvolutionaryParams, policy: Policy, scorer: Scorer) -> Decode:
        if params.keep_top >= params.beams:
            raise InvalidArgument(
                "evolutionary.keep_top", f"{params.keep_top} must be below evolutionary.beams ({params.beams})"
            )
        return lambda ctx: _Search(ctx, params).run()


@dataclass
class _Beam:
    instruction: str
    candidate: ScoredCandidate


class _Search:
    """One request's search state: the archive, the best beams."""

    def __init__(self, ctx: DecodeContext, params: EvolutionaryParams) -> None:
        self.ctx, self.params = ctx, params
        self.original = ctx.request.prompt.user
        # instruction -> best weighted reward its beams reached at any scoring round (a beam replaced
        # early still ranks its instruction)
        self.archive: dict[str, float] = {}
        self.finals: list[_Beam] = []
        self.fallbacks = 0
        self.rounds = 0

    def run(self) -> DecodeResult:
        for cycle in range(1, self.params.cycles + 1):
            ranked = sorted(self.archive, key=lambda instruction: self.archive[instruction], reverse=True)
            parents = ranked[: self.params.keep_top] if ranked else [self.original]
            variants = self._mutate(parents, self.params.beams - 1, cycle)
            instructions = [parents[0], *variants]
            self._report("mutation", cycle, f"cycle {cycle}: {len(instructions)} instructions", [], instructions)
            beams = self._exploit(instructions, cycle)
            self.finals.extend(beams)
            best = max(beams, key=lambda b: b.candidate.weighted_score)
            self._report(
                "cycle",
                cycle,
                f"cycle {cycle}: best {best.candidate.weighted_score:+.4f} under {best.instruction!r}",
                [b.candidate for b in beams],
                [b.instruction for b in beams],
            )
        winner = max(self.finals, key=lambda b: b.candidate.weighted_score)
        details = {
            "cycles": float(self.params.cycles),
            "replacement_rounds": float(self.rounds),
            "mutation_fallbacks": float(self.fallbacks),
            "instructions_tried": float(len(self.archive)),
            "winner_is_original_instruction": float(winner.instruction == self.original),
        }
        return self.ctx.finish(winner.candidate, [b.candidate for b in self.finals], [], details)

    # -- exploration ------------------------------------------------------------------------------

    def _mutate(self, parents: list[str], count: int, cycle: int) -> list[str]:
        """`count` variants of the parents (round robin), from one batched sample of mutation replies;
        unfilled slots keep the original instruction."""
        per_parent = -(-count // len(parents))
        prompts = [ChatPrompt(MUTATION_PROMPT.format(count=per_parent, instruction=p)) for p in parents]
        request = self.ctx.request
        sampling = dataclasses.replace(
            request.sampling,
            max_tokens=self.params.mutation_tokens,
            stop=(),
            seed=_derive(request.sampling.seed, 2 * cycle),
        )
        replies = self.ctx.sample(1, prompts, sampling, phase="mutate")
        seen = {self.original.strip().lower(), *(p.strip().lower() for p in parents)}
        lists = [parse_variants(reply[0].text, self.original, seen) for reply in replies]
        variants: list[str] = []
        for i in range(per_parent):
            variants.extend(items[i] for items in lists if i < len(items))
        variants = variants[:count]
        self.fallbacks += count - len(variants)
        return variants + [self.original] * (count - len(variants))

    # -- exploitation -----------------------------------------------------------------------------

    def _exploit(self, instructions: list[str], cycle: int) -> list[_Beam]:
        """Decode one beam per instruction; every m tokens replace beams outside the top-k."""
        ctx = self.ctx
        prompt = ctx.request.prompt
        sampling = dataclasses.replace(ctx.request.sampling, seed=_derive(ctx.request.sampling.seed, 2 * cycle + 1))
        # The original instruction keeps the request's prompt, already tokenized.
        prompts = [
            prompt if i == self.original else ChatPrompt(i, prompt.system, prompt.raw, prompt.history)
            for i in instructions
        ]
        partial = ctx.prefill(prompts, sampling)
        owner = list(range(len(instructions)))  # instruction of each row
        keep = self.params.keep_top
        while True:
            partial = ctx.extend(partial, 1, self.params.replace_every)
            completions = [ctx.policy.completion(partial, row) for row in range(partial.rows)]
            # Rewards are always against the original instruction.
            scored = ctx.score(completions, self.original)
            scores = np.array([c.weighted_score for c in scored])
            for row, score in enumerate(scores.tolist()):
                instruction = instructions[owner[row]]
                self.archive[instruction] = max(score, self.archive.get(instruction, -np.inf))
            if partial.done:
                break
            self.rounds += 1
            top = [int(r) for r in np.argsort(-scores, kind="stable")[:keep]]
            replaced = [r for r in range(partial.rows) if r not in top]
            rows = list(range(partial.rows))
            for j, row in enumerate(replaced):
                rows[row] = top[j % keep]  # copies of the best beams first
            for r, candidate in enumerate(scored):
                candidate.selected = r in top
            self._report(
                "replace",
                self.rounds,
                f"round {self.rounds}: kept beams {sorted(top)}, replaced {replaced} "
                f"by copies of {[rows[r] for r in replaced]}",
                scored,
                [instructions[o] for o in owner],
            )
            partial = ctx.policy.select(partial, rows)
            owner = [owner[r] for r in rows]
        ctx.done_with(partial)
        return [_Beam(instructions[owner[r]], candidate) for r, candidate in enumerate(scored)]

    def _report(
        self, phase: str, step: int, message: str, candidates: Sequence[ScoredCandidate], instructions: list[str]
    ) -> None:
        self.ctx.report(phase, step, message, candidates, instructions=instructions)


def parse_variants(reply: str, original: str, seen: set[str]) -> list[str]:
    """The rewrites in a numbered (or bulleted) list reply, without repeats of `seen` (updated)
    and without items too short or far longer than the original."""
    variants = []
    longest = max(2 * len(original), len(original) + 200)
    for line in reply.splitlines():
        match = _LIST_ITEM.match(line)
        if not match:
            continue
        text = match.group(1).strip().strip('"\u201c\u201d').strip()
        text = re.sub(r"^(?:instruction|rewrite)\s*\d*\s*:\s*", "", text, flags=re.IGNORECASE)
        key = text.lower()
        if len(text) < 8 or len(text) > longest or key in seen:
            continue
        seen.add(key)
        variants.append(text)
    return variants


def _derive(seed: int | None, salt: int) -> int | None:
    """A per-phase seed from the request's, so a seeded request is reproducible end to end."""
    return None if seed is None else (seed * 1_000_003 + salt) % (2**63)
