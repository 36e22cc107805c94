"""Value sources: where a value-guided strategy's estimate V_g(x, y_<t) of objective g comes from.

- `heads`: trained value heads on the policy's hidden states after the prefix (CD-FUDGE; one small
  matmul, but the heads only see what the policy's own representation encodes);
- `prefix`: the objective's own scorer applied to the partial text, as ARGS (Khanov et al. 2024)
  does with a reward model on partial sequences; all candidates of a step in one batched call;
- `auto`: per objective, the source with the best measured *within-prompt* ranking (the fraction
  of same-prompt pairs of held-out rollouts, cut at 50% of their length, ordered like their final
  rewards), measured when the heads were trained and stored in their metadata. Without heads, or
  for an objective the heads do not cover, `prefix`.

Blockwise steering only ever compares continuations of one prompt, so within-prompt ranking is the
figure that decides; overall correlation mostly tells prompts apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from alignd.errors import FailedPrecondition

AUTO = "auto"
HEADS = "heads"
PREFIX = "prefix"
SOURCES = (HEADS, PREFIX)
CHOICES = (AUTO, *SOURCES)
# The prefix fraction at which sources are compared for `auto` (metric keys use it).
RANKING_FRACTION = 0.5


def pair_accuracy_key(objective: str, source: str, fraction: float = RANKING_FRACTION) -> str:
    """Metadata metric name of a source's within-prompt pair accuracy, e.g.
    ``relevance@50%_prefix_pair_accuracy``."""
    return f"{objective}@{round(fraction * 100)}%_{source}_pair_accuracy"


@dataclass(frozen=True)
class ObjectiveValueSources:
    """What can estimate one objective's value, what `auto` picks, and the measurements behind it."""

    objective: str
    available: tuple[str, ...]
    auto: str
    pair_accuracy: Mapping[str, float] = field(default_factory=dict)  # by source, when measured


def pick_auto(objective: str, available: Sequence[str], measured: Mapping[str, float]) -> str:
    """The available source with the best measured within-prompt pair accuracy, when every
    available source was measured (a finite figure); otherwise `prefix`, the objective's own
    scorer, which is the final reward itself once the response is complete."""
    figures = {s: measured.get(s, math.nan) for s in available}
    if all(math.isfinite(v) for v in figures.values()):
        return max(available, key=lambda s: figures[s])
    return PREFIX if PREFIX in available else available[0]


def resolve(
    catalogue: Mapping[str, ObjectiveValueSources], objectives: Sequence[str], requested: str, field: str
) -> dict[str, str]:
    """The source serving each objective for a request asking for `requested` (a value of
    CHOICES, already validated); FailedPrecondition naming `field` when a named source cannot
    serve one."""
    sources = {}
    for name in objectives:
        entry = catalogue[name]
        source = entry.auto if requested == AUTO else requested
        if source not in entry.available:
            raise FailedPrecondition(
                f"{field}: {requested!r} cannot estimate {name!r} (available: "
                f"{list(entry.available)}; value heads are loaded for none or other objectives)"
            )
        sources[name] = source
    return sources
