"""The rewrite of single-channel convolutions (deepcrate.models.openvino_graph) on real OpenVINO."""
from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from deepcrate.models.openvino_graph import unfold_time_into_channels


def correlate(images: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A 'valid' cross-correlation (what a convolution layer computes), by sliding windows in numpy."""
    windows = np.lib.stride_tricks.sliding_window_view(images[:, 0], weights.shape[2:], axis=(1, 2))
    return np.einsum("nhwij,oij->nohw", windows, weights[:, 0])


def single_channel_kernels(model) -> list[tuple[int, ...]]:
    return [tuple(op.input_value(1).get_node().get_data().shape) for op in model.get_ordered_ops()
            if op.get_type_name() == "Convolution" and op.input(0).get_partial_shape()[1].get_length() == 1]


def test_unfolded_convolutions_compute_the_same_and_others_are_left_alone():
    rng = np.random.default_rng(3)
    images = rng.standard_normal((3, 1, 20, 16)).astype(np.float32)
    unfoldable = rng.standard_normal((6, 1, 5, 7)).astype(np.float32)
    padded = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    temporal = rng.standard_normal((4, 1, 5, 1)).astype(np.float32)
    source = ops.parameter([-1, 1, 20, 16], np.float32, name="images")
    outputs = [ops.convolution(source, ops.constant(unfoldable), [1, 1], [0, 0], [0, 0], [1, 1]),
               ops.convolution(source, ops.constant(padded), [1, 1], [1, 1], [1, 1], [1, 1]),
               ops.convolution(source, ops.constant(temporal), [1, 1], [0, 0], [0, 0], [1, 1])]
    model = ov.Model(outputs, [source])

    assert unfold_time_into_channels(model) == 1
    assert sorted(single_channel_kernels(model)) == [(2, 1, 3, 3), (4, 1, 5, 1)]
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled(images)
    np.testing.assert_allclose(got[0], correlate(images, unfoldable), rtol=1e-5, atol=1e-5)
    padded_images = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)))
    np.testing.assert_allclose(got[1], correlate(padded_images, padded), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[2], correlate(images, temporal), rtol=1e-5, atol=1e-5)
    assert unfold_time_into_channels(model) == 0  # nothing single-channel with a 2-D kernel is left
