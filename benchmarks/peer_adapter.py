"""The project's names that the PyTorch speed peer's side_by_side.py imports (its PROJECT_NAMES;
README, Speed), from where they now live, so that the speed comparison against the PyTorch peer
keeps running."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import export  # noqa: E402
import get_dataset  # noqa: E402
import util  # noqa: E402
from export import write_serving_models  # noqa: E402,F401
from features import input_names, item_input_names, tower_features, user_input_names  # noqa: E402,F401
from model import IntTower, MethodCell  # noqa: E402,F401
from model_config import Config  # noqa: E402,F401
from ms_util import predict, to_tensors  # noqa: E402,F401
from serving import numpy_scores  # noqa: E402,F401
from train import build  # noqa: E402,F401
from util import epoch_order  # noqa: E402,F401

# the feature-name tuples of the harness's time, from the feature table
_ALL = Config()
USER_SPARSE = tuple(f.name for f in tower_features("user", _ALL) if f.kind == "sparse")
USER_DENSE = tuple(f.name for f in tower_features("user", _ALL) if f.kind == "dense")
ITEM_SPARSE = tuple(f.name for f in tower_features("item", _ALL) if f.kind == "sparse")
ITEM_MULTI = tuple(f.name for f in tower_features("item", _ALL) if f.kind == "multi")
ITEM_DENSE = tuple(f.name for f in tower_features("item", _ALL) if f.kind == "dense")


def load_dataset(config, data_root="data", quiet=False):
    util.set_quiet(quiet)
    return get_dataset.load_dataset(config, data_root)


def item_heads_of(item_tower, items, names, quiet=True):
    util.set_quiet(quiet)
    return export.item_heads_of(item_tower, items, names)
