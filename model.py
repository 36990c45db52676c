"""IntTower and the Two-Tower baseline, composed from module.py and built from the feature schema
that get_dataset.py derives from the data (no vocabulary size is written here).

Inputs, in this order, one tensor per feature (the same names in every exported signature):
user tower: user_id, gender, age, occupation (int32 [B]), user_mean_rating (float32 [B]);
item tower: movie_id (int32 [B]), genres (int32 [B, max_genres], 0 = padding; absent with
--no-genres), item_mean_rating (float32 [B]).
"""
import mindspore as ms
from mindspore import nn, ops, Parameter, Tensor
from mindspore.common.initializer import Normal

import util
from get_dataset import ITEM_DENSE, ITEM_MULTI, ITEM_SPARSE, USER_DENSE, USER_SPARSE
from model_config import Config
from module import BatchNorm, CIRLoss, LightSE, dense_then_norm, maxsim_candidates, maxsim_score


def user_input_names(config):
    return USER_SPARSE + USER_DENSE


def item_input_names(config):
    return ITEM_SPARSE + (ITEM_MULTI if config.use_genres else ()) + ITEM_DENSE


def input_names(config):
    return user_input_names(config) + item_input_names(config)


class Tower(nn.Cell):
    """Embeddings -> Light-SE -> BatchNorm on the input -> (Dense, BatchNorm, ReLU, Dropout) per
    layer. Returns the first layer's input and every layer's output (x0, h1, ..., hL): FE-Block
    reads the outputs, or with fe_source="inputs" the inputs (x0, ..., h(L-1)).
    Inputs: the sparse ids, then the multi-valued ids (if any), then the dense values."""

    def __init__(self, vocab_sizes, multi_vocab_size, dense_num, config, lightse=True):
        super().__init__()
        dim = config.sparse_embedding_dim
        self.embeddings = nn.CellList([nn.Embedding(size, dim) for size in vocab_sizes])
        self.has_multi = multi_vocab_size > 0
        field_num = len(vocab_sizes) + int(self.has_multi)
        if self.has_multi:
            self.multi_embedding = nn.Embedding(multi_vocab_size, dim)
        self.lightse = LightSE(field_num) if config.use_lightse and lightse else nn.Identity()
        in_dim = field_num * dim + dense_num
        self.input_norm = BatchNorm(in_dim) if config.input_norm else None
        # the normalised input x0 is only needed explicitly when the FE-Block projects it
        self.keep_input = config.fe_source == "inputs"
        layers = []
        for size in config.mlp_layers:
            layers.append(nn.SequentialCell(nn.Dense(in_dim, size), BatchNorm(size), nn.ReLU(),
                                            nn.Dropout(p=1.0 - config.keep_rate)))
            in_dim = size
        self.layers = nn.CellList(layers)
        self.sparse_num = len(vocab_sizes)

    def pooled_multi(self, ids):
        """Mean of the embeddings of the non-padding ids (0 = padding)."""
        mask = (ids > 0).astype(ms.float32)
        # the masked sum as a [1, S] x [S, D] matmul per row: ReduceSum over the slot axis was 8x slower
        summed = ops.bmm(mask.expand_dims(1), self.multi_embedding(ids)).squeeze(1)
        return summed / ops.maximum(mask.sum(axis=-1, keepdims=True), 1.0)

    def construct(self, *features):
        fields = ()
        for embedding, ids in zip(self.embeddings, features[:self.sparse_num]):
            fields = fields + (embedding(ids),)
        if self.has_multi:
            fields = fields + (self.pooled_multi(features[self.sparse_num]),)
        field_embeddings = self.lightse(ops.stack(fields, axis=1))
        dense = ops.stack(features[self.sparse_num + int(self.has_multi):], axis=1)
        x = ops.concat((field_embeddings.reshape(field_embeddings.shape[0], -1), dense), axis=1)
        if self.training:
            if self.input_norm is not None:
                x = self.input_norm(x)
            outputs = (x,)
            for layer in self.layers:
                x = layer(x)
                outputs = outputs + (x,)
            return outputs
        # Inference: the BatchNorms folded into the Dense layers, so a layer is one matmul + bias +
        # ReLU (Dropout is the identity): the same function, 1.3x faster here (README, Speed).
        input_norm = self.input_norm
        if self.keep_input and input_norm is not None:
            x = input_norm(x)
            input_norm = None
        outputs = (x,)
        for layer in self.layers:
            x = ops.relu(dense_then_norm(layer[0], layer[1], x, input_norm))
            input_norm = None
            outputs = outputs + (x,)
        return outputs


class IntTower(nn.Cell):
    """IntTower (config.model == "inttower") or the Two-Tower baseline ("two_tower").

    Both score a (user, item) pair from the towers' "heads": IntTower's are FE-Block projections
    (every user layer -> head_num heads; the item's last layer -> head_num heads) scored by MaxSim;
    the baseline's are the last layers themselves, one head each, where MaxSim is the dot product.
    So `construct` == sigmoid(score(user_heads(...), item_heads(...))) for both, which is what
    serving (user tower once + cached item heads) relies on.
    """

    def __init__(self, schema, config):
        super().__init__()
        vocab = schema["vocab"]
        self.user_tower = Tower([vocab[name] for name in USER_SPARSE], 0, len(USER_DENSE), config)
        self.item_tower = Tower([vocab[name] for name in ITEM_SPARSE],
                                vocab[ITEM_MULTI[0]] if config.use_genres else 0, len(ITEM_DENSE), config,
                                lightse=config.item_lightse)
        self.user_input_num = len(user_input_names(config))
        self.two_tower = config.model == "two_tower"
        if not self.two_tower:
            # the user tensors the FE-Block projects, by index into the tower's (x0, h1, ..., hL)
            layer_num = len(config.mlp_layers)
            self.fe_indices = tuple(range(1, layer_num + 1) if config.fe_source == "outputs" else range(layer_num))
            if config.fe_layers == "last":
                self.fe_indices = self.fe_indices[-1:]
            sizes = [self.user_tower.layers[0][0].in_channels] + list(config.mlp_layers)
            fe_init = Normal(config.fe_init_std)
            self.user_fe = nn.CellList([nn.Dense(sizes[i], config.feblock_size, weight_init=fe_init)
                                        for i in self.fe_indices])
            self.user_fe_relu = config.user_fe_activation == "relu"
            self.item_fe = nn.Dense(config.mlp_layers[-1], config.feblock_size, weight_init=fe_init)
            self.head_num = config.head_num
            self.head_dim = config.feblock_size // config.head_num
        self.bias = Parameter(Tensor([0.0], ms.float32), name="bias")
        self.cir = CIRLoss(config.cir_temperature)
        # the paper's Two-Tower baseline is trained with BCE alone
        self.cir_weight = 0.0 if self.two_tower else config.cir_weight
        self.l2_embedding = config.l2_embedding
        self.embedding_tables = ms.ParameterTuple(p for p in self.trainable_params() if "embedding_table" in p.name)

    def split_heads(self, x):
        return x.reshape(x.shape[0], self.head_num, self.head_dim)

    def user_heads_from_layers(self, user_layers):
        if self.two_tower:
            return user_layers[-1].expand_dims(1)
        heads = ()
        for projection, index in zip(self.user_fe, self.fe_indices):
            projected = projection(user_layers[index])
            if self.user_fe_relu:
                projected = ops.relu(projected)
            heads = heads + (self.split_heads(projected),)
        return ops.concat(heads, axis=1)

    def item_heads_from_layers(self, item_layers):
        if self.two_tower:
            return item_layers[-1].expand_dims(1)
        return self.split_heads(self.item_fe(item_layers[-1]))

    def user_heads(self, *user_features):
        """User features -> the stacked heads of all user layers, [B, U, d]."""
        return self.user_heads_from_layers(self.user_tower(*user_features))

    def item_heads(self, *item_features):
        """Item features -> the item's heads, [B, V, d]."""
        return self.item_heads_from_layers(self.item_tower(*item_features))

    def score_candidates(self, user_heads, item_heads):
        """One user's heads [U, d] against N items' cached heads [N, V, d] -> N probabilities."""
        return ops.sigmoid(maxsim_candidates(user_heads, item_heads) + self.bias)

    def logits_and_representations(self, *features):
        user_layers = self.user_tower(*features[:self.user_input_num])
        item_layers = self.item_tower(*features[self.user_input_num:])
        score = maxsim_score(self.user_heads_from_layers(user_layers), self.item_heads_from_layers(item_layers))
        return score + self.bias, user_layers[-1], item_layers[-1]

    def construct(self, *features):
        """All user then all item features (model.input_names order) -> click probability [B]."""
        return ops.sigmoid(self.logits_and_representations(*features)[0])

    def loss(self, labels, *features):
        """BCE + cir_weight * CIR (+ L2 on the embedding tables if configured)."""
        logits, user_rep, item_rep = self.logits_and_representations(*features)
        loss = ops.binary_cross_entropy_with_logits(logits, labels)
        if self.cir_weight > 0:
            loss = loss + self.cir_weight * self.cir(user_rep, item_rep, labels)
        if self.l2_embedding > 0:
            for table in self.embedding_tables:
                loss = loss + self.l2_embedding * (table * table).sum()
        return loss


class MethodCell(nn.Cell):
    """One IntTower method ("user_heads", "item_heads" or "score_candidates") as a Cell of its own:
    what export.py writes for serving, and a Cell whose set_train reaches the towers' BatchNorm
    and Dropout (calling a sub-cell directly may reuse a graph compiled in the other mode)."""

    def __init__(self, net, method: str):
        super().__init__(auto_prefix=False)
        self.net = net
        self.method = method

    def construct(self, *inputs):
        return getattr(self.net, self.method)(*inputs)


def model_from_checkpoint(path: str):
    """Rebuild the network a checkpoint was trained as, from the config and feature schema it
    carries, and load its weights. -> (net, config, meta). Bad or mismatched files: UsageError."""
    params, meta = util.load_checkpoint(path)
    try:
        config = Config(**meta["config"])
        schema = meta["schema"]
        net = IntTower(schema, config)
    except (KeyError, TypeError, ValueError) as err:
        raise util.UsageError(f"checkpoint {path} carries a config or schema this code cannot rebuild ({err}); "
                              "retrain with `python train.py`") from None
    util.load_parameters(net, params, path)
    net.set_train(False)
    return net, config, meta
