"""Serving a tower model on CPU without MindSpore: the candidate scorer in numpy, the same scorer
as an ONNX graph for onnxruntime (export.py writes it beside the ONNX user tower), and the
onnxruntime session a request runs in.

A request is one user against N cached candidates: score = sigmoid(sum over the U user heads of
the max over the V item heads of <user head, item head> + bias). README, Speed, has the engines
measured against each other and against the PyTorch peer.
"""
import threading

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper

# ONNX opset of the scorer graph (ReduceMax with an `axes` attribute: opset < 18)
ONNX_OPSET = 17

_scratch = threading.local()


def scratch(name, rows, columns):
    """A [rows, columns] float32 buffer of this thread's, kept under `name` and reused across
    requests: a fresh array as large as the similarities costs page faults on every request
    (README, Speed)."""
    buffers = _scratch.__dict__
    buffer = buffers.get(name)
    if buffer is None or buffer.size < rows * columns:
        buffer = buffers[name] = np.empty(rows * columns, np.float32)
    return buffer[:rows * columns].reshape(rows, columns)


def maxsim_logits(user_heads, item_heads_by_head):
    """The MaxSim logit (without the bias) of every (user, item): user heads [B, U, d] against items'
    heads laid out item-head first, [V, N, d] (the index transposed once when it is loaded) ->
    [B, N]. One [V*N, d] x [d, B*U] matmul into a reused buffer, an elementwise maximum over its V
    contiguous [N, B*U] blocks, then the sum over each user's heads as one matmul with a 0/1
    [B*U, B] matrix (numpy reduces a short axis several times slower). More than 8 query columns
    are padded with zero columns to a multiple of 16, the width OpenBLAS's kernels work in; padding
    belongs to no user."""
    users, user_num, dim = user_heads.shape
    heads, n, _ = item_heads_by_head.shape
    columns = users * user_num
    width = columns if columns <= 8 else -(-columns // 16) * 16
    queries = np.zeros((width, dim), np.float32)
    queries[:columns] = user_heads.reshape(columns, dim)
    blocks = scratch("similarity", heads * n, width).reshape(heads, n, width)
    if item_heads_by_head.flags.c_contiguous:
        np.matmul(item_heads_by_head.reshape(heads * n, dim), queries.T, out=blocks.reshape(heads * n, width))
    else:  # a view of the items (retrieval.py's blocks and rescored candidates): one matmul per head, no copy
        for head in range(heads):
            np.matmul(item_heads_by_head[head], queries.T, out=blocks[head])
    best = blocks[0]
    for block in blocks[1:]:
        np.maximum(best, block, out=best)
    owner = np.zeros((width, users), np.float32)
    owner[np.arange(columns), np.arange(columns) // user_num] = 1
    return (best @ owner).T


def by_head(item_heads):
    """Items' heads [N, V, d], as export.py's item index stores them, laid out item-head first [V, N, d]
    for maxsim_logits: done once, when the index is loaded."""
    return np.ascontiguousarray(np.swapaxes(item_heads, 0, 1))


def numpy_scores(user_heads, item_heads_by_head, bias):
    """One user's heads [U, d] against N items' heads [V, N, d] -> N probabilities."""
    logits = maxsim_logits(user_heads[None], item_heads_by_head)[0] + np.float32(bias)
    return 1.0 / (1.0 + np.exp(-logits))


def onnx_session(path):
    """An onnxruntime CPU session for a request path. Its worker threads sleep between requests
    instead of spinning: on a 2-vCPU machine a spinning worker competes with the thread that runs
    the request, which put the p99 at several times the p50 (README, Speed)."""
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


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
