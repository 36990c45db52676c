"""Every `--model` name -> its network, built from the feature schema and initialised as the config
says; where a run's checkpoints are and what they are named; a checkpoint -> the network it was
trained as; the inference copy exports write."""
import glob
import json
import os

import mindspore as ms
from mindspore import nn
from mindspore.common.initializer import Normal, initializer

import ms_util
import util
from baselines import COLD, DAT, DCN, DSSM, AutoInt, DeepFM, WideDeep
from model import IntTower, TwoTower, fold_batchnorm
from model_config import Config
from module import Tower

MODELS = {"inttower": IntTower, "two_tower": TwoTower, "dssm": DSSM, "dat": DAT, "cold": COLD, "wdl": WideDeep,
          "deepfm": DeepFM, "dcn": DCN, "autoint": AutoInt}
# the models whose item side does not depend on the user: item vectors can be cached for serving
TOWER_MODELS = ("two_tower", "dssm", "dat", "inttower")
METRICS_NAME = "train_metrics.json"


def build_network(schema, config):
    net = MODELS[config.model](schema, config)
    if config.init != "default":
        published_init(net, config.init)
    return net


def published_init(net, init):
    """Re-initialise `net` in place as a published code starts its network.
    "mindspore": the published MindSpore code pins MindSpore 1.8, where every nn.Dense starts with
    Normal(0.01) weights and zero biases (its embeddings start Normal(0.01), as here).
    "pytorch": the authors' PyTorch code draws the embedding tables and the towers' layer weights
    from Normal(1e-4) and leaves every other layer at PyTorch's default, the uniform fan-in
    initialisation MindSpore's Dense layers also start with (the FE projections included: model.py)."""
    def draw(parameter, how):
        parameter.set_data(initializer(how, parameter.shape, ms.float32))

    for _, cell in net.cells_and_names():
        if init == "mindspore" and isinstance(cell, nn.Dense):
            draw(cell.weight, Normal(0.01))
            if cell.has_bias:
                draw(cell.bias, "zeros")
        elif init == "pytorch" and isinstance(cell, nn.Embedding):
            draw(cell.embedding_table, Normal(1e-4))
        elif init == "pytorch" and isinstance(cell, Tower):
            for layer in cell.layers:
                draw(layer[0].weight, Normal(1e-4))


def checkpoint_names(model: str):
    """(best, last) checkpoint file names of a run of `model`: IntTower.ckpt, DCN-last.ckpt, ..."""
    name = MODELS[model].__name__
    return f"{name}.ckpt", f"{name}-last.ckpt"


def run_checkpoint(out_dir: str) -> str:
    """The best checkpoint of the run in out_dir, for eval.py and export.py without --ckpt: the one
    named after the model its train_metrics.json names, else its only best checkpoint (runs of
    earlier versions named every model's IntTower.ckpt)."""
    metrics = os.path.join(out_dir, METRICS_NAME)
    if os.path.isfile(metrics):
        with open(metrics) as f:
            named = os.path.join(out_dir, checkpoint_names(json.load(f)["config"]["model"])[0])
        if os.path.isfile(named):
            return named
    found = [p for p in glob.glob(os.path.join(out_dir, "*.ckpt")) if not p.endswith("-last.ckpt")]
    if len(found) != 1:
        raise util.UsageError(f"{'no' if not found else 'more than one'} checkpoint in {out_dir}: train one with "
                              "`python train.py`, or pass --ckpt PATH")
    return found[0]


def model_from_checkpoint(path: str):
    """Rebuild the network a checkpoint was trained as, from the config and feature schema it
    carries, and load its weights. -> (net, config, meta). Bad or mismatched files: UsageError."""
    params, meta = ms_util.load_checkpoint(path)
    try:
        config = Config(**meta["config"])
        net = MODELS[config.model](meta["schema"], config)
    except (KeyError, TypeError, ValueError) as err:
        raise util.UsageError(f"checkpoint {path} carries a config or schema this code cannot rebuild ({err}); "
                              "retrain with `python train.py`") from None
    ms_util.load_parameters(net, params, path)
    net.set_train(False)
    return net, config, meta


def inference_copy(net, schema, config):
    """A copy of `net` for export, in inference mode with its BatchNorms folded into the Dense
    layers once (the same function, without refolding on every call); `net` is left as it is."""
    copy = MODELS[config.model](schema, config)
    ms.load_param_into_net(copy, {p.name: ms.Parameter(p.value().copy(), name=p.name) for p in net.get_parameters()},
                           strict_load=True)
    fold_batchnorm(copy)
    copy.set_train(False)
    return copy
