import os
import sys

import mindspore as ms
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model_config import Config  # noqa: E402

# ML-1M-shaped schema with small vocabularies (the shape get_dataset.py returns).
TEST_SCHEMA = {"vocab": {"user_id": 50, "gender": 3, "age": 8, "occupation": 22, "movie_id": 40, "genres": 19},
               "max_genres": 6}


@pytest.fixture
def schema():
    return {"vocab": dict(TEST_SCHEMA["vocab"]), "max_genres": TEST_SCHEMA["max_genres"]}


def tiny_config(**overrides):
    """A small model: towers [16, 8], FE 4 heads x 4, embeddings of 8."""
    return Config(**{"mlp_layers": [16, 8], "feblock_size": 16, "head_num": 4, "sparse_embedding_dim": 8,
                     **overrides})


@pytest.fixture(params=[ms.PYNATIVE_MODE, ms.GRAPH_MODE], ids=["pynative", "graph"])
def execution_mode(request):
    """Runs the test in PyNative and in graph mode, restoring the previous mode afterwards."""
    previous = ms.get_context("mode")
    ms.set_context(mode=request.param)
    yield request.param
    ms.set_context(mode=previous)
