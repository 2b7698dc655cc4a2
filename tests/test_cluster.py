"""TF_CONFIG, as tf.distribute defines it: who is chief, how many workers, and every way to get it wrong."""

import json

import pytest

from components.cluster import Cluster, read_cluster, this_cluster
from components.errors import UserError

TWO_WORKERS = {"worker": ["a:1", "b:2"]}


@pytest.mark.parametrize("tf_config, expected", [
    (None, (1, "worker", 0, True)),
    ("", (1, "worker", 0, True)),
    (json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker", "index": 0}}), (2, "worker", 0, True)),
    (json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker", "index": 1}}), (2, "worker", 1, False)),
    (json.dumps({"cluster": {"chief": ["c:0"], **TWO_WORKERS}, "task": {"type": "chief", "index": 0}}),
     (3, "chief", 0, True)),
    (json.dumps({"cluster": {"chief": ["c:0"], **TWO_WORKERS}, "task": {"type": "worker", "index": 0}}),
     (3, "worker", 0, False)),  # with a chief task, worker 0 is an ordinary worker
    (json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker", "index": "1"}}), (2, "worker", 1, False)),
])
def test_tf_config_says_how_many_workers_and_which_is_chief(tf_config, expected):
    assert read_cluster(tf_config) == Cluster(*expected)


@pytest.mark.parametrize("tf_config, words", [
    ("{not json", "cannot be read"),
    ("[]", "cannot be read"),
    (json.dumps({"cluster": TWO_WORKERS}), "cannot be read"),  # no task
    (json.dumps({"task": {"type": "worker", "index": 0}}), "cannot be read"),  # no cluster
    (json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker"}}), "cannot be read"),
    (json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker", "index": "x"}}), "cannot be read"),
    (json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker", "index": 2}}), "is not in its cluster"),
    (json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker", "index": -1}}), "is not in its cluster"),
    (json.dumps({"cluster": TWO_WORKERS, "task": {"type": "ps", "index": 0}}), "is not in its cluster"),
    (json.dumps({"cluster": TWO_WORKERS, "task": {"type": "chief", "index": 0}}), "is not in its cluster"),
])
def test_a_bad_tf_config_is_one_clear_error(tf_config, words):
    with pytest.raises(UserError, match=words) as raised:
        read_cluster(tf_config)
    assert "\n" not in str(raised.value) and "TF_CONFIG" in str(raised.value)


def test_this_cluster_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker", "index": 1}}))
    assert this_cluster() == Cluster(2, "worker", 1, False)
    monkeypatch.delenv("TF_CONFIG")
    assert this_cluster() == Cluster(1, "worker", 0, True)
