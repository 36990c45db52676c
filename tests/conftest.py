import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from features import FEATURES, input_names, user_input_names  # noqa: E402
from model_config import Config  # noqa: E402
from raw_files import make_raw, write_ml1m  # noqa: E402


@pytest.fixture
def schema():
    """The shape of the schema get_dataset.py returns, with small vocabularies (3 to 38 ids)."""
    return {"vocab": {f.name: 3 + 5 * i for i, f in enumerate(FEATURES) if f.kind != "dense"}, "max_genres": 6,
            "dense_range": {f.name: [0.0, 1.0] for f in FEATURES if f.kind == "dense"}}


@pytest.fixture
def ml1m_root(tmp_path):
    """tmp_path holding the raw_files.py data in the GroupLens ML-1M layout."""
    write_ml1m(tmp_path, make_raw())
    return tmp_path


def tiny_config(**overrides):
    """A small model: towers [16, 8], FE 4 heads x 4, embeddings of 8."""
    return Config(**{"mlp_layers": [16, 8], "feblock_size": 16, "head_num": 4, "sparse_embedding_dim": 8,
                     **overrides})


@pytest.fixture
def graph_mode():
    """Graph mode (as the commands run) for one test, then the previous mode again: a test left in
    graph mode would make every later in-process test compile its networks, far slower than PyNative."""
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=previous)


@pytest.fixture(params=[ms.PYNATIVE_MODE, ms.GRAPH_MODE], ids=["pynative", "graph"])
def execution_mode(request):
    """Runs the test in PyNative and in graph mode, restoring the previous mode afterwards."""
    previous = ms.get_context("mode")
    ms.set_context(mode=request.param)
    yield request.param
    ms.set_context(mode=previous)


def run(script, *args, cwd, check=True):
    """`python ROOT/script args` in `cwd`; by default the run must succeed."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def random_features(schema, config, batch, seed=0):
    """One tensor per model input, in input_names(config) order."""
    rng = np.random.default_rng(seed)
    vocab = schema["vocab"]
    kinds = {f.name: f.kind for f in FEATURES}
    features = []
    for name in input_names(config):
        if kinds[name] == "multi":
            ids = rng.integers(1, vocab[name], size=(batch, schema["max_genres"]))
            ids[rng.random(ids.shape) < 0.5] = 0   # padding anywhere, some rows fully padded
            features.append(Tensor(ids.astype(np.int32)))
        elif kinds[name] == "sparse":
            features.append(Tensor(rng.integers(0, vocab[name], size=batch).astype(np.int32)))
        else:
            features.append(Tensor(rng.random(batch).astype(np.float32)))
    return features


def randomize_parameters(net, seed=0):
    """Random weights and BatchNorm statistics, so that rows differ in inference mode (a fresh network,
    with tiny embeddings and unit moving statistics, gives almost the same output for every row)."""
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        positive = "gamma" in p.name or "moving_variance" in p.name
        value = rng.uniform(0.5, 1.5, p.shape) if positive else rng.normal(0.0, 0.25, p.shape)
        p.set_data(Tensor(value.astype(np.float32)))
    return net


def split_features(config, features):
    n_user = len(user_input_names(config))
    return features[:n_user], features[n_user:]


def random_labels(batch, positives, seed=0):
    labels = np.zeros(batch, np.float32)
    labels[np.random.default_rng(seed).permutation(batch)[:positives]] = 1.0
    return Tensor(labels)


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def all_finite(tensors):
    return all(np.isfinite(t.asnumpy()).all() for t in tensors)
