"""Running on many processes: the data-parallel world that ``torchrun`` starts.

``torchrun --nproc-per-node N -m snncc eval ...`` (and ``finetune``) starts N copies of snncc with the environment
variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; across machines,
torchrun's rendezvous sets the same variables on every node. :meth:`World.from_env` reads them and joins the
process group through ``torch.distributed`` (gloo on CPU, nccl on CUDA). Without them it is the world of one
process, and nothing here imports torch.

Images are sharded in contiguous blocks, rank ``r`` of ``n`` taking ``x[r * N // n : (r + 1) * N // n]``, so that
gathering the per-image results of the ranks in rank order rebuilds the single-process order exactly. One rank
(rank 0, :attr:`World.is_writer`) prints and writes files.

A process that joined the group must leave it (:func:`leave`) before the interpreter shuts down: gloo's worker
threads otherwise outlive the objects they hold, and the process dies with SIGABRT ("terminate called without an
active exception") after its work is done, a quarter of the runs on this machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from snncc.errors import SnnccError

#: The variables torchrun sets for every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


#: Whether this process joined the process group itself (:meth:`World.from_env`), and so must :func:`leave` it.
_JOINED = False


class DistributedError(SnnccError):
    """The process group could not be joined, or the ranks disagree."""


def leave(finished: bool = True) -> None:
    """Leave the process group that :meth:`World.from_env` joined, if it did; nothing otherwise. ``finished``: the
    command ended normally, so the ranks first wait for each other (a barrier), and no rank tears down its side
    of a connection that another rank still reads from. After an error the barrier is skipped: the other ranks
    may never reach it."""
    global _JOINED
    if not _JOINED:
        return
    import torch.distributed as dist

    _JOINED = False
    if not dist.is_initialized():
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel processes: ``rank`` of ``size``, ``local_rank`` on its node,
    the torch.distributed ``backend`` (None for a single process)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @classmethod
    def from_env(cls, device: str = "cpu") -> World:
        """The world torchrun describes in the environment, joined; a single process when ``WORLD_SIZE`` is unset
        or 1. ``device`` picks the backend: gloo for ``cpu``, nccl for ``cuda``."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
        if missing:
            raise DistributedError(f"WORLD_SIZE={size} but {', '.join(missing)} is not set; start snncc with "
                                   "torchrun (torchrun --nproc-per-node N -m snncc ...)")
        import torch.distributed as dist

        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        if not dist.is_initialized():
            if backend == "nccl":
                import torch

                torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
            dist.init_process_group(backend=backend)
            global _JOINED
            _JOINED = True
        return cls(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=int(os.environ["LOCAL_RANK"]),
                   backend=backend)

    @property
    def is_writer(self) -> bool:
        """Whether this process prints reports and writes files (rank 0)."""
        return self.rank == 0

    def shard(self, count: int) -> slice:
        """The contiguous block of ``count`` items this rank works on; the blocks of all ranks, in rank order,
        cover ``range(count)`` once. Sizes differ by at most one."""
        return slice(self.rank * count // self.size, (self.rank + 1) * count // self.size)

    def gather(self, array: np.ndarray, axis: int = 0) -> np.ndarray:
        """Every rank's ``array`` concatenated along ``axis`` in rank order, on every rank. The arrays may differ
        in length along ``axis`` (uneven shards) but must agree in every other dimension and in dtype."""
        if self.size == 1:
            return array
        import torch
        import torch.distributed as dist

        array = np.ascontiguousarray(np.moveaxis(array, axis, 0))
        lengths = self._all(torch.tensor([array.shape[0]], dtype=torch.int64))
        longest = int(max(lengths))
        padded = np.zeros((longest, *array.shape[1:]), dtype=array.dtype)
        padded[:array.shape[0]] = array
        tensor = self._to_device(torch.from_numpy(padded))
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor)
        joined = np.concatenate([p.cpu().numpy()[:int(n)] for p, n in zip(parts, lengths)])
        return np.moveaxis(joined, 0, axis)

    def total(self, value: float) -> float:
        """The sum of ``value`` over the ranks, on every rank."""
        if self.size == 1:
            return value
        import torch

        return float(sum(self._all(torch.tensor([value], dtype=torch.float64))))

    def sum_gradients(self, parameters) -> None:
        """Replace every parameter's gradient by its sum over the ranks (one all-reduce of all gradients flattened
        into one buffer; a missing gradient counts as zero). Each rank scales its loss by its share of the global
        batch, so the sum is the gradient of the global batch's mean loss."""
        if self.size == 1:
            return
        import torch
        import torch.distributed as dist

        parameters = [p for p in parameters if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for p in parameters:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    def _all(self, tensor) -> list:
        import torch
        import torch.distributed as dist

        tensor = self._to_device(tensor)
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(parts, tensor)
        return [p.item() for p in parts]

    def _to_device(self, tensor):
        return tensor.cuda() if self.backend == "nccl" else tensor
