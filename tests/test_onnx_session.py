"""The ONNX Runtime session consumers open: the default session's outputs, with the options the README states."""

import numpy as np
import onnxruntime
import pytest

from components.export import write_onnx
from components.onnx_session import SINGLE_THREAD_MAX_BATCH, onnx_session
from tests.conftest import make_images
from tests.test_export import SHAPE, tiny_model

SPINNING = "session.intra_op.allow_spinning"


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    write_onnx(tiny_model(0), SHAPE, path, 17)
    return path


def probabilities(session: onnxruntime.InferenceSession, images: np.ndarray) -> np.ndarray:
    return session.run(["probabilities"], {"pixels": images.astype(np.float32)})[0]


@pytest.mark.parametrize("batch_hint", [1, SINGLE_THREAD_MAX_BATCH + 1, 256])
def test_the_session_predicts_what_the_default_session_does_at_any_batch_size(onnx_path, batch_hint):
    default = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    session = onnx_session(onnx_path, batch_hint)
    all_images = make_images(40)[0]
    for images in (all_images[:1], all_images[:7], all_images):  # the hint is a hint: any batch size is accepted
        np.testing.assert_allclose(probabilities(session, images), probabilities(default, images), atol=1e-6)


@pytest.mark.parametrize(("batch_hint", "num_threads"), [(1, 1), (SINGLE_THREAD_MAX_BATCH, 1),
                                                         (SINGLE_THREAD_MAX_BATCH + 1, 0), (256, 0)])
def test_small_batches_run_on_one_thread_large_ones_on_one_per_core(onnx_path, batch_hint, num_threads):
    session = onnx_session(onnx_path, batch_hint)
    options = session.get_session_options()
    assert options.intra_op_num_threads == num_threads  # 0: ONNX Runtime's choice, one per physical core
    assert options.execution_mode == onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    with pytest.raises(Exception, match=SPINNING):  # left to ONNX Runtime: a thread pool spins between operators
        options.get_session_config_entry(SPINNING)
    assert session.get_providers() == ["CPUExecutionProvider"]
