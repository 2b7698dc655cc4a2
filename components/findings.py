"""What a person wants to know from `metrics.json` and `blessing.json`: may the model be used, its worst
classes and its most common mistake.

Shared by the report, the model card and the run summary, so all three say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.blessing import Blessing


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
    """One sentence in plain words on where the model fails most often.

    A mistake is named the most frequent only when it happened more than once; mistakes that are equally
    frequent are named together, and mistakes that each happened once are said to be so.
    """
    found = confusions(metrics)
    total = metrics["num_examples"]
    if not found:
        return f"Makes no mistakes on the {total:,} test images."
    top, mistakes = found[0], sum(confusion.count for confusion in found)
    if mistakes == 1:
        return (f"Makes one mistake on the {total:,} test images: an image of {top.true_name} taken for "
                f"{top.predicted_name}.")
    in_all = f"{mistakes:,} of {total:,} test images are misclassified in all."
    leaders = [confusion for confusion in found if confusion.count == top.count]
    if top.count == 1:
        each = f"{mistakes:,} of {total:,} test images are misclassified, each in a different way"
        if len(leaders) <= MAX_NAMED:
            return f"{each}: {_listed(leaders, 'taken for')}."
        return f"{each}: no class is taken for the same other class twice."
    if len(leaders) == 1:
        return (f"Mistakes {top.true_name} for {top.predicted_name} most often ({top.count:,} of {top.support:,} "
                f"test images of {top.true_name}); {in_all}")
    return f"Mistakes {_listed(leaders, 'for')} most often, {top.count:,} times each; {in_all}"


MAX_NAMED = 3  # equally frequent mistakes named in the headline; any more are counted


def _listed(found: list[Confusion], joined_by: str) -> str:
    """`a for b, c for d and 2 other pairs`: up to MAX_NAMED confusions, then a count."""
    named = [f"{confusion.true_name} {joined_by} {confusion.predicted_name}" for confusion in found[:MAX_NAMED]]
    if len(found) > len(named):
        return ", ".join(named) + f" and {len(found) - len(named):,} other pairs"
    return f"{', '.join(named[:-1])} and {named[-1]}" if len(named) > 1 else named[0]


def verdict(accuracy: float, blessing: Blessing, published_as: str | None) -> str:
    """One sentence for someone deciding whether to use the model: may it be used, and why (not).

    Args:
        accuracy: the test accuracy.
        blessing: evaluate's decision (`blessing.json`).
        published_as: the export in words (`digits version 3`); None when the run published none.

    Returns:
        "Ready to use: ..." or "Not published: ...", in plain words: no setting names, no statistics.
    """
    correct = f"{accuracy_percent(accuracy)} % of test images classified correctly"
    if blessing.blessed:
        return f"Ready to use: {correct}. " + (f"Published as {published_as}." if published_as
                                                else "Not published by this run.")
    refused_by = blessing.refused_by
    if refused_by == "evaluate.max_p_value":
        chance = blessing.chance
        always = f"always answering “{chance.commonest_class}” (about {accuracy_percent(chance.commonest_share)} %)"
        if accuracy <= chance.commonest_share:
            return f"Not published: {correct}, no better than {always}."
        return (f"Not published: {correct}, not clearly better than {always}: on {chance.num_examples:,} "
                "test images the difference may be luck.")
    if refused_by == "evaluate.min_accuracy":
        return f"Not published: {correct}; the minimum set is {accuracy_percent(blessing.rules['min_accuracy'])} %."
    if refused_by == "evaluate.max_regression" and blessing.baseline and blessing.baseline_accuracy is not None:
        previous = Path(blessing.baseline)
        return (f"Not published: {correct}, {100 * (blessing.baseline_accuracy - accuracy):.1f} points below "
                f"{previous.parent.name} version {previous.name} on the same test images.")
    return f"Not published: {correct}."


def accuracy_percent(share: float) -> str:
    """A share in percent with one decimal; never 100.0 unless it is all."""
    shown = f"{100 * share:.1f}"
    return "99.9" if shown == "100.0" and share < 1 else shown
