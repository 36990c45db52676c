"""Every `--model` name -> its network, built from the feature schema; and a checkpoint -> the
network it was trained as."""
import util
from baselines import COLD, DAT, DCN, DSSM, AutoInt, DeepFM, WideDeep
from model import IntTower
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
