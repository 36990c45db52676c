"""Every `--model` name -> its network, built from the feature schema; and a checkpoint -> the
network it was trained as."""
import mindspore as ms

import util
from baselines import COLD, DAT, DCN, DSSM, AutoInt, DeepFM, WideDeep
from model import IntTower, fold_batchnorm
from model_config import Config

MODELS = {"inttower": IntTower, "two_tower": IntTower, "dssm": DSSM, "dat": DAT, "cold": COLD, "wdl": WideDeep,
          "deepfm": DeepFM, "dcn": DCN, "autoint": AutoInt}
# the models whose item side does not depend on the user: item vectors can be cached for serving
TOWER_MODELS = ("two_tower", "dssm", "dat", "inttower")


def build_network(schema, config):
    return MODELS[config.model](schema, config)


def model_from_checkpoint(path: str):
    """Rebuild the network a checkpoint was trained as, from the config and feature schema it
    carries, and load its weights. -> (net, config, meta). Bad or mismatched files: UsageError."""
    params, meta = util.load_checkpoint(path)
    try:
        config = Config(**meta["config"])
        net = build_network(meta["schema"], config)
    except (KeyError, TypeError, ValueError) as err:
        raise util.UsageError(f"checkpoint {path} carries a config or schema this code cannot rebuild ({err}); "
                              "retrain with `python train.py`") from None
    util.load_parameters(net, params, path)
    net.set_train(False)
    return net, config, meta


def inference_copy(net, schema, config):
    """A copy of `net` for export, in inference mode with its BatchNorms folded into the Dense
    layers once (the same function, without refolding on every call); `net` is left as it is."""
    copy = build_network(schema, config)
    ms.load_param_into_net(copy, {p.name: ms.Parameter(p.value().copy(), name=p.name) for p in net.get_parameters()},
                           strict_load=True)
    fold_batchnorm(copy)
    copy.set_train(False)
    return copy
