"""torchrun / DDP plumbing: one call to set up, one to tear down, one collective the trainers need.

  torchrun --nproc_per_node=8 -m training.worldmodel.train ...      # one node
  torchrun --nnodes=2 --node_rank=R --rdzv_endpoint=HOST:29500 ...  # multi-node

Without torchrun's environment variables everything degrades to a single process (world_size 1).
Backend: nccl on CUDA, gloo on CPU.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
  rank: int
  local_rank: int
  world_size: int
  device: torch.device
  is_main: bool

  @property
  def distributed(self) -> bool:
    return self.world_size > 1


def _env_int(name: str, default: int) -> int:
  v = os.environ.get(name)
  if v is None or v == "":
    return default
  try:
    return int(v)
  except ValueError:
    raise ValueError(f"environment variable {name}={v!r} is not an integer") from None


def setup_distributed(device: str | None = None) -> DistInfo:
  """Read RANK/LOCAL_RANK/WORLD_SIZE (set by torchrun), init the process group when world_size > 1,
  pick the device (cuda:LOCAL_RANK when CUDA is available unless device='cpu')."""
  rank, local_rank, world = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0), _env_int("WORLD_SIZE", 1)
  if world < 1 or not 0 <= rank < world:
    raise ValueError(f"invalid torchrun environment: RANK={rank} WORLD_SIZE={world}")
  use_cuda = torch.cuda.is_available() and device != "cpu"
  if use_cuda:
    dev = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    torch.cuda.set_device(dev)
  else:
    dev = torch.device("cpu" if device is None else device)
  if world > 1 and not dist.is_initialized():
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
  return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=dev, is_main=rank == 0)


def cleanup() -> None:
  """Destroy the process group. Callers drop their references to the DDP-wrapped model (a trainer, its task) first:
  DDP's reducer holds the process group, which then outlives destroy_process_group and is torn down at interpreter
  exit instead, where gloo's threads can abort the process ("terminate called without an active exception", seen
  after a finished torchrun run). The collection here frees those objects, which refer to each other in cycles."""
  if dist.is_available() and dist.is_initialized():
    gc.collect()
    dist.destroy_process_group()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
  """Mean of `tensor` over all ranks (returns a new tensor; identity when not distributed)."""
  t = tensor.detach().clone()
  if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= dist.get_world_size()
  return t


def barrier() -> None:
  if dist.is_available() and dist.is_initialized():
    dist.barrier()
