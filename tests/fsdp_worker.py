"""Worker for tests/test_fsdp.py: the same training steps run by 1 process (python fsdp_worker.py ...) or by N
ranks (torchrun --nproc_per_node N fsdp_worker.py ...) through train.py's FSDP code path, on CPU with gloo.

    fsdp_worker.py train OUT     two pretraining steps + one GRPO step on fixed global batches, then a
                                 checkpoint, then one more GRPO step; writes OUT/result.json, OUT/state.safetensors;
                                 checks the sampling replica and the frozen reference against the model
    fsdp_worker.py resume OUT    load OUT/ckpt (written by any number of ranks), run the last GRPO step again;
                                 writes OUT/resumed.json, OUT/resumed.safetensors
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import grpo  # noqa: E402
import checkpoint  # noqa: E402
import distributed  # noqa: E402
import train  # noqa: E402
from model import ModelConfig, Transformer  # noqa: E402

V = 64


def global_rollouts(seed: int) -> dict:
    """4 prompts x G=4 responses with ragged lengths and mixed rewards: (B, L) tokens and masks."""
    g = torch.Generator().manual_seed(seed)
    B, L, P = 16, 24, 6
    tokens = torch.randint(0, V, (B, L), generator=g)  # (B, L)
    ends = torch.randint(P + 2, L + 1, (B,), generator=g)  # (B,)
    pos = torch.arange(L)[None, :]  # (1, L)
    mask = (pos >= P) & (pos < ends[:, None])  # (B, L)
    rewards = torch.randint(0, 2, (B,), generator=g).float()  # (B,)
    rewards[:4] = 1.0  # one group with equal rewards (zero advantage)
    return {"tokens": tokens, "response_mask": mask, "rewards": rewards,
            "truncated": torch.zeros(B, dtype=torch.bool)}


def local(batch: dict) -> dict:
    per = batch["tokens"].shape[0] // distributed.WORLD
    return {k: v[distributed.RANK * per:(distributed.RANK + 1) * per] for k, v in batch.items()}


def grpo_step(model, opt, gcfg, seed: int) -> float:
    batch = local(global_rollouts(seed))
    diag = grpo.rl_step(model, opt, batch, gcfg, normaliser=distributed.global_normaliser(batch, gcfg))
    return distributed.all_mean(diag["loss"])  # each rank holds its share of the global loss, times WORLD


def full_state(model) -> dict:
    """The whole state dict (gathered tensor by tensor under FSDP), for comparisons."""
    return {n: checkpoint.full(t).clone() for n, t in model.state_dict().items()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def main():
    mode, out = sys.argv[1], sys.argv[2]
    distributed.dist_init("cpu")
    torch.manual_seed(0)
    model = distributed.shard(Transformer(ModelConfig.from_preset("tiny-moe", vocab_size=V)))
    opt = train.make_optimizer(model, 1e-2, 0.1)
    gcfg = grpo.GRPOConfig(group_size=4, token_level=True, micro_batch=2, clip_high=0.28)
    from safetensors.torch import save_file
    if mode == "train":
        g = torch.Generator().manual_seed(1)
        batch = torch.randint(0, V, (4, 17), generator=g)  # (B, T+1) the global pretraining batch
        losses = [train.pretrain_step(model, opt, batch[distributed.RANK::distributed.WORLD], 1e-2) for _ in range(2)]
        ref = distributed.frozen_copy(model)  # the KL reference, copied shard by shard
        replica = distributed.Replica(model)
        diffs = [max_diff(full_state(replica.get()), full_state(model))]
        grpo_losses = [grpo_step(model, opt, gcfg, seed=2)]
        diffs.append(max_diff(full_state(replica.get()), full_state(model)))  # refreshed after the update
        train.save_checkpoint(os.path.join(out, "ckpt"), model, opt, {"step": 3})
        grpo_losses.append(grpo_step(model, opt, gcfg, seed=3))
        diffs.append(max_diff(full_state(replica.get()), full_state(model)))
        state = full_state(model)
        ref_moved = max_diff(full_state(ref), state)  # the reference stays at the pretrained weights
        if distributed.RANK == 0:
            json.dump({"pretrain": losses, "grpo": grpo_losses, "world": distributed.WORLD, "replica_diff": diffs,
                       "ref_vs_model": ref_moved, "fused": opt.defaults.get("fused")},
                      open(os.path.join(out, "result.json"), "w"))
            save_file(state, os.path.join(out, "state.safetensors"))
    elif mode == "resume":
        ckpt = os.path.join(out, "ckpt")
        checkpoint.load_weights(model, ckpt)
        train.load_optimizer(model, opt, ckpt)
        loss = grpo_step(model, opt, gcfg, seed=3)
        state = full_state(model)
        if distributed.RANK == 0:
            json.dump({"grpo": [loss], "world": distributed.WORLD}, open(os.path.join(out, "resumed.json"), "w"))
            save_file(state, os.path.join(out, "resumed.safetensors"))
    if distributed.WORLD > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
