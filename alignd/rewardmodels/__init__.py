"""Scorers: built-in objectives (and, later, reward and value heads), scored in batches."""

from alignd.rewardmodels.base import Objective, ObjectiveInfo, Scorer

__all__ = ["Objective", "ObjectiveInfo", "Scorer"]
