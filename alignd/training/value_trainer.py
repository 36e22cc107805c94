"""`alignd train value`: multi-objective value heads, CD-FUDGE style (Mudgal et al. 2023).

Every prefix of an on-policy rollout regresses to that rollout's final reward, per objective:
V_g(x, y_<t) ~ r_g(x, y) for t = 0..T. Beside the regression, a within-prompt ranking loss: for
pairs of rollouts of the same prompt cut at the same prefix length t, a logistic (Bradley-Terry)
loss on the difference of their predictions, signed by which final reward is higher. Regression
alone learns mostly what tells prompts apart; blockwise steering needs the order *within* a
prompt, which the ranking term trains directly.

The held-out report, per objective and prefix fraction (25/50/75/100% of each response): MSE
against the predict-the-mean baseline, overall Pearson correlation, within-prompt Spearman and
within-prompt pair accuracy, for the heads and, when a scorer is given, for the `prefix` source
(the objective's own scorer on the partial text). The pair accuracies at 50% are stored in the
metadata, where the server's `auto` value source reads them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from alignd.backends.base import Policy
from alignd.backends.features import prefix_features
from alignd.rewardmodels.base import Scorer
from alignd.rewardmodels.heads import Head, HeadMetadata
from alignd.rewardmodels.value_sources import HEADS, PREFIX, pair_accuracy_key
from alignd.training.data import DataError, data_hash, read_jsonl
from alignd.training.options import option
from alignd.training.ranking import pair_accuracy, pearson, prompt_groups, within_prompt_spearman

FRACTIONS = (0.25, 0.5, 0.75, 1.0)
ROLLOUT_FIELDS = {"prompt": str, "token_ids": list, "rewards": dict}


@dataclass(frozen=True)
class ValueConfig:
    rollouts: str = option("rollouts.jsonl", "training rollouts (from `alignd train rollouts`)")
    eval_rollouts: str = option("", "held-out rollouts for the report; empty: hold out eval_fraction of prompts")
    eval_fraction: float = option(0.2, "share of prompts held out when eval_rollouts is empty")
    output: str = option("value_heads.safetensors", "where to write the heads (+ .json metadata)")
    model: str = option("smollm2-135m-instruct", "the policy whose hidden states the heads read")
    device: str = option("auto", "auto | cpu | cuda")
    objectives: tuple[str, ...] = option((), "objectives to learn (default: all in the rollouts)")
    width: int = option(0, "hidden units of an MLP head (0: linear, which generalised best on the shipped data)")
    epochs: int = option(10, "passes over the training prefixes")
    batch_size: int = option(1024, "prefixes per optimisation step")
    learning_rate: float = option(1e-3, "AdamW learning rate")
    weight_decay: float = option(1e-2, "AdamW weight decay")
    ranking_weight: float = option(
        1.0, "weight of the within-prompt pairwise ranking loss beside the regression (0: regression only, as CD-FUDGE)"
    )
    prefix_source: bool = option(
        True,
        "also measure the prefix source (each objective's scorer on the partial "
        "text) on the held-out rollouts, for the server's `auto` choice",
    )
    seed: int = option(0, "seed for initialisation, shuffling and the held-out split")


@dataclass
class ValueReport:
    """Held-out metrics per value source, objective and prefix fraction."""

    rows: list[dict]  # {"source", "objective", "fraction", "mse", "baseline_mse", "corr", "spearman", "pairs"}

    def table(self) -> str:
        lines = [
            f"{'source':<7} {'objective':<14} {'prefix':>6} {'mse':>9} {'mean-mse':>9} {'corr':>7} "
            f"{'in-prompt rho':>13} {'pairs ordered':>13}"
        ]
        for r in self.rows:
            lines.append(
                f"{r['source']:<7} {r['objective']:<14} {r['fraction']:>6.0%} {r['mse']:>9.4f} "
                f"{r['baseline_mse']:>9.4f} {r['corr']:>7.3f} {r['spearman']:>13.3f} {r['pairs']:>13.3f}"
            )
        return "\n".join(lines)

    def metrics(self) -> dict[str, float]:
        """Flat metrics for the metadata: the heads' figures as `<objective>@<p>%_<figure>`, and
        every source's pair accuracy as `<objective>@<p>%_<source>_pair_accuracy`."""
        flat = {}
        for r in self.rows:
            at = f"{r['objective']}@{round(r['fraction'] * 100)}%"
            flat[pair_accuracy_key(r["objective"], r["source"], r["fraction"])] = float(r["pairs"])
            if r["source"] == HEADS:
                flat |= {f"{at}_{key}": float(r[key]) for key in ("mse", "baseline_mse", "corr", "spearman")}
        # Undefined figures (every held-out response of each prompt tied) are left out, not NaN.
        return {k: v for k, v in flat.items() if np.isfinite(v)}


def evaluate_source(
    source: str,
    groups: list[list[int]],
    truth: np.ndarray,
    guess: np.ndarray,
    fraction: float,
    objectives: list[str],
    mean: np.ndarray,
) -> list[dict]:
    """Report rows of one source at one prefix fraction: guess and truth are [N, G]."""
    rows = []
    for g, name in enumerate(objectives):
        accuracy, pair_count = pair_accuracy(groups, truth[:, g], guess[:, g])
        rows.append(
            {
                "source": source,
                "objective": name,
                "fraction": fraction,
                "mse": float(np.mean((guess[:, g] - truth[:, g]) ** 2)),
                "baseline_mse": float(np.mean((mean[g] - truth[:, g]) ** 2)),
                "corr": _nan_to_zero(pearson(guess[:, g], truth[:, g])),
                "spearman": within_prompt_spearman(groups, truth[:, g], guess[:, g]),
                "pairs": accuracy,
                "pair_count": pair_count,
            }
        )
    return rows


def _nan_to_zero(value: float) -> float:
    return 0.0 if np.isnan(value) else value


def _load(path: str) -> list[dict]:
    rows = list(read_jsonl(path, ROLLOUT_FIELDS))
    if not rows:
        raise DataError(f"{path}: no rollouts")
    return rows


def _split(rows: list[dict], config: ValueConfig) -> tuple[list[dict], list[dict]]:
    if config.eval_rollouts:
        return rows, _load(config.eval_rollouts)
    prompts = sorted({r["prompt"] for r in rows})
    random.Random(config.seed).shuffle(prompts)
    held = set(prompts[: max(1, int(len(prompts) * config.eval_fraction))])
    return [r for r in rows if r["prompt"] not in held], [r for r in rows if r["prompt"] in held]


def _targets(rows: list[dict], objectives: list[str], path: str) -> np.ndarray:
    try:
        return np.array([[row["rewards"][o] for o in objectives] for row in rows], dtype=np.float64)
    except KeyError as missing:
        raise DataError(f"{path}: a rollout has no reward for objective {missing}") from None


def prefix_examples(states: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CD-FUDGE examples: every prefix state (t = 0..T) of rollout i, paired with rollout i's
    final (standardised) reward vector."""
    x = torch.cat(states)
    y = torch.cat([targets[i].expand(len(s), -1) for i, s in enumerate(states)])
    return x, y


class RankingPairs:
    """Random pairs of training prefixes from two rollouts of the same prompt, cut at the same
    length t (1 <= t <= the shorter rollout's length), as row indices into the stacked prefixes."""

    def __init__(self, prompts: list[str], states: list[torch.Tensor]) -> None:
        lengths = torch.tensor([len(s) for s in states])
        self.offsets = torch.cumsum(lengths, 0) - lengths
        self.last = lengths - 1  # the longest prefix of each rollout
        groups = [g for g in prompt_groups(prompts) if len(g) > 1]
        if not groups:
            raise DataError(
                "the ranking loss needs several rollouts per prompt (sample them with "
                "--samples-per-prompt >= 2, or train without it: --ranking-weight 0)"
            )
        self.sizes = torch.tensor([len(g) for g in groups])
        self.members = torch.zeros((len(groups), int(self.sizes.max())), dtype=torch.long)
        for i, group in enumerate(groups):
            self.members[i, : len(group)] = torch.tensor(group)

    def sample(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        group = torch.randint(len(self.sizes), (count,), generator=generator)
        size = self.sizes[group]
        first = (torch.rand(count, generator=generator) * size).long()
        second = (first + 1 + (torch.rand(count, generator=generator) * (size - 1)).long()) % size
        a, b = self.members[group, first], self.members[group, second]
        # t >= 1: at t = 0 both rows hold the same prompt state, which has nothing to rank.
        shorter = torch.minimum(self.last[a], self.last[b])
        t = torch.minimum(1 + (torch.rand(count, generator=generator) * shorter).long(), shorter)
        return self.offsets[a] + t, self.offsets[b] + t


def ranking_loss(
    predicted_a: torch.Tensor, predicted_b: torch.Tensor, target_a: torch.Tensor, target_b: torch.Tensor
) -> torch.Tensor:
    """Mean over pairs and objectives of -log sigmoid(sign(r_a - r_b) (V_a - V_b)); pairs whose
    final rewards tie carry no order and are left out."""
    order = torch.sign(target_a - target_b)
    decided = order != 0
    if not decided.any():
        return predicted_a.sum() * 0.0
    return torch.nn.functional.softplus(-order * (predicted_a - predicted_b))[decided].mean()


def prefix_source_values(
    policy: Policy, scorer: Scorer, rows: list[dict], fraction: float, objectives: list[str]
) -> np.ndarray:
    """The `prefix` source on held-out rollouts: each objective's scorer on the text of the first
    round(fraction * T) tokens of each response, [N, G] (one batched call per objective)."""
    texts = [policy.detokenize(row["token_ids"][: round(fraction * len(row["token_ids"]))]) for row in rows]
    return scorer.score_objectives([row["prompt"] for row in rows], texts, objectives)


def train_value_heads(
    policy: Policy, config: ValueConfig, progress: bool = True, scorer: Scorer | None = None
) -> tuple[Head, ValueReport]:
    """Train the heads; the report covers the `prefix` source too when `scorer` is given."""
    if not config.ranking_weight >= 0:
        raise DataError(f"ranking_weight must be >= 0, got {config.ranking_weight}")
    torch.manual_seed(config.seed)
    train_rows, eval_rows = _split(_load(config.rollouts), config)
    if not train_rows or not eval_rows:
        raise DataError("value training needs both training and held-out rollouts")
    objectives = list(config.objectives) or list(train_rows[0]["rewards"])
    y_train = _targets(train_rows, objectives, config.rollouts)
    y_eval = _targets(eval_rows, objectives, config.eval_rollouts or config.rollouts)
    mean, std = y_train.mean(0), np.maximum(y_train.std(0), 1e-6)

    train_states = prefix_features(policy, train_rows, progress)
    eval_states = prefix_features(policy, eval_rows, progress)
    x, y = prefix_examples(train_states, torch.from_numpy((y_train - mean) / std).float())
    pairs = RankingPairs([r["prompt"] for r in train_rows], train_states) if config.ranking_weight > 0 else None

    metadata = HeadMetadata(
        kind="value",
        base_model=policy.model_name,
        hidden_size=x.shape[1],
        objectives=objectives,
        mean=mean.tolist(),
        std=std.tolist(),
        width=config.width,
        data_hash=data_hash([config.rollouts] + ([config.eval_rollouts] if config.eval_rollouts else [])),
    )
    head = Head(metadata)
    optimiser = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    head.train()
    for _ in tqdm(range(config.epochs), desc="value heads", unit="epoch", disable=not progress):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = torch.nn.functional.mse_loss(head(x[batch]), y[batch])
            if pairs is not None:
                a, b = pairs.sample(len(batch), generator)
                loss = loss + config.ranking_weight * ranking_loss(head(x[a]), head(x[b]), y[a], y[b])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    head.eval()

    groups = prompt_groups([r["prompt"] for r in eval_rows])
    scorable = [o for o in objectives if scorer is not None and config.prefix_source and o in scorer.objective_names]
    report_rows = []
    for fraction in FRACTIONS:
        at = torch.stack([s[round(fraction * (len(s) - 1))] for s in eval_states])
        predicted = head.predict(at).double().numpy()
        report_rows += evaluate_source(HEADS, groups, y_eval, predicted, fraction, objectives, mean)
        if scorer is not None and scorable:
            scored = prefix_source_values(policy, scorer, eval_rows, fraction, scorable)
            columns = [objectives.index(o) for o in scorable]
            report_rows += evaluate_source(
                PREFIX, groups, y_eval[:, columns], scored, fraction, scorable, mean[columns]
            )
    report = ValueReport(report_rows)
    head.metadata.metrics = report.metrics() | {
        "train_rollouts": len(train_rows),
        "eval_rollouts": len(eval_rows),
        "eval_prompts": len(groups),
    }
    return head, report
