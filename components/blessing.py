"""Evaluate's decision whether the model may be published, as recorded in `blessing.json`.

The record only: `components/evaluate.py` makes the decision; the report and the model card read it
(`Metrics.blessing()`). It loads no TensorFlow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChanceTest:
    """Whether the test accuracy beats a model that learned nothing and always answers the commonest class.

    Such a model is right on the commonest class's share of the images. The test is a one-sided binomial
    test of the count of correct test predictions against that share (H0: accuracy = share), so a small
    test split needs a larger margin over it than a large one.
    """

    commonest_class: str  # the commonest class of the training split (the first of equals)
    commonest_share: float  # its share of the training images: the accuracy H0 assumes
    num_correct: int  # test images classified correctly
    num_examples: int  # test images
    p_value: float  # P(num_correct or more right | accuracy = commonest_share)


@dataclass(frozen=True)
class Blessing:
    """Evaluate's decision whether the model may be published (exported), and what it rests on."""

    blessed: bool
    reason: str  # one line: the rule that decided, with its numbers
    refused_by: str | None  # the setting that refused it (evaluate.min_accuracy, ...); None when blessed
    test_accuracy: float
    chance: ChanceTest
    baseline: str | None  # the exported version compared with; None when there is none comparable
    baseline_accuracy: float | None  # its accuracy on the same test split
    rules: dict[str, float]  # the settings the decision applied: min_accuracy, max_p_value, max_regression

    def to_json(self) -> dict[str, Any]:
        """`blessing.json`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Blessing:
        """A Blessing from `blessing.json`."""
        return cls(**{**data, "chance": ChanceTest(**data["chance"])})
