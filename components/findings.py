"""What a person wants to know from `metrics.json`: the worst classes and the most common mistake.

Shared by the report, the model card and the run summary, so all three say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ClassResult:
    """One class's test results."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Confusion:
    """How often images of one class were predicted as another."""

    true_name: str
    predicted_name: str
    count: int
    support: int  # test images of the true class


def class_results(metrics: dict[str, Any]) -> list[ClassResult]:
    """Every class's results, worst first: lowest F1, then lowest recall, then name.

    Classes without test images come last: their zeros say nothing about the model.
    """
    results = [ClassResult(name, values["precision"], values["recall"], values["f1"], values["support"])
               for name, values in metrics["per_class"].items()]
    return sorted(results, key=lambda result: (not result.support, result.f1, result.recall, result.name))


def worst_classes(metrics: dict[str, Any], count: int = 3) -> list[ClassResult]:
    """The `count` classes with the lowest F1 among those with test images."""
    return [result for result in class_results(metrics) if result.support][:count]


def confusions(metrics: dict[str, Any]) -> list[Confusion]:
    """Every off-diagonal cell of the confusion matrix that is not zero, most frequent first."""
    names = list(metrics["per_class"])
    matrix = metrics["confusion_matrix"]
    found = [Confusion(names[true], names[predicted], count, sum(matrix[true]))
             for true, row in enumerate(matrix) for predicted, count in enumerate(row)
             if true != predicted and count]
    return sorted(found, key=lambda confusion: (-confusion.count, confusion.true_name, confusion.predicted_name))


def headline(metrics: dict[str, Any]) -> str:
    """One sentence in plain words on where the model fails most often."""
    found = confusions(metrics)
    if not found:
        return f"Makes no mistakes on the {metrics['num_examples']:,} test images."
    top = found[0]
    mistakes = metrics["num_examples"] - round(metrics["test_accuracy"] * metrics["num_examples"])
    return (f"Mistakes {top.true_name} for {top.predicted_name} most often ({top.count:,} of "
            f"{top.support:,} test images of {top.true_name}); {mistakes:,} of "
            f"{metrics['num_examples']:,} test images are misclassified in all.")
