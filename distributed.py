"""
distributed.py: training on several processes (torchrun), one per GPU. FSDP2 shards every transformer block (and
the root) across the ranks; each rank samples from its own full copy of the weights; the loss normaliser and the
logged diagnostics are reduced over the ranks. A single process (WORLD == 1) never touches torch.distributed:
every function here is then the identity or a no-op, and training runs exactly as train.py reads.

    RANK, WORLD      this process's rank and the number of processes (set by dist_init)
    dist_init        pick the device; under torchrun join the process group (nccl on GPU, gloo on CPU)
    shard            FSDP2 per block, bf16 compute with fp32 gradient reduction on GPU
    Replica          the sampler's full copy of the sharded weights, refreshed one parameter at a time
    frozen_copy      the KL reference, sharded like the policy, copied shard by shard
    global_normaliser, all_mean, all_gather, barrier: the collectives the RL step and the logs need

Simplifications:
 1. Data parallel only (FSDP2 = ZeRO-3-style sharding); no tensor, pipeline or expert parallelism: MoE experts are
    sharded with their block like any other weight.
 2. No separate inference engine: every rank decodes its rollouts with a full copy of the weights (bf16 on GPU).
 3. Each rank takes whole prompt groups (prompts_per_step / W each), so group advantages need no communication.

Shape letters (README legend): B batch rows, T positions, W ranks (world size).
"""
from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist

import checkpoint
import grpo
from model import Transformer

RANK, WORLD = 0, 1


def dist_init(pref: str) -> torch.device:
    """Pick the device; under torchrun (WORLD_SIZE > 1) also join the process group (nccl on GPU, gloo on CPU)."""
    global RANK, WORLD
    cuda = torch.cuda.is_available() and pref != "cpu"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        RANK, WORLD = dist.get_rank(), dist.get_world_size()
        if cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
    return torch.device("cuda" if cuda else "cpu")


def shard(model: Transformer) -> Transformer:
    """FSDP2 (fully_shard) per transformer block, then the root; bf16 compute with fp32 gradient reduction on
    GPU. Parameters stay fp32 shards (the optimizer's master copy). A no-op in a single process."""
    if WORLD == 1:
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    on_gpu = next(model.parameters()).is_cuda
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if on_gpu
          else MixedPrecisionPolicy())
    for block in model.layers:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def all_mean(x: float) -> float:
    """Mean of a float over the ranks where it is defined (a NaN diagnostic, e.g. the entropy of a rank whose
    responses were all dropped, is absent, not zero); the float itself in a single process."""
    if WORLD == 1:
        return x
    t = torch.tensor([0.0 if math.isnan(x) else x, 0.0 if math.isnan(x) else 1.0], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0] / t[1]) if t[1] > 0 else float("nan")


def all_gather(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] in a single process)."""
    if WORLD == 1:
        return [obj]
    out = [None] * WORLD
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if WORLD > 1:
        dist.barrier()


def global_normaliser(batch: dict, gcfg) -> float | None:
    """Under FSDP the loss weights must divide by the GLOBAL count (loss tokens for token-level aggregation,
    responses otherwise), divided by the world size because the gradient all-reduce averages ranks."""
    if WORLD == 1:
        return None
    m = grpo.loss_mask(batch["response_mask"], batch["rewards"], batch["truncated"], gcfg)[:, 1:]  # (B, T)
    count = m.sum() if gcfg.token_level else (m.sum(1) > 0).sum()
    count = count.double().reshape(1)
    dist.all_reduce(count)
    return float(count) / WORLD


class Replica:
    """The weights the sampler uses. A single process samples from the training model itself. Under FSDP each
    rank samples from its own full copy (bf16 on GPU; fp32 on CPU, where bf16 matmuls are slow without AMX and
    sampling then matches the one-process run), so ranks can decode different numbers of steps without waiting
    on each other's all-gathers. The copy is allocated once without initialisation (meta device) and refreshed
    after every update one parameter at a time: gather it (in the copy's dtype), copy it in, free it. No full
    state dict is ever built."""

    def __init__(self, model):
        self.model, self.copy = model, None

    def get(self) -> Transformer:
        if WORLD == 1:
            return self.model
        device = next(self.model.parameters()).to_local().device
        if self.copy is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
            self.copy = checkpoint.empty_model(self.model.cfg, dtype, device)
        mine = self.copy.state_dict(keep_vars=True)
        with torch.no_grad():
            for name, t in self.model.state_dict(keep_vars=True).items():
                if name == "lm_head.weight" and self.model.cfg.tie_embeddings:
                    continue  # the embedding, already copied
                mine[name].copy_(checkpoint.full(t, mine[name].dtype))  # collective: every rank, same order
        return self.copy.eval()


def frozen_copy(model) -> Transformer:
    """A frozen copy of model (the KL reference), sharded like it. Under FSDP it is built on the meta device,
    sharded, allocated, and each rank copies its own shards: nothing is gathered."""
    if WORLD == 1:
        import copy
        return copy.deepcopy(model).requires_grad_(False).eval()
    device = next(model.parameters()).to_local().device
    with torch.device("meta"):
        ref = Transformer(model.cfg)
    ref = shard(ref).to_empty(device=device)
    ours, theirs = dict(ref.named_parameters()), dict(model.named_parameters())
    assert ours.keys() == theirs.keys(), "frozen_copy: parameters differ after sharding"
    with torch.no_grad():
        for name, p in theirs.items():
            ours[name].to_local().copy_(p.to_local())
        refbufs = dict(ref.named_buffers())
        for name, b in model.named_buffers():
            refbufs[name].copy_(b)
    return ref.requires_grad_(False).eval()
