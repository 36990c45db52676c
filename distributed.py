"""Data-parallel training under msrun: this process's place among the workers, and what
train.py's loop needs the workers to agree on. Outside msrun it is one worker of one, and every
method is a no-op or an identity.

    msrun --worker_num=2 --local_worker_num=2 --master_port=8118 --log_dir=msrun_logs --join=True train.py ...

Each worker takes batch_size / workers rows of every global batch; gradients are averaged over the
workers (train.TrainStep) and CIR's in-batch negatives span the global batch (module.CIRLoss), so a
step is the one-process step on the global batch, except that BatchNorm normalises each worker's
rows by their own statistics (its moving statistics are averaged over the workers every epoch).
"""
import os

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from module import AllGather


class AllSum(nn.Cell):
    """The element-wise sum of a tensor over the workers (AllReduce; on CPU it sums only)."""

    def __init__(self):
        super().__init__()
        self.reduce = ops.AllReduce()

    def construct(self, x):
        return self.reduce(x)


def worker_rows(order: np.ndarray, batch_size: int, rank: int, size: int) -> np.ndarray:
    """Worker `rank`'s rows of each full global batch of `order`, batch after batch: global batch i
    is order[i * batch_size:(i + 1) * batch_size] whatever the number of workers, and the worker
    takes its slice of batch_size / size rows of it. The short last batch is dropped."""
    batches = len(order) // batch_size
    return order[:batches * batch_size].reshape(batches, size, -1)[:, rank].reshape(-1)


def under_msrun() -> bool:
    return "MS_ROLE" in os.environ  # msrun sets it for its workers and its scheduler


def worker_count() -> int:
    """The number of workers, known before they start (msrun's --worker_num)."""
    return int(os.environ.get("MS_WORKER_NUM", 1)) if under_msrun() else 1


class Workers:
    """rank and size of this worker. Under msrun (MS_ROLE is set) MindSpore's communication is
    started first: msrun also runs the script as its scheduler, in which init() serves the cluster
    and never returns, so nothing before it should have side effects. Call after ms.set_device."""

    def __init__(self):
        self.rank, self.size = 0, 1
        if not under_msrun():
            return
        from mindspore.communication import get_group_size, get_local_rank_size, get_rank, init
        init()
        self.rank, self.size = get_rank(), get_group_size()
        # the machine's cores shared among the workers on it (default threading would oversubscribe)
        ms.device_context.cpu.op_tuning.threads_num(max(1, (os.cpu_count() or 1) // get_local_rank_size()))
        self.all_sum, self.all_gather = AllSum(), AllGather()

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """The worker that writes checkpoints, metrics, logs and progress bars."""
        return self.rank == 0

    def rows(self, order: np.ndarray, batch_size: int) -> np.ndarray:
        return worker_rows(order, batch_size, self.rank, self.size)

    def sum(self, values) -> np.ndarray:
        """The float32 values summed over the workers."""
        values = np.asarray(values, np.float32)
        return self.all_sum(Tensor(values)).asnumpy() if self.distributed else values

    def any(self, flag: bool) -> bool:
        """Whether any worker's flag is set; every worker gets the same answer at the same step."""
        return bool(self.sum([float(flag)])[0] > 0)

    def from_main(self, values) -> np.ndarray:
        """The main worker's float32 values on every worker (the others pass anything shaped alike)."""
        return self.sum(np.asarray(values, np.float32) * float(self.main))

    def barrier(self) -> None:
        self.sum([0.0])

    def average_statistics(self, net) -> None:
        """Every non-trained parameter (BatchNorm's moving statistics, which each worker updates
        from its own rows) set to its mean over the workers, so every worker holds the same network."""
        if self.distributed:
            for param in net.get_parameters():
                if not param.requires_grad:
                    param.set_data(Tensor(self.sum(param.asnumpy()) / self.size))

    def checksums(self, net) -> list:
        """A checksum of every worker's parameters, in rank order: equal when the workers hold the
        same network."""
        values = np.concatenate([p.asnumpy().ravel() for p in net.get_parameters()]).astype(np.float64)
        checksum = np.array([values.sum(), np.abs(values).sum(), (values * values).sum()], np.float32)
        if self.distributed:
            checksum = self.all_gather(Tensor(checksum[None])).asnumpy()
        return checksum.reshape(self.size, -1).tolist()
