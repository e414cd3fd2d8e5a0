"""
reward_model.py: the learned reward of R1's last stage. A transformer with a scalar head, trained on preference
pairs with the Bradley-Terry loss, that scores responses to general prompts (writing, factual QA, translation,
self-cognition, requests to decline) where no rule can check the answer.

DeepSeek-R1 (arXiv 2501.12948, section 2.3.4) keeps neural rewards away from reasoning prompts: a learned reward can
be gamed ("reward hacking") and retraining it costs compute. For general prompts it uses reward models of human
preference, one for helpfulness judged on the final summary, one for harmlessness judged on the whole response.

    rm = RewardModel(backbone)                        # backbone: a model.Transformer (e.g. the base model's copy)
    losses = train_reward_model(rm, pairs, steps=200, batch_size=16, lr=3e-4)
    acc = pair_accuracy(rm, held_out_pairs)           # share of pairs where chosen outscores rejected
    r = rm.score(token_lists)                         # (B,) one scalar per sequence

Simplifications relative to the paper:
 1. The preference labels come from a hidden rule (r1.py's general tasks), not from human raters; the rule can
    then be logged beside the reward model's score during RL to show over-optimisation, which human labels hide.
 2. One scalar head on the final token's hidden state (the usual InstructGPT-style reward model); no margin term,
    no ensembles, no length normalisation.
 3. The backbone is a copy of a small model of ours; the reward model trains every weight (no frozen trunk).

Shape letters: B sequences (or pairs), T positions, C model dim.
"""
from __future__ import annotations

import random

import torch
import torch.distributed
import torch.nn as nn
import torch.nn.functional as F


class RewardModel(nn.Module):
    """backbone (a model.Transformer) + a linear head from the last real token's hidden state to one scalar."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.cfg.dim, 1)
        nn.init.zeros_(self.head.weight)  # every response starts at reward 0: no preference before training
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) right-padded, lengths (B,) real tokens per row -> rewards (B,)."""
        h = self.backbone(tokens, return_hidden=True)  # (B, T, C)
        last = h[torch.arange(tokens.shape[0], device=tokens.device), lengths - 1]  # (B, C)
        return self.head(last.float()).sum(-1)  # (B,) (a sum over one output: a new tensor, not a view)

    @torch.no_grad()
    def score(self, sequences: list[list[int]], pad_id: int = 0, batch_size: int = 64) -> torch.Tensor:
        """Token-id lists (prompt + response, any lengths) -> rewards (B,) on the CPU, in eval mode."""
        was_training = self.training
        self.eval()
        out = [self(*right_pad(sequences[i:i + batch_size], pad_id, self.head.weight.device))
               for i in range(0, len(sequences), batch_size)]
        self.train(was_training)
        return torch.cat(out).float().cpu() if out else torch.zeros(0)  # (B,)


def right_pad(sequences: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> tokens (B, T) right-padded with pad_id, lengths (B,)."""
    if any(len(s) == 0 for s in sequences):
        raise ValueError("right_pad: every sequence needs at least one token")
    T = max(len(s) for s in sequences)
    tokens = torch.full((len(sequences), T), pad_id, dtype=torch.long)  # (B, T)
    for i, s in enumerate(sequences):
        tokens[i, :len(s)] = torch.tensor(s)
    lengths = torch.tensor([len(s) for s in sequences])  # (B,)
    return tokens.to(device), lengths.to(device)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected), averaged over pairs. chosen, rejected: (B,) rewards -> scalar.
    Under the Bradley-Terry model P(chosen preferred) = sigmoid(r_chosen - r_rejected); this is its negative
    log-likelihood. It only sees differences, so the reward's offset is free (the zero-initialised head starts it
    at 0)."""
    return -F.logsigmoid(chosen - rejected).mean()


def train_reward_model(rm: RewardModel, pairs: list[tuple[list[int], list[int]]], steps: int, batch_size: int,
                       lr: float, pad_id: int = 0, seed: int = 0, log=print, rank: int = 0,
                       world: int = 1) -> list[float]:
    """Fit rm on (chosen ids, rejected ids) pairs, each prompt + response, for `steps` AdamW steps of batch_size
    random pairs. Returns the loss per step. Under FSDP (world > 1, rm sharded) every rank draws the same
    global batch and trains on its slice (pairs rank, rank + world, ...); the loss is the mean over ranks."""
    if not pairs:
        raise ValueError("train_reward_model needs at least one preference pair")
    if batch_size % world:
        raise ValueError(f"reward model batch_size ({batch_size}) must be divisible by the processes ({world})")
    device = rm.head.weight.device
    opt = torch.optim.AdamW(rm.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = random.Random(seed)
    rm.train()
    losses = []
    for step in range(steps):
        batch = [pairs[rng.randrange(len(pairs))] for _ in range(batch_size)][rank::world]  # this rank's slice
        B = len(batch)
        tokens, lengths = right_pad([c for c, _ in batch] + [r for _, r in batch], pad_id, device)  # (2B, T), (2B,)
        rewards = rm(tokens, lengths)  # (2B,)
        loss = bradley_terry_loss(rewards[:B], rewards[B:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
        opt.step()
        losses.append(loss.item() if world == 1 else _mean_over_ranks(loss.item(), world))
        if step % 50 == 0 or step == steps - 1:
            log(f"[reward model] step {step:5d} loss {losses[-1]:.4f}")
    return losses


def _mean_over_ranks(x: float, world: int) -> float:
    t = torch.tensor([x], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return float(t) / world


def pair_accuracy(rm: RewardModel, pairs: list[tuple[list[int], list[int]]], pad_id: int = 0) -> float:
    """Share of (chosen, rejected) pairs where the chosen sequence gets the strictly higher reward."""
    if not pairs:
        return float("nan")
    chosen = rm.score([c for c, _ in pairs], pad_id)  # (B,)
    rejected = rm.score([r for _, r in pairs], pad_id)  # (B,)
    return (chosen > rejected).float().mean().item()
