"""The built-in objectives that run offline, by name."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from alignd.rewardmodels.base import Objective
from alignd.rewardmodels.engine import ScoringEngine
from alignd.rewardmodels.objective_scorer import ObjectiveScorer


def _relevance(device: str, engine: ScoringEngine | None) -> Objective:
    from alignd.rewardmodels.relevance import RelevanceObjective

    return RelevanceObjective(device=device, engine=engine)


def _positivity(device: str, engine: ScoringEngine | None) -> Objective:
    from alignd.rewardmodels.positivity import PositivityObjective

    return PositivityObjective()


def _harmlessness(device: str, engine: ScoringEngine | None) -> Objective:
    from alignd.rewardmodels.harmlessness import HarmlessnessObjective

    return HarmlessnessObjective()


def _conciseness(device: str, engine: ScoringEngine | None) -> Objective:
    from alignd.rewardmodels.conciseness import ConcisenessObjective

    return ConcisenessObjective()


BUILTIN_FACTORIES: dict[str, Callable[[str, ScoringEngine | None], Objective]] = {
    "relevance": _relevance,
    "positivity": _positivity,
    "harmlessness": _harmlessness,
    "conciseness": _conciseness,
}


BUILTIN_OBJECTIVES = tuple(BUILTIN_FACTORIES)


def build_objectives(names: Sequence[str], device: str = "cpu", engine: ScoringEngine | None = None) -> list[Objective]:
    """The named built-ins; model-based ones run on `engine` (None: the process's default)."""
    unknown = [n for n in names if n not in BUILTIN_FACTORIES]
    if unknown:
        raise ValueError(f"unknown objectives {unknown}; built-in: {sorted(BUILTIN_FACTORIES)}")
    return [BUILTIN_FACTORIES[n](device, engine) for n in names]


def build_scorer(names: Sequence[str] = BUILTIN_OBJECTIVES, device: str = "cpu") -> ObjectiveScorer:
    return ObjectiveScorer(build_objectives(names, device))
