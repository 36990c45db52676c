"""Serving a tower model on CPU without MindSpore: the candidate scorer in numpy, and the same
scorer as an ONNX graph for onnxruntime (export.py writes it beside the ONNX user tower).

A request is one user against N cached candidates: score = sigmoid(sum over the U user heads of
the max over the V item heads of <user head, item head> + bias). README, Speed, has the engines
measured against each other and against the PyTorch peer.
"""
import threading

import numpy as np
import onnx
from onnx import TensorProto, helper

# ONNX opset of the scorer graph (ReduceMax with an `axes` attribute: opset < 18)
ONNX_OPSET = 17

_scratch = threading.local()


def scratch(rows, columns):
    """A [rows, columns] float32 buffer of this thread's, reused across requests: a fresh array as
    large as the similarities costs page faults on every request (README, Speed)."""
    buffer = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.size < rows * columns:
        buffer = _scratch.buffer = np.empty(rows * columns, np.float32)
    return buffer[:rows * columns].reshape(rows, columns)


def numpy_scores(user_heads, item_heads_by_head, bias):
    """One user's heads [U, d] against N items' heads laid out item-head first, [V, N, d] (the
    index transposed once when it is loaded) -> N probabilities. One [V*N, d] x [d, U'] matmul into
    a reused buffer, an elementwise max over the V contiguous [N, U'] blocks, a sum over the heads.
    More than 8 user heads are padded with zero heads to a multiple of 16, the width OpenBLAS's
    kernels work in: a zero head's best dot product is 0, so the sum is unchanged."""
    heads, n, dim = item_heads_by_head.shape
    user_num = user_heads.shape[0]
    width = user_num if user_num <= 8 else -(-user_num // 16) * 16
    padded = np.zeros((width, dim), np.float32)
    padded[:user_num] = user_heads
    similarity = scratch(heads * n, width)
    np.matmul(item_heads_by_head.reshape(heads * n, dim), padded.T, out=similarity)
    blocks = similarity.reshape(heads, n, width)
    best = blocks[0]
    for block in blocks[1:]:
        np.maximum(best, block, out=best)
    logits = best @ np.ones(width, np.float32) + np.float32(bias)
    return 1.0 / (1.0 + np.exp(-logits))


def scorer_onnx(user_heads_shape, item_heads_shape, bias) -> bytes:
    """The scorer as an ONNX model for onnxruntime: inputs user_heads [U, d] and item_heads
    [N, V, d] (N dynamic), output the N probabilities; the bias is a constant of the graph.
    Written by hand rather than through mindspore.onnx.export, which keeps the export-time N
    inside its Reshapes."""
    (user_num, dim), (heads, _) = user_heads_shape, item_heads_shape[1:]
    inputs = [helper.make_tensor_value_info("user_heads", TensorProto.FLOAT, [user_num, dim]),
              helper.make_tensor_value_info("item_heads", TensorProto.FLOAT, ["candidates", heads, dim])]
    output = helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["candidates"])
    nodes = [helper.make_node("Transpose", ["user_heads"], ["user_heads_t"], perm=[1, 0]),
             helper.make_node("MatMul", ["item_heads", "user_heads_t"], ["similarity"]),  # [N, V, U]
             helper.make_node("ReduceMax", ["similarity"], ["best"], axes=[1], keepdims=0),  # [N, U]
             helper.make_node("ReduceSum", ["best", "head_axis"], ["score"], keepdims=0),
             helper.make_node("Add", ["score", "bias"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["probability"])]
    constants = [helper.make_tensor("head_axis", TensorProto.INT64, [1], [1]),
                 helper.make_tensor("bias", TensorProto.FLOAT, [], [float(np.asarray(bias).reshape(-1)[0])])]
    graph = helper.make_graph(nodes, "maxsim_scorer", inputs, [output], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    onnx.checker.check_model(model)
    return model.SerializeToString()
