"""The three IntTower building blocks as MindSpore Cells: Light-SE, the FE-Block scorer and the
CIR contrastive loss (Li et al., CIKM 2022); and the pieces they stand on: a BatchNorm written for
CPU speed (with its inference form folded into a Dense), and the all-gather CIR needs when
training data parallel."""
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.communication import get_group_size, get_rank


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


# x @ weight.T without materialising the transpose (as nn.Dense does)
matmul_transposed = ops.MatMul(transpose_b=True)


def mean_over_last(x):
    """[B, F, D] averaged over D -> [B, F], as a matmul: ReduceMean over a short last axis was 10x
    slower on CPU."""
    _, fields, dim = x.shape
    return ops.matmul(x.reshape(-1, dim), ops.full((dim, 1), 1.0 / dim, dtype=x.dtype)).reshape(-1, fields)


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
    similarity = ops.bmm(user_heads, item_heads.transpose(0, 2, 1))
    return similarity.max(axis=-1).sum(axis=-1)


def maxsim_candidates(user_heads, item_heads):
    """The same score for one user against N candidates (the pre-ranking form: item heads come
    from a cache). user_heads [U, d], item_heads [N, V, d] -> [N].
    Written for the CPU (README, Speed): one [N*V, d] x [d, U] matmul on the untransposed user
    heads; the max over item heads as an elementwise maximum of V column blocks of the [N, V*U]
    similarities, and the sum over user heads as a matmul: reductions over a middle or a short
    axis were several times slower (3.5 against 1.4 ms for 10,000 candidates, dynamic N)."""
    user_num, head_num, dim = user_heads.shape[0], item_heads.shape[1], item_heads.shape[2]
    similarity = matmul_transposed(item_heads.reshape(-1, dim), user_heads).reshape(-1, head_num * user_num)
    best = similarity[:, :user_num]
    for head in range(1, head_num):
        best = ops.maximum(best, similarity[:, head * user_num:(head + 1) * user_num])
    return ops.matmul(best, ops.ones((user_num, 1), best.dtype)).squeeze(1)


def l2_normalize(x, eps=1e-12):
    # By hand: ops.L2Normalize's CPU backward is ~500x slower (MINDSPORE_NOTES.md).
    return x / ops.sqrt((x * x).sum(axis=-1, keepdims=True) + eps)


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
    cannot overflow for tau >= model_config.MIN_CIR_TEMPERATURE, so no max-subtraction is needed.
    Measured in the full train step at batch 2048 (same process, alternating): 23.5k samples/s,
    against 18.8k for a masked logsumexp. A batch without positive rows contributes 0.

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
