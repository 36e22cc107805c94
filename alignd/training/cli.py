"""`alignd train rollouts | value | reward | pairs | vectors`: options generated from the config
dataclasses."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Iterator

import numpy as np

from alignd.training.options import add_options, config_from
from alignd.training.reward_trainer import (
    PairsConfig,
    RewardConfig,
    pairs_from_rollouts,
    train_reward_head,
    train_reward_model,
)
from alignd.training.rollouts import RolloutsConfig, generate_rollouts
from alignd.training.value_trainer import ValueConfig, train_value_heads
from alignd.training.vector_trainer import VectorsConfig


def run_rollouts(config: RolloutsConfig) -> None:
    from alignd.backends.loading import load_policy
    from alignd.rewardmodels.builtin import build_scorer
    from alignd.training.data import load_prompts, write_jsonl

    prompts = load_prompts(config.prompts)
    prompts = prompts[: config.limit] if config.limit else prompts
    policy = load_policy(config.model, device=config.device)
    scorer = build_scorer(config.objectives, device=policy.device)
    rows: list[dict] = []

    def kept() -> Iterator[dict]:
        # Rows are written as they are generated, and kept for the means printed below.
        for row in generate_rollouts(policy, scorer, prompts, config):
            rows.append(row)
            yield row

    count = write_jsonl(config.output, kept())
    means = {o: np.mean([r["rewards"][o] for r in rows]) for o in config.objectives}
    print(f"wrote {count} rollouts for {len(prompts)} prompts to {config.output}")
    print("mean rewards: " + "  ".join(f"{o}={m:+.4f}" for o, m in means.items()))


def run_value(config: ValueConfig) -> None:
    from alignd.backends.loading import load_policy
    from alignd.rewardmodels.builtin import BUILTIN_OBJECTIVES, build_scorer

    policy = load_policy(config.model, device=config.device)
    # The prefix source is measured with the objectives' own scorers (the built-in ones).
    scorable = [o for o in config.objectives or BUILTIN_OBJECTIVES if o in BUILTIN_OBJECTIVES]
    scorer = build_scorer(scorable, device=policy.device) if config.prefix_source and scorable else None
    head, report = train_value_heads(policy, config, scorer=scorer)
    path = head.save(config.output)
    print(report.table())
    print(f"wrote {path} and {path.with_suffix('.json')}")


def run_reward(config: RewardConfig) -> None:
    from alignd.backends.loading import load_policy
    from alignd.training.data import DataError

    if config.export not in ("head", "hf"):
        raise DataError(f"--export must be head or hf, not {config.export!r}")
    if config.export == "hf":
        folder, metrics = train_reward_model(config)
        print(
            f"pairwise accuracy: train {metrics['train_accuracy']:.3f}, held-out {metrics['eval_accuracy']:.3f} "
            f"({metrics['eval_pairs']} pairs)"
        )
        print(f"wrote the reward model {folder} (serve it with kind = 'sequence_classification')")
        return
    policy = load_policy(config.model, device=config.device)
    head, metrics = train_reward_head(policy, config)
    path = head.save(config.output)
    print(
        f"pairwise accuracy: train {metrics['train_accuracy']:.3f}, held-out {metrics['eval_accuracy']:.3f} "
        f"({metrics['eval_pairs']} pairs)"
    )
    print(f"wrote {path} and {path.with_suffix('.json')}")


def run_pairs(config: PairsConfig) -> None:
    from alignd.training.data import write_jsonl

    count = write_jsonl(config.output, pairs_from_rollouts(config))
    print(f"wrote {count} pairs ranked by {config.objective} to {config.output}")


def run_vectors(config: VectorsConfig) -> None:
    from alignd import models
    from alignd.backends.loading import served_model_name
    from alignd.backends.transformers_policy import TransformersPolicy
    from alignd.rewardmodels.builtin import BUILTIN_OBJECTIVES, build_scorer
    from alignd.training.data import load_prompts
    from alignd.training.vector_trainer import measure_shift, train_vectors

    checkpoint = models.resolve(config.model)
    base_model = served_model_name(config.model, checkpoint)
    vectors = train_vectors(config, str(checkpoint), base_model)
    if config.eval_prompts:
        prompts = load_prompts(config.eval_prompts)
        prompts = prompts[: config.eval_limit] if config.eval_limit else prompts
        policy = TransformersPolicy(checkpoint, model_name=base_model, device=config.device, vectors=vectors)
        # Every built-in objective: the vector's own shift and its price on the others.
        scorer = build_scorer(BUILTIN_OBJECTIVES, device=policy.device)
        report = measure_shift(policy, scorer, prompts, vectors.names, config.eval_samples, config.eval_max_tokens)
        print(report.table())
        for name in vectors.names:
            vectors.infos[name] = dataclasses.replace(vectors.infos[name], shift=report.shift(name))
    path = vectors.save(config.output)
    print(f"wrote {path} and {path.with_suffix('.json')}")


COMMANDS: list[tuple[str, type, Callable, str]] = [
    ("rollouts", RolloutsConfig, run_rollouts, "sample and score responses for a prompt set (JSONL)"),
    ("value", ValueConfig, run_value, "train multi-objective value heads on rollouts (CD-FUDGE)"),
    ("reward", RewardConfig, run_reward, "train a Bradley-Terry reward head on preference pairs"),
    ("pairs", PairsConfig, run_pairs, "make preference pairs from rollouts, ranked by one objective"),
    ("vectors", VectorsConfig, run_vectors, "train preference vectors: DPO LoRA adapters both ways per objective"),
]


def add_train_command(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train", help="train value heads, reward heads, preference vectors; make rollouts and pairs"
    )
    actions = train.add_subparsers(dest="action", required=True)
    for name, config_cls, runner, help_text in COMMANDS:
        parser = actions.add_parser(
            name, help=help_text, description=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        add_options(parser, config_cls)
        parser.set_defaults(func=_runner(config_cls, runner))


def _runner(config_cls: type, runner: Callable) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from alignd.errors import AligndError
        from alignd.rewardmodels.heads import HeadError
        from alignd.training.data import DataError

        try:
            runner(config_from(args, config_cls))
        except (DataError, HeadError, AligndError, ValueError) as error:
            print(f"alignd: error: {error}", file=sys.stderr)
            return 2
        return 0

    return run
