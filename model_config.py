"""Every default hyper-parameter in one place: the published IntTower MindSpore `model_config`.

Command-line programs build a `Config` from these defaults and override fields with flags
(`add_config_args` / `config_from_args`); the resulting config is stored in every checkpoint.
"""
import argparse
import dataclasses
from dataclasses import dataclass, field

from util import UsageError


@dataclass
class Config:
    # data (get_dataset.py): which dataset and protocol the run trains and evaluates on
    dataset: str = "ml-1m"
    protocol: str = "paper"
    split: str = "random"
    seed: int = 3047
    synthetic_scale: float = 1.0
    # keep only each user's first N ratings by time (a sparse version of the data); 0 keeps all
    first_ratings: int = 0

    # model (the published values): IntTower or one of the paper's baselines (MODEL_NAMES).
    # Every baseline shares the fields below (embedding size, mlp_layers, keep_rate) and the training
    # defaults, so that all models are compared on one loop; their own hyper-parameters follow.
    model: str = "inttower"
    mlp_layers: list = field(default_factory=lambda: [300, 300, 128])
    feblock_size: int = 256
    head_num: int = 4
    sparse_embedding_dim: int = 32
    keep_rate: float = 0.9
    use_lightse: bool = True
    # Light-SE on the item tower as well as the user tower (the paper and the authors' PyTorch code);
    # the published MindSpore code has it on the user tower only
    item_lightse: bool = True
    # BatchNorm on each tower's input (the published MindSpore code; the PyTorch code has none)
    input_norm: bool = True
    use_genres: bool = True
    # FE-Block over every user layer ("all": the paper, the published use_multi_layer=True)
    # or only the last one (ablation)
    fe_layers: str = "all"
    # What the FE-Block projects on the user side (the paper is silent, the codes differ): the
    # "outputs" of the user layers (h1, h2, h3: the published MindSpore code) or their "inputs"
    # (the embedding concat, h1, h2: the authors' PyTorch code)
    fe_source: str = "outputs"
    # Activation on the user FE projections: the published MindSpore code applies a ReLU (its item
    # projection is linear); the PyTorch code has none. README, Faithfulness, has both measured.
    user_fe_activation: str = "relu"
    # loss = BCE + cir_weight * CIR. Neither published code trains a CIR term: the MindSpore code
    # defines a ContrastLoss but never adds it, and the authors' PyTorch code at its head computes
    # its contrastive term and leaves it out of the loss (README, Faithfulness): cir_weight 0 is
    # their training, 1 this project's reading of the paper.
    cir_weight: float = 1.0
    # The InfoNCE temperature is this project's choice: 0.07 is the usual InfoNCE value, and the one
    # of the InfoNCE the PyTorch repository held for five minutes (commit 65be655, removed by
    # a234d89). The unused MindSpore ContrastLoss has tau 1; the PyTorch loss of the paper's time
    # (a penalty on the cosine of negative pairs) tau 0.001.
    cir_temperature: float = 0.07
    l2_embedding: float = 0.0
    # Initialisation of the FE-Block projections. MaxSim sums 12 user heads x (max over 4 item
    # heads) of 64-d dot products, unscaled: with MindSpore's default Dense initialiser the initial
    # logits saturate the sigmoid for many rows (README, Faithfulness), with Normal(0.01), what the
    # published code names, they do not. The towers' Dense layers keep the default, as a BatchNorm
    # follows each of them.
    fe_init_std: float = 0.01
    # "default" (above), or as a published code starts its network (networks.published_init):
    # "mindspore" (MindSpore 1.8, which that code pins: every Dense Normal(0.01) weights and zero
    # biases) or "pytorch" (embeddings and tower layer weights Normal(1e-4), the rest PyTorch's
    # default uniform fan-in initialisation)
    init: str = "default"

    # baselines (baselines.py). Where the authors' PyTorch code has a value it is used, else the
    # model's own paper's.
    # DSSM's and DAT's cosine scale gamma, sigmoid(gamma * cos(u, v) + bias): the PyTorch DSSM's
    # default 1, which its MovieLens script keeps (the DSSM paper tunes gamma on held-out data). With
    # gamma 1 the probability stays within sigmoid(bias -+ 1), which caps how low the logloss can go.
    dssm_gamma: float = 1.0
    # DAT: weight of the adaptive-mimic loss (user and item terms alike): the PyTorch DAT adds both
    # terms with weight 1
    dat_mimic_weight: float = 1.0
    # DCN: cross layers (the PyTorch DCN's default cross_num=2, vector kernels)
    dcn_cross_num: int = 2
    # AutoInt: interacting layers and attention heads (the PyTorch AutoInt's defaults att_layer_num=3,
    # att_head_num=2: two heads of 16 over the 32-d embeddings, with the residual connection)
    autoint_layers: int = 3
    autoint_heads: int = 2

    # training
    # Switch the network to train mode while training (BatchNorm on batch statistics, Dropout on).
    # The published MindSpore code never calls set_train, so it trains in inference mode: its
    # BatchNorms keep their initial moving statistics (learnable affine layers) and Dropout is off.
    train_mode: bool = True
    epochs: int = 10
    batch_size: int = 2048
    lr: float = 0.0005
    patience: int = 3


# every --model name (networks.MODELS builds each)
MODEL_NAMES = ("inttower", "two_tower", "dssm", "dat", "cold", "wdl", "deepfm", "dcn", "autoint")
# each model's name in the README's tables
MODEL_LABELS = {"inttower": "IntTower", "two_tower": "Two-Tower", "dssm": "DSSM", "dat": "DAT", "cold": "COLD",
                "wdl": "Wide&Deep", "deepfm": "DeepFM", "dcn": "DCN", "autoint": "AutoInt"}

# --preset NAME: settings chosen on validation, applied before the flags (which still override them).
# "tuned-ml1m": IntTower's choice of the benchmarks/tune.py search on ML-1M (strict protocol, seed-1
# validation split; benchmarks/tuned_ml1m.json holds the record, tests/test_tune.py holds the two
# together), trained to convergence as the tuned Table 2 trains it.
PRESETS = {
    "tuned-ml1m": dict(lr=0.0011423254155608373, keep_rate=0.7840222805469661, l2_embedding=0.0004246031301768212,
                       mlp_layers=[256, 128], cir_weight=2.6785804543080047, cir_temperature=0.073291519705306,
                       epochs=50, patience=3),
}

# CIRLoss takes exp(logits) with |logits| <= 1/tau, without a max-subtraction: float32 holds it
# (summed over a batch) for tau down to about 0.013
MIN_CIR_TEMPERATURE = 0.02


def positive(cast):
    """An argparse type for numbers > 0 (a bad value exits 2 naming the flag)."""
    def parse(text: str):
        value = cast(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    parse.__name__ = cast.__name__  # argparse names the type in its message
    return parse


def add_config_args(parser: argparse.ArgumentParser, data_only: bool = False) -> None:
    """Add one flag per config field; defaults are None so only given flags override."""
    d = Config()
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", choices=["ml-1m", "ml-100k", "synthetic"], help=f"dataset (default {d.dataset})")
    g.add_argument("--protocol", choices=["paper", "strict"],
                   help=f"feature/split protocol (default {d.protocol}; see README)")
    g.add_argument("--split", choices=["random", "temporal"],
                   help="strict protocol only: random or temporal split (default random)")
    g.add_argument("--seed", type=int, help=f"seed for the split, initialisation and data order (default {d.seed})")
    g.add_argument("--synthetic-scale", type=positive(float),
                   help="fraction of the full synthetic ML-1M size (default 1.0)")
    g.add_argument("--first-ratings", type=positive(int), metavar="N",
                   help="keep only each user's first N ratings by time, before 3s are dropped (a sparse version "
                        "of the data, for users with few ratings; default: all)")
    if data_only:
        return
    g = parser.add_argument_group("model")
    g.add_argument("--preset", choices=list(PRESETS),
                   help="start from a tuned setting instead of the published defaults (tuned-ml1m: IntTower's "
                        "settings tuned on ML-1M validation, trained to convergence; README, Table 2 tuned); "
                        "other flags still override it")
    g.add_argument("--model", choices=MODEL_NAMES,
                   help=f"IntTower or one of the paper's baselines (default {d.model}; see baselines.py)")
    g.add_argument("--mlp-layers", type=positive(int), nargs="+",
                   help=f"layer sizes of each tower, or of the ranking baselines' MLP (default {d.mlp_layers})")
    g.add_argument("--feblock-size", type=positive(int), help=f"FE projection size (default {d.feblock_size})")
    g.add_argument("--head-num", type=positive(int), help=f"FE heads (default {d.head_num})")
    g.add_argument("--sparse-embedding-dim", type=positive(int),
                   help=f"embedding size (default {d.sparse_embedding_dim})")
    g.add_argument("--keep-rate", type=float, help=f"dropout keep rate (default {d.keep_rate})")
    g.add_argument("--no-lightse", dest="use_lightse", action="store_const", const=False, help="ablation: no Light-SE")
    g.add_argument("--no-item-lightse", dest="item_lightse", action="store_const", const=False,
                   help="Light-SE on the user tower only (the published MindSpore code)")
    g.add_argument("--no-input-norm", dest="input_norm", action="store_const", const=False,
                   help="no BatchNorm on the towers' inputs (the authors' PyTorch code)")
    g.add_argument("--no-genres", dest="use_genres", action="store_const", const=False,
                   help="drop genres from the item tower (the published MindSpore code's item tower)")
    g.add_argument("--fe-layers", choices=["all", "last"],
                   help="FE-Block over all user layers (default) or the last only")
    g.add_argument("--fe-source", choices=["outputs", "inputs"],
                   help="user FE projections of each user layer's outputs (default; the published MindSpore code) "
                        "or inputs (the authors' PyTorch code)")
    g.add_argument("--user-fe-activation", choices=["relu", "none"],
                   help=f"activation on the user FE projections (default {d.user_fe_activation}; "
                        "the published MindSpore code: relu, the PyTorch code: none)")
    g.add_argument("--cir-weight", type=float, help=f"weight of the CIR loss, 0 disables it (default {d.cir_weight})")
    g.add_argument("--cir-temperature", type=positive(float), help=f"CIR temperature tau (default {d.cir_temperature})")
    g.add_argument("--l2-embedding", type=float, help=f"L2 penalty on embeddings (default {d.l2_embedding})")
    g.add_argument("--init", choices=["default", "mindspore", "pytorch"],
                   help="initialisation: default, or as the published MindSpore code (under MindSpore 1.8: every "
                        "Dense Normal(0.01), zero biases) or the authors' PyTorch code (embeddings and tower "
                        "weights Normal(1e-4)) starts")
    g = parser.add_argument_group("baselines")
    g.add_argument("--dssm-gamma", type=positive(float),
                   help=f"dssm, dat: cosine scale gamma (default {d.dssm_gamma})")
    g.add_argument("--dat-mimic-weight", type=float,
                   help=f"dat: weight of the adaptive-mimic loss (default {d.dat_mimic_weight})")
    g.add_argument("--dcn-cross-num", type=positive(int), help=f"dcn: cross layers (default {d.dcn_cross_num})")
    g.add_argument("--autoint-layers", type=positive(int),
                   help=f"autoint: interacting layers (default {d.autoint_layers})")
    g.add_argument("--autoint-heads", type=positive(int),
                   help=f"autoint: attention heads, dividing --sparse-embedding-dim (default {d.autoint_heads})")
    g = parser.add_argument_group("training")
    g.add_argument("--no-train-mode", dest="train_mode", action="store_const", const=False,
                   help="train with the network left in inference mode, as the published MindSpore code does "
                        "(BatchNorm keeps its initial statistics, Dropout is off)")
    g.add_argument("--epochs", type=positive(int), help=f"epochs (default {d.epochs})")
    g.add_argument("--batch-size", type=positive(int), help=f"batch size (default {d.batch_size})")
    g.add_argument("--lr", type=positive(float), help=f"Adam learning rate (default {d.lr})")
    g.add_argument("--patience", type=positive(int),
                   help=f"early stopping: epochs without a better valid AUC (default {d.patience})")


def config_from_args(args: argparse.Namespace, base: Config = None) -> Config:
    """`base` (default: the published defaults) with the --preset, then every flag the user gave, applied."""
    base = base or Config()
    if getattr(args, "preset", None):
        base = dataclasses.replace(base, **PRESETS[args.preset])
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
             if getattr(args, f.name, None) is not None}
    config = dataclasses.replace(base, **given)
    if config.feblock_size % config.head_num:
        raise UsageError(f"--feblock-size {config.feblock_size} must be a multiple of --head-num {config.head_num}")
    if config.cir_temperature < MIN_CIR_TEMPERATURE:
        raise UsageError(f"--cir-temperature must be at least {MIN_CIR_TEMPERATURE}, got {config.cir_temperature}")
    if config.model == "autoint" and config.sparse_embedding_dim % config.autoint_heads:
        raise UsageError(f"--sparse-embedding-dim {config.sparse_embedding_dim} must be a multiple of "
                         f"--autoint-heads {config.autoint_heads}")
    if not 0 < config.keep_rate <= 1:
        raise UsageError(f"--keep-rate must be in (0, 1], got {config.keep_rate}")
    return config
