"""A rewrite of the converted musicnn graph that OpenVINO's CPU kernels run faster.

Most of musicnn's time (three quarters of it, profiled per layer) goes to its timbral
front-end: convolutions of 204 filters, 7 frames by 38 or 67 bands, over a spectrogram of
*one* channel, which gives the CPU kernel nothing to vectorise along its input channels
(~62 GFLOP/s on one core of the development machine). The same convolution over the
input's 7 time shifts stacked as 7 channels, with 1-frame kernels, is the same sum in
another order and runs at ~81 GFLOP/s (the whole extractor ~1.2x faster per core, features
equal to 1e-6: bench/pretrained_runtime.py, docs/benchmarks.md).
"""
from __future__ import annotations

import numpy as np


def unfold_time_into_channels(model) -> int:
    """Rewrite, in place, each single-channel 2-D convolution of ``model`` (an ``openvino.Model``,
    NCHW with time on H) over its input's time shifts as channels; the number rewritten.

    Only convolutions with constant weights, unit strides and dilations, no padding and a
    known time length are rewritten; any other is left as it is.
    """
    import openvino.opset13 as ops

    rewritten = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Convolution":
            continue
        weights_node = op.input_value(1).get_node()
        shape = op.input(0).get_partial_shape()
        attributes = op.get_attributes()
        if (weights_node.get_type_name() != "Constant" or shape.rank.get_length() != 4
                or not shape[1].is_static or shape[1].get_length() != 1 or not shape[2].is_static
                or list(attributes["strides"]) != [1, 1] or list(attributes["dilations"]) != [1, 1]
                or any(attributes["pads_begin"]) or any(attributes["pads_end"])):
            continue
        weights = weights_node.get_data()  # (filters, 1, frames, bands)
        frames = weights.shape[2]
        if frames < 2 or weights.shape[3] < 2:
            continue
        out_frames = shape[2].get_length() - frames + 1
        source = op.input_value(0)
        shifts = ops.concat([ops.slice(source, np.array([shift]), np.array([shift + out_frames]),
                                       np.array([1]), np.array([2])) for shift in range(frames)], 1)
        unfolded = ops.convolution(shifts, ops.constant(np.ascontiguousarray(weights[:, 0][:, :, None, :])),
                                   [1, 1], [0, 0], [0, 0], [1, 1])
        unfolded.set_friendly_name(op.get_friendly_name())
        op.output(0).replace(unfolded.output(0))
        rewritten += 1
    if rewritten:
        model.validate_nodes_and_infer_types()
    return rewritten
