"""Run by tests/test_distributed.py under msrun: this worker's share of module.CIRLoss on its rows
of a fixed global batch, and the gradients of that share with respect to its rows' user and item
representations, saved to <out>/rank<r>.npz."""
import os
import sys

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn
from mindspore.communication import get_group_size, get_rank, init

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from module import CIRLoss  # noqa: E402

GLOBAL_BATCH, WIDTH, TEMPERATURE = 16, 8, 0.07


def global_batch():
    """Representations and labels; the first worker's rows hold 3 positives, the second's 5."""
    rng = np.random.default_rng(0)
    labels = np.array([1, 0, 1, 0, 0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 1, 0], np.float32)
    return (rng.normal(size=(GLOBAL_BATCH, WIDTH)).astype(np.float32),
            rng.normal(size=(GLOBAL_BATCH, WIDTH)).astype(np.float32), labels)


class LossAndGrads(nn.Cell):
    def __init__(self):
        super().__init__()
        self.cir = CIRLoss(TEMPERATURE)
        self.value_and_grad = ms.value_and_grad(self.cir, grad_position=(0, 1))

    def construct(self, user_rep, item_rep, labels):
        return self.value_and_grad(user_rep, item_rep, labels)


if __name__ == "__main__":
    ms.set_context(mode=ms.GRAPH_MODE)
    init()
    rank, size = get_rank(), get_group_size()
    rows = slice(rank * GLOBAL_BATCH // size, (rank + 1) * GLOBAL_BATCH // size)
    loss, (user_grad, item_grad) = LossAndGrads()(*(Tensor(array[rows]) for array in global_batch()))
    np.savez(os.path.join(sys.argv[1], f"rank{rank}.npz"), loss=loss.asnumpy(), user_grad=user_grad.asnumpy(),
             item_grad=item_grad.asnumpy())
