"""IntTower and the Two-Tower baseline, on one two-tower base that baselines.py's DSSM and DAT build
on too. Every model is built from the feature schema get_dataset.py derives from the data (no
vocabulary size is written here) and takes features.input_names(config) as inputs.

A tower model scores a (user, item) pair from the towers' "heads": user_heads [B, U, d] and
item_heads [B, V, d], scored by MaxSim (for each user head the best item head's dot product, summed).
The item's heads do not depend on the user, so construct == sigmoid(score(user_heads, item_heads)),
which is what serving relies on: the user tower once per request, the item heads from a cache.
"""
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal

from features import tower_features
from module import CIRLoss, Tower, bce_with_l2, embedding_tables, maxsim_candidates, maxsim_score


class TwoTowerModel(nn.Cell):
    """What every tower model shares: a user Tower and an item Tower (module.Tower), the score of
    their heads plus a learnable bias, and the loss BCE (+ L2 on the embedding tables) + the
    subclass's representation_loss on the towers' last layers. A subclass says what its heads are
    (user_heads_from_layers, item_heads_from_layers). `lightse` False builds towers without
    Light-SE; `extra_inputs` widens their first layer (module.Tower)."""

    def __init__(self, schema, config, lightse=True, extra_inputs=0):
        super().__init__()
        lightse = lightse and config.use_lightse
        self.user_tower = Tower(tower_features("user", config), schema, config, lightse, extra_inputs)
        self.item_tower = Tower(tower_features("item", config), schema, config, lightse and config.item_lightse,
                                extra_inputs)
        self.user_input_num = len(tower_features("user", config))
        self.bias = Parameter(Tensor([0.0], ms.float32), name="bias")
        self.l2_embedding = config.l2_embedding
        self.embedding_tables = embedding_tables(self)

    def user_layers(self, *user_features):
        """User features -> the user tower's (x0, h1, ..., hL)."""
        return self.user_tower(*user_features)

    def item_layers(self, *item_features):
        """Item features -> the item tower's (x0, h1, ..., hL)."""
        return self.item_tower(*item_features)

    def user_heads(self, *user_features):
        """User features -> the user's heads, [B, U, d]."""
        return self.user_heads_from_layers(self.user_layers(*user_features))

    def item_heads(self, *item_features):
        """Item features -> the item's heads, [B, V, d]."""
        return self.item_heads_from_layers(self.item_layers(*item_features))

    def score_candidates(self, user_heads, item_heads):
        """One user's heads [U, d] against N items' cached heads [N, V, d] -> N probabilities."""
        return ops.sigmoid(maxsim_candidates(user_heads, item_heads) + self.bias)

    def logits_and_representations(self, *features):
        user_layers = self.user_layers(*features[:self.user_input_num])
        item_layers = self.item_layers(*features[self.user_input_num:])
        score = maxsim_score(self.user_heads_from_layers(user_layers), self.item_heads_from_layers(item_layers))
        return score + self.bias, user_layers[-1], item_layers[-1]

    def construct(self, *features):
        """All user then all item features (features.input_names order) -> click probability [B]."""
        return ops.sigmoid(self.logits_and_representations(*features)[0])

    def representation_loss(self, labels, user_rep, item_rep, *features):
        """A subclass's loss on the towers' last layers, beside BCE (none here)."""
        return 0.0

    def loss(self, labels, *features):
        logits, user_rep, item_rep = self.logits_and_representations(*features)
        loss = bce_with_l2(logits, labels, self.embedding_tables, self.l2_embedding)
        return loss + self.representation_loss(labels, user_rep, item_rep, *features)


class TwoTower(TwoTowerModel):
    """The paper's Two-Tower baseline: the dot product of the towers' last layers (one head each),
    trained with BCE alone."""

    def user_heads_from_layers(self, user_layers):
        return user_layers[-1].expand_dims(1)

    def item_heads_from_layers(self, item_layers):
        return item_layers[-1].expand_dims(1)


class IntTower(TwoTowerModel):
    """IntTower: the FE-Block projects every user layer (or the last, --fe-layers last) to head_num
    heads and the item's last layer to head_num heads, scored by MaxSim; the loss adds
    cir_weight x CIR between the towers' last layers."""

    def __init__(self, schema, config):
        super().__init__(schema, config)
        # the user tensors the FE-Block projects, by index into the tower's (x0, h1, ..., hL)
        layer_num = len(config.mlp_layers)
        self.fe_indices = tuple(range(1, layer_num + 1) if config.fe_source == "outputs" else range(layer_num))
        if config.fe_layers == "last":
            self.fe_indices = self.fe_indices[-1:]
        sizes = [self.user_tower.layers[0][0].in_channels] + list(config.mlp_layers)
        # Normal(fe_init_std) (model_config.py says why); --init pytorch keeps the framework's default, as
        # the PyTorch code does
        fe_init = None if config.init == "pytorch" else Normal(config.fe_init_std)
        self.user_fe = nn.CellList([nn.Dense(sizes[i], config.feblock_size, weight_init=fe_init)
                                    for i in self.fe_indices])
        self.user_fe_relu = config.user_fe_activation == "relu"
        self.item_fe = nn.Dense(config.mlp_layers[-1], config.feblock_size, weight_init=fe_init)
        self.head_num = config.head_num
        self.head_dim = config.feblock_size // config.head_num
        self.cir = CIRLoss(config.cir_temperature)
        self.cir_weight = config.cir_weight

    def split_heads(self, x):
        return x.reshape(x.shape[0], self.head_num, self.head_dim)

    def user_heads_from_layers(self, user_layers):
        heads = ()
        for projection, index in zip(self.user_fe, self.fe_indices):
            projected = projection(user_layers[index])
            if self.user_fe_relu:
                projected = ops.relu(projected)
            heads = heads + (self.split_heads(projected),)
        return ops.concat(heads, axis=1)

    def item_heads_from_layers(self, item_layers):
        return self.split_heads(self.item_fe(item_layers[-1]))

    def representation_loss(self, labels, user_rep, item_rep, *features):
        if self.cir_weight > 0:
            return self.cir_weight * self.cir(user_rep, item_rep, labels)
        return 0.0


def fold_batchnorm(net):
    """Fold every tower's BatchNorms into its Dense layers, in place (module.Tower.fold_batchnorm)."""
    for _, cell in net.cells_and_names():
        if isinstance(cell, Tower):
            cell.fold_batchnorm()


class MethodCell(nn.Cell):
    """One tower model method ("user_heads", "item_heads" or "score_candidates") as a Cell of its
    own: what export.py writes for serving, and a Cell whose set_train reaches the towers' BatchNorm
    and Dropout (calling a sub-cell directly may reuse a graph compiled in the other mode)."""

    def __init__(self, net, method: str):
        super().__init__(auto_prefix=False)
        self.net = net
        self.method = method

    def construct(self, *inputs):
        return getattr(self.net, self.method)(*inputs)
