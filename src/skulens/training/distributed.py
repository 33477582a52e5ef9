"""Multi-process training and catalog jobs under ``torchrun``: one code path for 1 or N processes.

``torchrun --nproc_per_node=N -m skulens train ...`` starts N copies of the CLI with RANK,
WORLD_SIZE and LOCAL_RANK (and the rendezvous address) in the environment. :func:`setup` reads
them; without them (a plain ``skulens train``) it returns a one-process context whose helpers are
no-ops, so the trainer has no separate single-process branch.

Collectives use tensors only: ``torch.distributed``'s ``*_object`` helpers pickle, and skulens
never unpickles anything.
"""

from __future__ import annotations

import atexit
import datetime
import json
import logging
import os
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from skulens.errors import SkulensError
from skulens.runtime import resolve_device

log = logging.getLogger(__name__)
T = TypeVar("T")
# A rank that dies makes torchrun stop the others; this only bounds a wait that nothing ends.
TIMEOUT = datetime.timedelta(minutes=30)


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside torchrun."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise SkulensError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None
    if world < 1 or not 0 <= rank < world:
        raise SkulensError(f"RANK={rank} does not fit WORLD_SIZE={world}")
    return rank, world, local


@dataclass(frozen=True)
class Context:
    """Where this process stands in the job. ``world_size == 1``: a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # -- data --------------------------------------------------------------------------------
    def shard(self, items: Sequence[T], seed: int, key: Callable[[T], int] | None = None) -> list[T]:
        """This rank's share of ``items``: shuffled by ``seed``, then dealt round-robin within each
        ``key`` group (e.g. the class label), so every shard holds about 1/N of every class."""
        items = list(items)
        if not self.distributed:
            return items
        order = list(range(len(items)))
        random.Random(seed).shuffle(order)
        if key is not None:
            order.sort(key=lambda i: key(items[i]))  # stable: shuffled within each group
        mine = [items[i] for i in order[self.rank :: self.world_size]]
        # Every rank draws the same epoch permutation of positions; dealt class by class, position j
        # of every share would hold the same class, and each global batch would repeat its classes
        # N times (measured: clearly slower learning). A per-rank order breaks that pairing.
        random.Random(seed * 7_919 + self.rank).shuffle(mine)
        return mine

    def owns(self, name: str) -> bool:
        """Whether this rank handles the item called ``name`` (a stable hash, same on every rank)."""
        return zlib.crc32(name.encode()) % self.world_size == self.rank

    def split_batch(self, batch_size: int | None, default: int) -> tuple[int, int]:
        """(global batch, per-process batch). ``--batch-size`` is the global batch, so N processes
        take the same optimizer steps (and learning-rate schedule) as one."""
        if batch_size is None:
            batch_size = -(-default // self.world_size) * self.world_size
        if batch_size % self.world_size:
            raise SkulensError(
                f"--batch-size {batch_size} does not split evenly over {self.world_size} "
                f"processes: use a multiple of {self.world_size}"
            )
        return batch_size, batch_size // self.world_size

    # -- collectives (no-ops on one process) -------------------------------------------------
    def _reduce(self, values: Sequence[float], op) -> list[float]:
        if not self.distributed:
            return [float(v) for v in values]
        # float64 on the backend's device: NCCL reduces only CUDA tensors
        device = self.device if self.backend == "nccl" else torch.device("cpu")
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=op)
        return t.cpu().tolist()

    def sum(self, values: Sequence[float]) -> list[float]:
        return self._reduce(values, dist.ReduceOp.SUM if self.distributed else None)

    def min(self, value: float) -> float:
        return self._reduce([value], dist.ReduceOp.MIN if self.distributed else None)[0]

    def gather_json(self, value) -> list:
        """Every rank's ``value`` (anything JSON can hold), in rank order, on every rank."""
        if not self.distributed:
            return [value]
        device = self.device if self.backend == "nccl" else torch.device("cpu")
        data = torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8).to(device)
        sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64, device=device))
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros(longest, dtype=torch.uint8, device=device)
        padded[: len(data)] = data
        chunks = [torch.zeros(longest, dtype=torch.uint8, device=device) for _ in range(self.world_size)]
        dist.all_gather(chunks, padded)
        return [json.loads(bytes(c[: int(n.item())].cpu().tolist()).decode()) for c, n in zip(chunks, sizes)]

    def barrier(self) -> None:
        if self.distributed and self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        elif self.distributed:
            dist.barrier()

    def broadcast_state(self, *modules: nn.Module | None) -> None:
        """Give every rank rank 0's parameters and buffers (BatchNorm statistics drift apart, as each
        rank normalises its own batches), so all ranks evaluate and save the same model."""
        if not self.distributed:
            return
        with torch.no_grad():
            for module in modules:
                if module is None:
                    continue
                for tensor in module.state_dict().values():
                    # gloo wants contiguous CPU tensors (the model is channels_last; it may sit on a GPU)
                    on_device = self.backend == "nccl" or tensor.device.type == "cpu"
                    if on_device and tensor.is_contiguous():
                        dist.broadcast(tensor, src=0)
                        continue
                    staged = tensor.contiguous() if on_device else tensor.cpu().contiguous()
                    dist.broadcast(staged, src=0)
                    tensor.copy_(staged)

    def seed_epoch(self, seed: int, epoch: int) -> None:
        """Augmentation randomness for ranks > 0: their own stream, a function of (seed, rank, epoch)
        so a resume at an epoch boundary replays it. Rank 0 keeps the single-process stream."""
        if self.rank > 0:
            torch.manual_seed((seed * 1_000_003 + self.rank * 7_919 + epoch) % (2**63))

    # -- the model ---------------------------------------------------------------------------
    def train_forward(self, model: nn.Module) -> Callable[..., torch.Tensor]:
        """``call(fn, *args) -> fn(model, *args)``, through DistributedDataParallel when distributed.
        The training forward must run inside DDP's own forward, or DDP's gradient hooks never arm
        and the ranks' gradients are silently not averaged; ``fn`` picks which forward (plain
        logits, logits + attribute heads), so one wrapper serves them all."""
        if not self.distributed:
            return lambda fn, *args: fn(model, *args)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(_Call(model), device_ids=ids)

    def sync_batchnorm(self, model: nn.Module) -> nn.Module:
        """BatchNorm over the global batch, as one process computes it. Without it each process
        normalises only its share, which measurably costs accuracy when shares are small (BENCHMARKS.md,
        "Scale out"). CUDA: PyTorch's SyncBatchNorm; CPUs (gloo): :class:`GlooSyncBatchNorm`."""
        if not self.distributed:
            return model
        if self.device.type == "cuda":
            from timm.layers import convert_sync_batchnorm  # keeps timm's fused BatchNorm + activation layers

            return convert_sync_batchnorm(model)
        return GlooSyncBatchNorm.convert(model)


class _AllGather(torch.autograd.Function):
    """Every process's tensor, stacked in rank order; the gradient of a process's own tensor sums
    what every process's loss contributes to it."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are summed over every process (PyTorch's SyncBatchNorm
    runs on GPUs only). The statistics go through an all-gather with a gradient, so the backward pass
    also sums the statistics' gradients over the processes, as one process over the whole batch
    would compute them. Evaluation mode is plain BatchNorm."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 3, 4, 5):
            raise ValueError(f"expected 2D to 5D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        channels, dims = x.shape[1], [0, *range(2, x.dim())]
        xf = x.float()
        shape = [1, channels] + [1] * (x.dim() - 2)
        # Each process's count, mean and sum of squared deviations, gathered in one exchange and
        # combined exactly (Chan et al.); E[x^2] - E[x]^2 would cancel catastrophically for channels
        # whose mean dwarfs their spread.
        count = torch.full((1,), x.numel() / channels, dtype=torch.float32, device=x.device)
        local_mean = xf.mean(dims)
        local_m2 = ((xf - local_mean.view(shape)) ** 2).sum(dims)
        parts = _AllGather.apply(torch.cat([local_mean, local_m2, count]))
        counts = parts[:, -1:]
        n = counts.sum()
        mean = (parts[:, :channels] * counts).sum(0) / n
        m2 = parts[:, channels : 2 * channels].sum(0) + (counts * (parts[:, :channels] - mean) ** 2).sum(0)
        var = m2 / n
        centred = xf - mean.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = var.detach() * (n / (n - 1).clamp_min(1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Every BatchNorm layer in ``module`` as this class, with its weights, statistics and mode.
        timm's fused BatchNorm + activation layers (``BatchNormAct2d``) keep their dropout and activation."""
        out = module
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlooSyncBatchNorm):
            fused = hasattr(module, "act") and hasattr(module, "drop")
            kind = GlooSyncBatchNormAct if fused else GlooSyncBatchNorm
            out = kind(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
                device=module.running_mean.device if module.running_mean is not None else None,
            )
            if fused:
                out.drop, out.act = module.drop, module.act
            if module.affine:
                with torch.no_grad():
                    out.weight = module.weight
                    out.bias = module.bias
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.train(module.training)
        for name, child in module.named_children():
            out.add_module(name, cls.convert(child))
        return out


class GlooSyncBatchNormAct(GlooSyncBatchNorm):
    """The synced form of timm's ``BatchNormAct2d``: BatchNorm, then its dropout and activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


class _Call(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., torch.Tensor], *args):
        return fn(self.model, *args)


_CONTEXT: Context | None = None


def setup(device: str = "auto", backend: str | None = None) -> Context:
    """The job's context, joining torchrun's process group on first call (idempotent).

    NCCL when this process trains on a GPU (one GPU per process: ``cuda:LOCAL_RANK``), gloo on
    CPUs; ``backend`` forces one (catalog jobs use gloo: they only reduce a few counters)."""
    global _CONTEXT
    rank, world, local = env_world()
    if world == 1:
        return Context(device=resolve_device(device))
    if _CONTEXT is not None:
        return _CONTEXT
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        if local >= torch.cuda.device_count():
            raise SkulensError(
                f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) here: "
                f"use --nproc_per_node <= the number of GPUs"
            )
        resolved = torch.device("cuda", local)
        torch.cuda.set_device(resolved)
    backend = backend or ("nccl" if resolved.type == "cuda" else "gloo")
    if not dist.is_available():
        raise SkulensError("this PyTorch build has no torch.distributed")
    if not dist.is_initialized():
        try:
            dist.init_process_group(
                backend, rank=rank, world_size=world, timeout=TIMEOUT, device_id=resolved if backend == "nccl" else None
            )
        except (RuntimeError, ValueError) as exc:
            raise SkulensError(
                f"cannot join the {world}-process job as rank {rank} ({backend}): "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
        atexit.register(shutdown)
    if rank > 0:
        # One voice: rank 0 logs and draws progress bars; the others only warn.
        logging.getLogger("skulens").setLevel(logging.WARNING)
    _CONTEXT = Context(rank, world, local, resolved, backend)
    log.info("rank %d of %d on %s (%s)", rank, world, resolved, backend)
    return _CONTEXT


def shutdown() -> None:
    global _CONTEXT
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = None


def is_main() -> bool:
    """True on rank 0 (and outside torchrun); readable before :func:`setup`."""
    return env_world()[0] == 0
