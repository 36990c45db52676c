"""IntTower and the Two-Tower baseline, composed from module.py and built from the feature schema
that get_dataset.py derives from the data (no vocabulary size is written here); their field
embeddings, towers and loss are what baselines.py builds the paper's other baselines from.

Inputs, in this order, one tensor per feature (the same names in every exported signature):
user tower: user_id, gender, age, occupation (int32 [B]), user_mean_rating (float32 [B]);
item tower: movie_id (int32 [B]), genres (int32 [B, max_genres], 0 = padding; absent with
--no-genres), item_mean_rating (float32 [B]).
"""
import mindspore as ms
from mindspore import nn, ops, Parameter, Tensor
from mindspore.common.initializer import Normal

from get_dataset import ITEM_DENSE, ITEM_MULTI, ITEM_SPARSE, USER_DENSE, USER_SPARSE
from module import BatchNorm, CIRLoss, LightSE, folded_dense, matmul_transposed, maxsim_candidates, maxsim_score


def user_input_names(config):
    return USER_SPARSE + USER_DENSE


def item_input_names(config):
    return ITEM_SPARSE + (ITEM_MULTI if config.use_genres else ()) + ITEM_DENSE


def input_names(config):
    return user_input_names(config) + item_input_names(config)


def tower_vocabularies(schema, config):
    """The user's and the item's (sparse vocabulary sizes, multi-valued vocabulary size or 0), in
    input order: what each side's FieldEmbeddings is built from."""
    vocab = schema["vocab"]
    return (([vocab[name] for name in USER_SPARSE], 0),
            ([vocab[name] for name in ITEM_SPARSE], vocab[ITEM_MULTI[0]] if config.use_genres else 0))


def embedding_tables(net):
    """Every embedding table of `net`: what l2_embedding penalises."""
    return ms.ParameterTuple(p for p in net.trainable_params() if "embedding_table" in p.name)


def bce_with_l2(logits, labels, tables, l2_weight):
    """Mean binary cross-entropy of the logits, + l2_weight x the squared embedding tables."""
    loss = ops.binary_cross_entropy_with_logits(logits, labels)
    if l2_weight > 0:
        for table in tables:
            loss = loss + l2_weight * (table * table).sum()
    return loss


def dense_layers(in_dim, sizes, keep_rate, batch_norm):
    """An MLP as one SequentialCell per layer: Dense -> BatchNorm (if batch_norm) -> ReLU -> Dropout."""
    layers = []
    for size in sizes:
        norm = (BatchNorm(size),) if batch_norm else ()
        layers.append(nn.SequentialCell(nn.Dense(in_dim, size), *norm, nn.ReLU(), nn.Dropout(p=1.0 - keep_rate)))
        in_dim = size
    return layers


class FieldEmbeddings(nn.Cell):
    """Every field embedded: one embedding per sparse field, and the mean of the multi-valued field's
    embeddings (if any), stacked as [B, fields, dim]; and the dense values stacked as [B, dense].
    Inputs: the sparse ids, then the multi-valued ids (if any), then the dense values."""

    def __init__(self, vocab_sizes, multi_vocab_size, dim):
        super().__init__()
        self.embeddings = nn.CellList([nn.Embedding(size, dim) for size in vocab_sizes])
        self.sparse_num = len(vocab_sizes)
        self.has_multi = multi_vocab_size > 0
        if self.has_multi:
            self.multi_embedding = nn.Embedding(multi_vocab_size, dim)
        self.field_num = self.sparse_num + int(self.has_multi)

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
        return ops.stack(fields, axis=1), ops.stack(features[self.field_num:], axis=1)


class Tower(FieldEmbeddings):
    """Field embeddings -> Light-SE -> BatchNorm on the input -> (Dense, BatchNorm, ReLU, Dropout) per
    layer. Returns the first layer's input and every layer's output (x0, h1, ..., hL): FE-Block
    reads the outputs, or with fe_source="inputs" the inputs (x0, ..., h(L-1)).
    Inputs: the sparse ids, then the multi-valued ids (if any), then the dense values.
    `extra_inputs` widens the first layer for vectors appended to the embedded features
    (outputs_with_extra: DAT's augmented vectors). A Tower is its FieldEmbeddings rather than holding
    one, so its parameter names (embeddings.0.embedding_table, ...) stay those that checkpoints and
    the PyTorch peer use."""

    def __init__(self, vocab_sizes, multi_vocab_size, dense_num, config, lightse=True, extra_inputs=0):
        super().__init__(vocab_sizes, multi_vocab_size, config.sparse_embedding_dim)
        self.lightse = LightSE(self.field_num) if config.use_lightse and lightse else nn.Identity()
        in_dim = self.field_num * config.sparse_embedding_dim + dense_num + extra_inputs
        self.input_norm = BatchNorm(in_dim) if config.input_norm else None
        # the normalised input x0 is only needed explicitly when the FE-Block projects it
        self.keep_input = config.fe_source == "inputs"
        self.folded = False
        self.layers = nn.CellList(dense_layers(in_dim, config.mlp_layers, config.keep_rate, batch_norm=True))

    def tower_input(self, *features):
        """The features -> the first layer's input: Light-SE'd field embeddings, flattened, then the
        dense values."""
        fields, dense = super().construct(*features)
        fields = self.lightse(fields)
        return ops.concat((fields.reshape(fields.shape[0], -1), dense), axis=1)

    def layer_outputs(self, x):
        """The first layer's input -> (x0, h1, ..., hL)."""
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
        # Folded once for good by fold_batchnorm (export), else on every call.
        input_norm = self.input_norm
        if self.keep_input and input_norm is not None:  # the FE-Block projects the normalised input
            x = input_norm(x)
            input_norm = None
        outputs = (x,)
        for layer in self.layers:
            if self.folded:
                x = ops.relu(layer[0](x))
            else:
                weight, bias = folded_dense(layer[0], layer[1], input_norm)
                x = ops.relu(ops.bias_add(matmul_transposed(x, weight), bias))
            input_norm = None
            outputs = outputs + (x,)
        return outputs

    def fold_batchnorm(self):
        """Fold every BatchNorm into its Dense once, in place, for export: the per-call folding
        costs more than the layers themselves for one user (0.6 ms against 0.2 ms here). From then
        on the tower computes its inference-mode function only."""
        input_norm = None if self.keep_input else self.input_norm
        for layer in self.layers:
            weight, bias = folded_dense(layer[0], layer[1], input_norm)
            layer[0].weight.set_data(weight)
            layer[0].bias.set_data(bias)
            input_norm = None
        self.folded = True

    def construct(self, *features):
        return self.layer_outputs(self.tower_input(*features))

    def outputs_with_extra(self, extra, *features):
        """(x0, h1, ..., hL) with `extra` [B, extra_inputs] appended to the first layer's input."""
        return self.layer_outputs(ops.concat((self.tower_input(*features), extra), axis=1))


class IntTower(nn.Cell):
    """IntTower (config.model == "inttower"), or a two-tower model scored on its towers' last layers
    (the Two-Tower baseline, "two_tower"; baselines.py's DSSM and DAT build on it).

    Both score a (user, item) pair from the towers' "heads": IntTower's are FE-Block projections
    (every user layer -> head_num heads; the item's last layer -> head_num heads) scored by MaxSim;
    the baseline's are the last layers themselves, one head each, where MaxSim is the dot product.
    So `construct` == sigmoid(score(user_heads(...), item_heads(...))) for both, which is what
    serving (user tower once + cached item heads) relies on.
    `lightse` False builds towers without Light-SE; `extra_inputs` widens their first layer (Tower).
    """

    def __init__(self, schema, config, lightse=True, extra_inputs=0):
        super().__init__()
        (user_sparse, user_multi), (item_sparse, item_multi) = tower_vocabularies(schema, config)
        self.user_tower = Tower(user_sparse, user_multi, len(USER_DENSE), config, lightse, extra_inputs)
        self.item_tower = Tower(item_sparse, item_multi, len(ITEM_DENSE), config, lightse and config.item_lightse,
                                extra_inputs)
        self.user_input_num = len(user_input_names(config))
        self.fe_block = config.model == "inttower"
        if self.fe_block:
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
        # CIR is IntTower's: the paper's Two-Tower baseline is trained with BCE alone
        self.cir_weight = config.cir_weight if self.fe_block else 0.0
        self.l2_embedding = config.l2_embedding
        self.embedding_tables = embedding_tables(self)

    def split_heads(self, x):
        return x.reshape(x.shape[0], self.head_num, self.head_dim)

    def user_heads_from_layers(self, user_layers):
        if not self.fe_block:
            return user_layers[-1].expand_dims(1)
        heads = ()
        for projection, index in zip(self.user_fe, self.fe_indices):
            projected = projection(user_layers[index])
            if self.user_fe_relu:
                projected = ops.relu(projected)
            heads = heads + (self.split_heads(projected),)
        return ops.concat(heads, axis=1)

    def item_heads_from_layers(self, item_layers):
        if not self.fe_block:
            return item_layers[-1].expand_dims(1)
        return self.split_heads(self.item_fe(item_layers[-1]))

    def user_layers(self, *user_features):
        """User features -> the user tower's (x0, h1, ..., hL)."""
        return self.user_tower(*user_features)

    def item_layers(self, *item_features):
        """Item features -> the item tower's (x0, h1, ..., hL)."""
        return self.item_tower(*item_features)

    def user_heads(self, *user_features):
        """User features -> the stacked heads of all user layers, [B, U, d]."""
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
        """All user then all item features (model.input_names order) -> click probability [B]."""
        return ops.sigmoid(self.logits_and_representations(*features)[0])

    def representation_loss(self, labels, user_rep, item_rep, *features):
        """The loss on the towers' last layers beside BCE: cir_weight * CIR."""
        if self.cir_weight > 0:
            return self.cir_weight * self.cir(user_rep, item_rep, labels)
        return 0.0

    def loss(self, labels, *features):
        """BCE + cir_weight * CIR (+ L2 on the embedding tables if configured)."""
        logits, user_rep, item_rep = self.logits_and_representations(*features)
        loss = bce_with_l2(logits, labels, self.embedding_tables, self.l2_embedding)
        return loss + self.representation_loss(labels, user_rep, item_rep, *features)


def fold_batchnorm(net):
    """Fold every tower's BatchNorms into its Dense layers, in place (Tower.fold_batchnorm)."""
    for _, cell in net.cells_and_names():
        if isinstance(cell, Tower):
            cell.fold_batchnorm()


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

