"""Evaluate's blessing: a model is published only when it beats answering the commonest class every time.

The critical counts are computed here from the binomial distribution itself (exact fractions, `math.comb`),
not with the code under test; the decision is then checked on both sides of them.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from components.config import EvaluateConfig
from tests.conftest import make_images, read_split, run_pipeline_cli, write_idx

CLASSES = ("cat", "dog", "owl")
BALANCED_TRAIN = np.repeat(np.arange(3), 20)  # each class a third of the training split
NUM_TEST = 90


def upper_tail(count: int, num_examples: int, share: Fraction) -> Fraction:
    """P(X >= count) for X ~ Binomial(num_examples, share), exactly."""
    return sum((math.comb(num_examples, k) * share ** k * (1 - share) ** (num_examples - k)
                for k in range(count, num_examples + 1)), Fraction(0))


def critical_count(num_examples: int, share: Fraction, alpha: float) -> int:
    """The fewest correct answers whose upper tail is below `alpha`."""
    return next(k for k in range(num_examples + 1) if upper_tail(k, num_examples, share) < alpha)


def _decide(num_correct: int, config: EvaluateConfig = EvaluateConfig(), train_labels=BALANCED_TRAIN, **baseline):
    from components.evaluate import bless, chance_test

    chance = chance_test(num_correct, NUM_TEST, train_labels, CLASSES)
    return bless(config, num_correct / NUM_TEST, chance, **baseline)


def test_the_p_value_is_the_binomial_upper_tail_at_the_commonest_training_share():
    from components.evaluate import chance_test

    train_labels = np.array([0] * 10 + [1] * 25 + [2] * 15)  # dog is half of the training split
    for num_correct in (0, 30, 45, 52, 60, 90):
        chance = chance_test(num_correct, NUM_TEST, train_labels, CLASSES)
        expected = float(upper_tail(num_correct, NUM_TEST, Fraction(1, 2)))
        assert chance.p_value == pytest.approx(expected, rel=1e-9, abs=1e-300), num_correct
        assert (chance.commonest_class, chance.commonest_share, chance.num_correct, chance.num_examples) == (
            "dog", 0.5, num_correct, NUM_TEST)


@pytest.mark.parametrize("alpha", [0.01, 0.05])
def test_a_model_is_blessed_from_the_critical_count_of_correct_answers_on(alpha):
    critical = critical_count(NUM_TEST, Fraction(1, 3), alpha)
    assert 35 < critical < 50  # a third of 90 is 30: it takes a margin
    config = EvaluateConfig(max_p_value=alpha)
    assert _decide(critical, config).blessed
    below = _decide(critical - 1, config)
    assert not below.blessed and below.refused_by == "evaluate.max_p_value"
    p_value = float(upper_tail(critical - 1, NUM_TEST, Fraction(1, 3)))
    assert below.reason == (f"not blessed: test accuracy {(critical - 1) / NUM_TEST:.4f} is no better than always "
                            f"answering 'cat' (0.3333 of the training images) on 90 test images "
                            f"(p = {p_value:.2g} >= evaluate.max_p_value {alpha})")


def test_the_default_needs_p_below_one_percent():
    critical = critical_count(NUM_TEST, Fraction(1, 3), 0.01)
    assert _decide(critical).blessed and not _decide(critical - 1).blessed
    blessed = _decide(critical)
    assert blessed.reason == (f"blessed: test accuracy {critical / NUM_TEST:.4f}, better than always answering 'cat' "
                              f"(0.3333 of the training images) on 90 test images "
                              f"(p = {float(upper_tail(critical, NUM_TEST, Fraction(1, 3))):.2g}); "
                              "no comparable baseline")


def test_max_p_value_1_turns_the_chance_test_off():
    assert not _decide(20, EvaluateConfig(max_p_value=0.99)).blessed  # p = 0.992: even a lax test refuses it
    off = _decide(20, EvaluateConfig(max_p_value=1.0))
    assert off.blessed and off.reason == "blessed: test accuracy 0.2222; no comparable baseline"
    assert _decide(0, EvaluateConfig(max_p_value=1.0)).blessed  # p = 1: still no test


def test_min_accuracy_is_a_floor_of_its_own_and_is_checked_first():
    floor = _decide(60, EvaluateConfig(min_accuracy=0.9))
    assert not floor.blessed and floor.refused_by == "evaluate.min_accuracy"
    assert floor.reason == "not blessed: test accuracy 0.6667 < evaluate.min_accuracy 0.9"
    both = _decide(30, EvaluateConfig(min_accuracy=0.9))
    assert both.refused_by == "evaluate.min_accuracy"


def test_a_regression_from_the_baseline_is_refused_after_the_chance_test(tmp_path):
    baseline_dir = tmp_path / "digits" / "4"
    worse = _decide(60, baseline_dir=baseline_dir, baseline_accuracy=0.8)
    assert not worse.blessed and worse.refused_by == "evaluate.max_regression"
    assert worse.reason == ("not blessed: test accuracy 0.6667 < baseline 0.8000 (digits/4) - "
                            "evaluate.max_regression 0.01")
    assert worse.baseline == str(baseline_dir) and worse.baseline_accuracy == 0.8
    chance = _decide(30, baseline_dir=baseline_dir, baseline_accuracy=0.8)
    assert chance.refused_by == "evaluate.max_p_value"
    kept = _decide(60, baseline_dir=baseline_dir, baseline_accuracy=0.67)
    assert kept.blessed and kept.reason.endswith("; vs baseline 0.6700 (digits/4)")


def test_the_commonest_class_is_taken_from_the_training_split_not_the_test_split(smoke_run):
    run_dir = smoke_run.run_dir
    blessing = json.loads((run_dir / "evaluate" / "blessing.json").read_text())
    train_counts = np.bincount(read_split(run_dir / "ingest", "train")[1], minlength=10)
    test_labels = read_split(run_dir / "ingest", "test")[1]
    test_counts = np.bincount(test_labels, minlength=10)
    assert train_counts.argmax() != test_counts.argmax()  # digits: '1' in train, '3' in test
    chance = blessing["chance"]
    assert chance["commonest_class"] == str(train_counts.argmax())
    assert chance["commonest_share"] == train_counts.max() / train_counts.sum()
    assert chance["num_examples"] == len(test_labels) == 360
    assert chance["num_correct"] == round(blessing["test_accuracy"] * 360)


def test_a_learnable_smoke_run_is_blessed_and_says_it_beat_chance(smoke_run):
    results = smoke_run.manifest["results"]
    blessing = json.loads((smoke_run.run_dir / "evaluate" / "blessing.json").read_text())
    assert {"blessed", "reason", "test_accuracy", "baseline", "baseline_accuracy"} <= set(blessing)  # as before
    assert results["blessed"] is True and blessing["blessed"] is True and blessing["refused_by"] is None
    assert results["blessing_reason"] == blessing["reason"]
    assert ", better than always answering '1' (0.1013 of the training images) on 360 test images (p < 0.0001)" \
        in blessing["reason"]
    assert blessing["rules"] == {"min_accuracy": 0.0, "max_p_value": 0.01, "max_regression": 0.01}


def test_evaluate_reads_the_test_split_without_running_out_of_data(smoke_run):
    # Keras warns when a dataset of unknown length ends; every evaluate printed it before the split was sized.
    assert "ran out of data" not in smoke_run.stderr
    assert "stage evaluate: started" in smoke_run.stderr  # the log was captured


@pytest.mark.slow
def test_a_model_trained_on_random_labels_is_not_published(tmp_path):
    rng = np.random.default_rng(7)
    data_dir = tmp_path / "random"
    data_dir.mkdir()
    for prefix, (images, labels) in {"train": make_images(20), "t10k": make_images(10, seed=1)}.items():
        write_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz", images[..., 0])
        write_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz", rng.permutation(labels))  # nothing to learn
    run = run_pipeline_cli(tmp_path / "work", "--preset", "smoke", f"data.source=idx:{data_dir}")
    assert run.returncode == 0, run.stderr
    assert {stage["name"]: stage["status"] for stage in run.manifest["stages"]}["export"] == "skipped"
    assert run.manifest["results"]["blessed"] is False
    reason = run.manifest["results"]["blessing_reason"]
    assert reason.startswith("not blessed: test accuracy ") and "is no better than always answering '" in reason
    assert "on 30 test images (p = " in reason and ">= evaluate.max_p_value 0.01)" in reason
    assert reason in run.stdout
    assert not (tmp_path / "work" / "saved_models").exists()
    assert "Not published: " in (run.run_dir / "report.html").read_text()
