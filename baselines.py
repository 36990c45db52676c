"""The paper's baselines beside IntTower, each as its own paper defines it, on the same feature
schema, embeddings and training loop (train.py calls `net.loss(labels, *features)`, evaluation
`net(*features)` -> probabilities [B]; inputs in features.input_names order).

Tower models, servable with cached item vectors (on model.TwoTowerModel, as IntTower):
- DSSM (Huang et al. 2013): sigmoid(gamma * cosine(user tower, item tower) + bias).
- DAT (Yu et al. 2021): DSSM with an augmented vector per user id and per item id fed into the
  towers, and the adaptive-mimic loss.
Models that score the user and the item together (every field embedded: user_id, gender, age,
occupation, movie_id, genres mean-pooled, plus the two dense values, as the authors' PyTorch code
feeds them), so they cannot cache item vectors:
- COLD (Wang et al. 2020), which the paper counts among the pre-ranking models: a light model
  over user and item together, an SE gate over all fields, then the MLP.
- the ranking models Wide&Deep (Cheng et al. 2016): linear (wide) + MLP (deep); DeepFM (Guo et al.
  2017): linear + FM second-order term + MLP; DCN (Wang et al. 2017): cross network beside the
  MLP; AutoInt (Song et al. 2019): multi-head self-attention over the fields beside the MLP.
Hyper-parameters and their sources are in model_config.py; every model shares the project's
embedding size, MLP sizes, dropout and training loop.
"""
import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, XavierNormal, initializer

from features import tower_features
from model import TwoTower
from module import FieldEmbeddings, batch_matmul_transposed, bce_with_l2, dense_layers, embedding_tables, l2_normalize


# ---------------------------------------------------------------------------------------------
# Tower models

class DSSM(TwoTower):
    """DSSM as the IntTower authors' PyTorch code trains it: towers without Light-SE, scored by the
    cosine of their last layers, sigmoid(gamma * cos(u, v) + bias), with BCE. Its heads are the
    normalised last layers, the user's times gamma, so MaxSim over one head each is the scaled
    cosine and serving is every tower model's."""

    def __init__(self, schema, config, extra_inputs=0):
        super().__init__(schema, config, lightse=False, extra_inputs=extra_inputs)
        self.gamma = config.dssm_gamma

    # super(DSSM, self), not super(): graph mode resolves a bare super() from the instance's class,
    # which for a DAT is DSSM itself (endless recursion)
    def user_heads_from_layers(self, user_layers):
        return self.gamma * l2_normalize(super(DSSM, self).user_heads_from_layers(user_layers))

    def item_heads_from_layers(self, item_layers):
        return l2_normalize(super(DSSM, self).item_heads_from_layers(item_layers))


def mimic_loss(augmented, target, labels):
    """DAT's adaptive-mimic loss for one side: mean over the batch of y * ||a - p||^2, the augmented
    vector a pulled towards the other tower's normalised output p on positive pairs only; no
    gradient reaches p (the DAT paper: the augmented vectors learn from the other tower)."""
    difference = augmented - ops.stop_gradient(target)
    return ((difference * difference).sum(axis=-1) * labels).mean()


class DAT(DSSM):
    """Dual Augmented Two-tower: DSSM whose user tower also reads a learnable augmented vector of the
    user id, and whose item tower one of the item id (each as wide as the towers' output), trained
    with BCE + dat_mimic_weight * (mimic loss of the user's vector towards the item output + the
    item's towards the user output). The PyTorch DAT feeds fresh torch.rand noise instead of
    learned vectors (a defect); this follows the paper. The paper's other loss, Category Alignment
    (the item representations of minor categories aligned with those of the major one), is left
    out: a MovieLens item has several genres, not one category."""

    def __init__(self, schema, config):
        width = config.mlp_layers[-1]
        super().__init__(schema, config, extra_inputs=width)
        vocab = schema["vocab"]
        self.user_augmented = nn.Embedding(vocab["user_id"], width)
        self.item_augmented = nn.Embedding(vocab["movie_id"], width)
        self.mimic_weight = config.dat_mimic_weight
        self.embedding_tables = embedding_tables(self)  # now with the augmented vectors

    # each side's first feature is its id (user_id, movie_id), which keys its augmented vector
    def user_layers(self, *user_features):
        return self.user_tower.outputs_with_extra(self.user_augmented(user_features[0]), *user_features)

    def item_layers(self, *item_features):
        return self.item_tower.outputs_with_extra(self.item_augmented(item_features[0]), *item_features)

    def representation_loss(self, labels, user_rep, item_rep, *features):
        user_augmented = self.user_augmented(features[0])
        item_augmented = self.item_augmented(features[self.user_input_num])
        mimic = (mimic_loss(user_augmented, l2_normalize(item_rep), labels)
                 + mimic_loss(item_augmented, l2_normalize(user_rep), labels))
        return self.mimic_weight * mimic


# ---------------------------------------------------------------------------------------------
# Ranking models

class PairFields(nn.Cell):
    """The user's and the item's fields embedded together: [B, F, dim] (user_id, gender, age,
    occupation, movie_id, genres mean-pooled) and the dense values [B, 2]."""

    def __init__(self, schema, config, dim):
        super().__init__()
        self.user = FieldEmbeddings(tower_features("user", config), schema, dim)
        self.item = FieldEmbeddings(tower_features("item", config), schema, dim)
        self.field_num = self.user.field_num + self.item.field_num
        self.dense_num = self.user.dense_num + self.item.dense_num
        self.user_input_num = len(tower_features("user", config))

    def construct(self, *features):
        user_fields, user_dense = self.user(*features[:self.user_input_num])
        item_fields, item_dense = self.item(*features[self.user_input_num:])
        return ops.concat((user_fields, item_fields), axis=1), ops.concat((user_dense, item_dense), axis=1)


class RankingModel(nn.Cell):
    """What the models that score user and item together (COLD and the ranking models) share: the
    pair's fields, an MLP over the flattened fields and dense values (Dense -> ReLU -> Dropout per
    layer, no BatchNorm: the PyTorch baselines' dnn_use_bn=False), an optional linear term over
    every field (a scalar weight per id and per dense value), a learnable bias, and BCE (+ L2 on the
    embedding tables). A subclass adds its own `interaction_logit(fields, dense)`."""

    def __init__(self, schema, config, linear=False):
        super().__init__()
        dim = config.sparse_embedding_dim
        self.fields = PairFields(schema, config, dim)
        self.field_num = self.fields.field_num
        self.input_dim = self.field_num * dim + self.fields.dense_num
        self.deep = nn.SequentialCell(dense_layers(self.input_dim, config.mlp_layers, config.keep_rate,
                                                   batch_norm=False))
        self.deep_width = config.mlp_layers[-1]
        self.linear = PairFields(schema, config, 1) if linear else None
        if linear:
            self.dense_linear = nn.Dense(self.fields.dense_num, 1, has_bias=False)
        self.bias = Parameter(Tensor([0.0], ms.float32), name="bias")
        self.l2_embedding = config.l2_embedding
        self.embedding_tables = embedding_tables(self)

    def deep_input(self, fields, dense):
        return ops.concat((fields.reshape(fields.shape[0], -1), dense), axis=1)

    def logits(self, *features):
        fields, dense = self.fields(*features)
        logits = self.interaction_logit(fields, dense) + self.bias
        if self.linear is not None:
            field_weights, _ = self.linear(*features)
            logits = logits + field_weights.squeeze(-1).sum(axis=-1) + self.dense_linear(dense).squeeze(-1)
        return logits

    def construct(self, *features):
        """All user then all item features (features.input_names order) -> click probability [B]."""
        return ops.sigmoid(self.logits(*features))

    def loss(self, labels, *features):
        return bce_with_l2(self.logits(*features), labels, self.embedding_tables, self.l2_embedding)


class WideDeep(RankingModel):
    """Wide & Deep: the linear (wide) term plus the MLP over the embeddings and dense values (deep).
    The PyTorch WDL also runs a Light-SE precursor (SimNonLocal) on the embeddings, which is not
    Wide & Deep (and is not imported there, so that file does not run); it is left out."""

    def __init__(self, schema, config):
        super().__init__(schema, config, linear=True)
        self.deep_output = nn.Dense(self.deep_width, 1, has_bias=False)

    def interaction_logit(self, fields, dense):
        return self.deep_output(self.deep(self.deep_input(fields, dense))).squeeze(-1)


class FMInteraction(nn.Cell):
    """FM's second-order term over the fields, the sum over field pairs of <e_i, e_j>, as
    0.5 * (||sum_i e_i||^2 - sum_i ||e_i||^2). [B, F, D] -> [B]."""

    def __init__(self, field_num, dim):
        super().__init__()
        # the sum over fields as [B, F*D] x [F*D, D] with stacked identities: a ReduceSum over the
        # field axis (not the last) is several times slower on CPU
        self.field_sum = Tensor(np.tile(np.eye(dim, dtype=np.float32), (field_num, 1)))

    def construct(self, fields):
        flat = fields.reshape(fields.shape[0], -1)
        summed = ops.matmul(flat, self.field_sum)
        return 0.5 * ((summed * summed).sum(axis=-1) - (flat * flat).sum(axis=-1))


class DeepFM(WideDeep):
    """DeepFM: FM (the linear term + the FM second-order term over the field embeddings, dense
    values excluded as in the PyTorch DeepFM) + the deep MLP, sharing the embeddings."""

    def __init__(self, schema, config):
        super().__init__(schema, config)
        self.fm = FMInteraction(self.field_num, config.sparse_embedding_dim)

    def interaction_logit(self, fields, dense):
        return super().interaction_logit(fields, dense) + self.fm(fields)


class CrossLayer(nn.Cell):
    """One DCN cross layer with a vector kernel: x_{l+1} = x0 * (x_l . w) + b + x_l. The kernel is
    Xavier-normal and the bias zero (the PyTorch CrossNet)."""

    def __init__(self, width):
        super().__init__()
        self.weight = Parameter(initializer(XavierNormal(), [width, 1], ms.float32), name="weight")
        self.bias = Parameter(Tensor(np.zeros(width, np.float32)), name="bias")

    def construct(self, x0, x):
        return ops.bias_add(x0 * ops.matmul(x, self.weight), self.bias) + x


class DCN(RankingModel):
    """Deep & Cross Network: dcn_cross_num cross layers over the MLP's input beside the MLP, and one
    linear output over both (the DCN paper's combination layer). The PyTorch DCN also adds a linear
    term over the fields, which the paper does not have."""

    def __init__(self, schema, config):
        super().__init__(schema, config)
        self.cross = nn.CellList([CrossLayer(self.input_dim) for _ in range(config.dcn_cross_num)])
        self.output = nn.Dense(self.input_dim + self.deep_width, 1, has_bias=False)

    def interaction_logit(self, fields, dense):
        x0 = self.deep_input(fields, dense)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.output(ops.concat((x, self.deep(x0)), axis=1)).squeeze(-1)


class InteractingLayer(nn.Cell):
    """AutoInt's interacting layer: multi-head self-attention over the fields with a residual
    projection, out_m = ReLU(concat over heads of sum_k softmax_k(<Wq e_m, Wk e_k>) Wv e_k
    + Wres e_m); the scores are not scaled (paper and PyTorch code). Weights Normal(0.05) as in the
    PyTorch AutoInt. [B, F, D] -> [B, F, D]."""

    def __init__(self, dim, heads):
        super().__init__()
        # Wq, Wk, Wv and Wres as one [D, 4D] matmul
        self.projections = nn.Dense(dim, 4 * dim, has_bias=False, weight_init=Normal(0.05))
        self.softmax = nn.Softmax(axis=-1)
        self.heads = heads
        self.head_dim = dim // heads

    def split_heads(self, x, field_num):
        """[B, F, D] -> [B * heads, F, D / heads]"""
        return x.reshape(-1, field_num, self.heads, self.head_dim).transpose(0, 2, 1, 3).reshape(
            -1, field_num, self.head_dim)

    def construct(self, fields):
        field_num, dim = fields.shape[1], fields.shape[2]
        query, key, value, residual = ops.split(self.projections(fields), dim, axis=-1)
        query, key, value = (self.split_heads(query, field_num), self.split_heads(key, field_num),
                             self.split_heads(value, field_num))
        attention = self.softmax(batch_matmul_transposed(query, key))
        attended = ops.bmm(attention, value).reshape(-1, self.heads, field_num, self.head_dim)
        attended = attended.transpose(0, 2, 1, 3).reshape(-1, field_num, dim)
        return ops.relu(attended + residual)


class AutoInt(RankingModel):
    """AutoInt+ (the AutoInt paper's variant with an MLP beside the attention, as the PyTorch
    AutoInt): autoint_layers interacting layers over the field embeddings beside the MLP, one
    linear output over the flattened attention output and the MLP's output. The PyTorch AutoInt
    also adds a linear term over the fields, which the paper does not have."""

    def __init__(self, schema, config):
        super().__init__(schema, config)
        dim = config.sparse_embedding_dim
        self.attention = nn.SequentialCell([InteractingLayer(dim, config.autoint_heads)
                                            for _ in range(config.autoint_layers)])
        self.output = nn.Dense(self.field_num * dim + self.deep_width, 1, has_bias=False)

    def interaction_logit(self, fields, dense):
        attended = self.attention(fields)
        deep = self.deep(self.deep_input(fields, dense))
        return self.output(ops.concat((attended.reshape(attended.shape[0], -1), deep), axis=1)).squeeze(-1)


class FieldGate(nn.Cell):
    """COLD's SE block: a weight per field from all fields' embeddings, s = sigmoid(W [e_1, ..., e_F]
    + b), and each field scaled by its weight, e_i -> s_i * e_i. [B, F, D] -> [B, F, D]."""

    def __init__(self, field_num, dim):
        super().__init__()
        self.excitation = nn.Dense(field_num * dim, field_num)

    def construct(self, fields):
        gate = ops.sigmoid(self.excitation(fields.reshape(fields.shape[0], -1)))
        return fields * gate.expand_dims(-1)


class COLD(RankingModel):
    """COLD, a pre-ranking model in the paper's Table 2 that, unlike the tower models, cannot cache
    item vectors: the SE gate over every field (user and item), then the MLP over the gated
    embeddings and dense values together. The PyTorch COLD gates with FiBiNET's SENET instead
    (mean-squeezed fields, two ReLU layers, no sigmoid) and adds a linear term; this follows the
    COLD paper."""

    def __init__(self, schema, config):
        super().__init__(schema, config)
        self.gate = FieldGate(self.field_num, config.sparse_embedding_dim)
        self.deep_output = nn.Dense(self.deep_width, 1, has_bias=False)

    def interaction_logit(self, fields, dense):
        return self.deep_output(self.deep(self.deep_input(self.gate(fields), dense))).squeeze(-1)
