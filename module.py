"""The building blocks every model is made of, as MindSpore Cells.

- CPU-fast primitives: a BatchNorm written with elementwise ops (and its inference form folded into
  a Dense), field means and L2 normalisation by hand (README, Speed says why).
- Shared layers: the field embeddings of features.py, an MLP, the two-tower models' Tower, the
  binary cross-entropy loss with optional L2 on the embedding tables.
- IntTower's three blocks (Li et al., CIKM 2022): Light-SE, the FE-Block scorer (MaxSim) and the CIR
  contrastive loss, with the all-gather CIR needs when training data parallel.
"""
import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.communication import get_group_size, get_rank


# ---------------------------------------------------------------------------------------------
# CPU-fast primitives

class BatchNorm(nn.Cell):
    """BatchNorm over the batch axis of [B, C], the same computation as nn.BatchNorm1d (biased batch
    variance to normalise, unbiased in the moving variance, momentum 0.9, eps 1e-5; the same
    parameter names, so checkpoints and the PyTorch peer map one to one), written with elementwise
    ops: MindSpore's CPU BatchNorm kernel and its gradient took 41% of a train step and 37% of
    inference time here (README, Speed)."""

    def __init__(self, channels: int, momentum: float = 0.9, eps: float = 1e-5):
        super().__init__()
        self.gamma = Parameter(Tensor(np.ones(channels, np.float32)), name="gamma")
        self.beta = Parameter(Tensor(np.zeros(channels, np.float32)), name="beta")
        self.moving_mean = Parameter(Tensor(np.zeros(channels, np.float32)), name="moving_mean", requires_grad=False)
        self.moving_variance = Parameter(Tensor(np.ones(channels, np.float32)), name="moving_variance",
                                         requires_grad=False)
        self.momentum = momentum
        self.eps = eps

    def construct(self, x):
        if self.training:
            # column sums as [1, B] x [B, C] matmuls and adds as BiasAdd: MindSpore's CPU ReduceMean over
            # the batch axis and broadcast Add were each several times slower (README, Speed)
            averaging = ops.full((1, x.shape[0]), 1.0 / x.shape[0], dtype=x.dtype)
            mean = ops.matmul(averaging, x).squeeze(0)
            centered = ops.bias_add(x, -mean)
            variance = ops.matmul(averaging, centered * centered).squeeze(0)
            unbiased = ops.stop_gradient(variance) * (x.shape[0] / max(x.shape[0] - 1, 1))
            ops.assign(self.moving_mean, self.momentum * self.moving_mean
                       + (1 - self.momentum) * ops.stop_gradient(mean))
            ops.assign(self.moving_variance, self.momentum * self.moving_variance + (1 - self.momentum) * unbiased)
            return ops.bias_add(centered * (self.gamma * ops.rsqrt(variance + self.eps)), self.beta)
        scale, shift = self.affine()
        return ops.bias_add(x * scale, shift)

    def affine(self):
        """Inference mode as x * scale + shift (what a neighbouring Dense can absorb)."""
        scale = self.gamma / ops.sqrt(self.moving_variance + self.eps)  # ONNX export has no Rsqrt
        return scale, self.beta - self.moving_mean * scale


def folded_dense(dense, norm, input_norm=None):
    """(weight [out, in], bias [out]) of one Dense computing [input_norm ->] dense -> norm in
    inference mode: both BatchNorms folded into the Dense's weights."""
    scale, shift = norm.affine()
    weight = dense.weight * scale.expand_dims(1)
    bias = dense.bias * scale + shift
    if input_norm is not None:
        in_scale, in_shift = input_norm.affine()
        bias = bias + ops.matmul(weight, in_shift.expand_dims(1)).squeeze(1)
        weight = weight * in_scale
    return weight, bias


# x @ weight.T without materialising the transpose (as nn.Dense does), and its batched form
matmul_transposed = ops.MatMul(transpose_b=True)
batch_matmul_transposed = ops.BatchMatMul(transpose_b=True)


def mean_over_last(x):
    """[B, F, D] averaged over D -> [B, F], as a matmul: ReduceMean over a short last axis was 10x
    slower on CPU."""
    _, fields, dim = x.shape
    return ops.matmul(x.reshape(-1, dim), ops.full((dim, 1), 1.0 / dim, dtype=x.dtype)).reshape(-1, fields)


def l2_normalize(x, eps=1e-12):
    # By hand: ops.L2Normalize's backward is very slow on CPU (README, Speed).
    return x / ops.sqrt((x * x).sum(axis=-1, keepdims=True) + eps)



# ---------------------------------------------------------------------------------------------
# Shared layers

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
    """Every field of `features` (features.py entries, in input order) embedded: one embedding per
    sparse field and the mean of the multi-valued field's embeddings (if any), stacked as
    [B, fields, dim]; and the dense values stacked as [B, dense]. Vocabulary sizes come from the
    schema. Inputs: the features' tensors, in their order (sparse, multi-valued, then dense)."""

    def __init__(self, features, schema, dim):
        super().__init__()
        vocab = schema["vocab"]
        self.embeddings = nn.CellList([nn.Embedding(vocab[f.name], dim) for f in features if f.kind == "sparse"])
        self.sparse_num = len(self.embeddings)
        multi = [f for f in features if f.kind == "multi"]
        self.has_multi = bool(multi)
        if self.has_multi:
            self.multi_embedding = nn.Embedding(vocab[multi[0].name], dim)
        self.field_num = self.sparse_num + int(self.has_multi)
        self.dense_num = len(features) - self.field_num

    def pooled_multi(self, ids):
        """Mean of the embeddings of the non-padding ids (0 = padding)."""
        mask = (ids > 0).astype(ms.float32)
        # the masked sum as a [1, S] x [S, D] matmul per row: ReduceSum over the slot axis is slow on CPU
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
    Inputs: the tower's features (features.tower_features). `extra_inputs` widens the first layer
    for vectors appended to the embedded features (outputs_with_extra: DAT's augmented vectors).
    A Tower is its FieldEmbeddings rather than holding one, so its parameter names
    (embeddings.0.embedding_table, ...) stay those that checkpoints and the PyTorch peer use."""

    def __init__(self, features, schema, config, lightse=True, extra_inputs=0):
        super().__init__(features, schema, config.sparse_embedding_dim)
        self.lightse = LightSE(self.field_num) if lightse else nn.Identity()
        in_dim = self.field_num * config.sparse_embedding_dim + self.dense_num + extra_inputs
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
        # ReLU (Dropout is the identity): the same function, faster (README, Speed). Folded once
        # for good by fold_batchnorm (export), else on every call.
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
        """Fold every BatchNorm into its Dense once, in place, for export: for one user the per-call
        folding costs more than the layers themselves (README, Speed). From then on the tower
        computes its inference-mode function only."""
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


# ---------------------------------------------------------------------------------------------
# IntTower's blocks

class LightSE(nn.Cell):
    """Light-SE field attention: Z = mean of each field's embedding, A = softmax(Dense(Z)) over
    fields, out = E + E * A. embeddings: [B, fields, dim] -> [B, fields, dim]."""

    def __init__(self, field_num: int):
        super().__init__()
        self.excitation = nn.Dense(field_num, field_num)
        self.softmax = nn.Softmax(axis=-1)

    def construct(self, embeddings):
        field_summary = mean_over_last(embeddings)
        attention = self.softmax(self.excitation(field_summary))
        return embeddings + embeddings * attention.expand_dims(-1)


def maxsim_score(user_heads, item_heads):
    """FE-Block score of paired rows: for each user head the best-matching item head's dot
    product, summed over user heads (which span every user layer).
    user_heads [B, U, d], item_heads [B, V, d] -> [B]."""
    similarity = batch_matmul_transposed(user_heads, item_heads)
    return similarity.max(axis=-1).sum(axis=-1)


def maxsim_candidates(user_heads, item_heads):
    """The same score for one user against N candidates (the pre-ranking form: item heads come
    from a cache). user_heads [U, d], item_heads [N, V, d] -> [N].
    Written for the CPU: of the forms measured (README, Where the time goes) ops.dense on the 3-D
    cache was the fastest; a 3-D matmul broadcasts the user heads, and slicing per item head is slow."""
    return ops.dense(item_heads, user_heads).max(axis=1).sum(axis=1)


class AllGather(nn.Cell):
    """Every worker's rows, stacked in rank order (data parallel under msrun), with the gradient
    of an all-gather: the sum over workers of the upstream gradient of this worker's rows.
    MindSpore's own AllGather gradient calls ReduceScatter, which has no CPU kernel, so the
    gradient is written as AllReduce + this worker's slice."""

    def __init__(self):
        super().__init__()
        self.gather = ops.AllGather()
        self.reduce = ops.AllReduce()
        self.rank = get_rank()

    def construct(self, x):
        return self.gather(x)

    def bprop(self, x, out, dout):
        rows = x.shape[0]
        return (self.reduce(dout)[self.rank * rows:(self.rank + 1) * rows],)


class CIRLoss(nn.Cell):
    """Contrastive Interaction Regularisation: in-batch InfoNCE between the L2-normalised
    last-layer user and item representations of the batch's positive rows; each positive
    user's own item is its positive, the other positive rows' items its negatives.

    Shapes stay static in graph mode: the softmax denominator is exp(logits) @ labels, which keeps
    only positive rows' items, and only positive rows enter the mean. Since |logit| <= 1/tau, exp
    cannot overflow for tau >= model_config.MIN_CIR_TEMPERATURE, so no max-subtraction is needed
    (a masked logsumexp made the train step slower: README, Speed). A batch without positive rows
    contributes 0.

    Data parallel (under msrun), the batch is the global one: a worker's positive users are
    scored against every worker's items (gathered), and its share of the global mean is scaled
    by the number of workers, so that the average over workers of their losses and gradients
    (train.py averages gradients) is the one-process loss on the global batch and its gradient."""

    def __init__(self, temperature: float):
        super().__init__()
        self.inverse_temperature = 1.0 / temperature
        self.workers = get_group_size()  # 1 unless train.py runs under msrun
        if self.workers > 1:
            self.gather_items = AllGather()
            self.gather_labels = ops.AllGather()
            self.sum_over_workers = ops.AllReduce()

    def construct(self, user_rep, item_rep, labels):
        user_rep = l2_normalize(user_rep) * self.inverse_temperature
        item_rep = l2_normalize(item_rep)
        all_items, all_labels, positives = item_rep, labels, labels.sum()
        if self.workers > 1:
            all_items = self.gather_items(item_rep)
            all_labels = ops.stop_gradient(self.gather_labels(labels))
            positives = ops.stop_gradient(self.sum_over_workers(positives))
        logits = ops.matmul(user_rep, all_items.transpose(1, 0))
        denominator = ops.matmul(ops.exp(logits), all_labels.expand_dims(1)).squeeze(1)
        # negative rows are dropped below; the + (1 - labels) keeps their log finite
        log_prob = (user_rep * item_rep).sum(axis=-1) - ops.log(denominator + (1.0 - labels))
        return -(log_prob * labels).sum() / ops.maximum(positives, 1.0) * self.workers
