"""Tests for grpo.py: advantages, clipping, k3 KL, every aggregation mode (by hand and under
micro-batching), the Dr. GRPO length bias, mu > 1, and the Triton kernel path (interpreter on CPU)."""
import copy
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpo  # noqa: E402
import kernels  # noqa: E402
from grpo import (GRPOConfig, _frozen_logprobs, aggregate, clipped_loss, constant_norm_weights,  # noqa: E402
                  group_advantages, grpo_loss, k3_kl, loss_mask, masked_mean, masked_normalize, micro_batches,
                  no_baseline_loss, per_token_loss, reinforce_loss, reinforce_with_baseline_loss, response_logprobs,
                  rl_step, sequence_mean_weights, sft_microbatch_step, token_mean_weights, token_weights)


class TinyLM(nn.Module):
    """Embedding -> causal running mean -> linear: a causal LM small enough for exact gradient tests.
    Optionally carries a MoE-style aux_loss and update_router_bias() to test rl_step's hooks into them."""

    def __init__(self, vocab=13, dim=8, aux=False):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)
        self.aux = aux
        self.bias_updates = 0

    def forward(self, tokens):
        h = self.embed(tokens)  # (B, T, C)
        h = h.cumsum(1) / torch.arange(1, tokens.shape[1] + 1)[:, None]  # (B, T, C) causal mean
        if self.aux:
            self.aux_loss = 0.1 * h[:, 0].pow(2).mean()  # a batch mean that padding does not change
        return self.head(torch.tanh(h))  # (B, T, V)

    def update_router_bias(self):
        self.bias_updates += 1


def make_rollouts(B=8, G=4, L=12, vocab=13, seed=0):
    """Random rows: prompt of 3..4 tokens, response of 1..L-prompt tokens, right padding with 0."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, vocab, (B, L), generator=g)  # (B, L)
    prompt = torch.randint(3, 5, (B,), generator=g)  # (B,)
    resp = torch.stack([torch.randint(1, L - int(p) + 1, (1,), generator=g)[0] for p in prompt])  # (B,)
    pos = torch.arange(L)[None]  # (1, L)
    response_mask = (pos >= prompt[:, None]) & (pos < (prompt + resp)[:, None])  # (B, L)
    tokens = tokens.masked_fill(pos >= (prompt + resp)[:, None], 0)  # (B, L)
    rewards = torch.randint(0, 3, (B,), generator=g).float()  # (B,)
    rewards[:G] = 1.0  # first group has zero spread
    truncated = resp == L - prompt  # (B,)
    return {"tokens": tokens, "response_mask": response_mask, "rewards": rewards, "truncated": truncated}


# ----------------------------------------------------------------------------- masked reductions

def test_masked_mean_hand_values():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # (B, T)
    mask = torch.tensor([[1, 1, 0], [0, 0, 1]], dtype=torch.bool)  # (B, T)
    assert masked_mean(x, mask).item() == pytest.approx(3.0)  # (1 + 2 + 6) / 3
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 6.0]))
    torch.testing.assert_close(masked_mean(x, mask, dim=0), torch.tensor([1.0, 2.0, 6.0]))
    empty = masked_mean(x, torch.zeros(2, 3, dtype=torch.bool))  # a mean over nothing is absent, not 0
    assert torch.isnan(empty)
    padded = x.masked_fill(~mask, float("inf"))  # (B, T) garbage outside the mask never leaks in
    assert masked_mean(padded, mask).item() == 3.0 and masked_normalize(padded, mask, 2.0).item() == 4.5


def test_masked_normalize_hand_values():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # (B, T)
    mask = torch.tensor([[1, 1, 0], [0, 0, 1]], dtype=torch.bool)  # (B, T)
    assert masked_normalize(x, mask, 2.0).item() == pytest.approx(4.5)  # (1 + 2 + 6) / 2
    torch.testing.assert_close(masked_normalize(x, mask, 2.0, dim=1), torch.tensor([1.5, 3.0]))
    torch.testing.assert_close(masked_normalize(x, mask, 4.0, dim=0), torch.tensor([0.25, 0.5, 1.5]))
    assert masked_normalize(x, torch.zeros(2, 3, dtype=torch.bool), 2.0).item() == 0.0


# ----------------------------------------------------------------------------- advantages

def test_group_advantages_zero_mean_unit_std_and_exact_zero_for_equal_groups():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.3, 0.7, 0.1, 0.9, 0.1, 0.1, 0.1, 0.1])  # (B,)
    adv = group_advantages(r, 4).view(3, 4)  # (P, G)
    torch.testing.assert_close(adv.mean(1), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(adv[:2].std(1, correction=0), torch.full((2,), 1.0), atol=1e-3, rtol=0)
    assert torch.equal(adv[2], torch.zeros(4))  # 0.1 * 4 / 4 != 0.1 in fp: must still be exactly 0
    plain = group_advantages(r, 4, std_norm=False).view(3, 4)  # (P, G)
    torch.testing.assert_close(plain[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    # hand value: group [1, 0] has mean .5, population std .5
    torch.testing.assert_close(group_advantages(torch.tensor([1.0, 0.0]), 2),
                               torch.tensor([0.5, -0.5]) / (0.5 + 1e-4))
    with pytest.raises(ValueError):
        group_advantages(torch.ones(5), 4)


def test_group_advantages_population_vs_unbiased_std_hand_values():
    """Group [1, 0, 0, 0]: mean .25, deviations [.75, -.25, -.25, -.25]. Population std sqrt(.75 / 4) = .433013;
    unbiased (Bessel, torch.std's default, what TRL / verl / OpenRLHF use) sqrt(.75 / 3) = .5; eps 1e-4."""
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])  # (B,) one group
    torch.testing.assert_close(group_advantages(r, 4), torch.tensor([1.731651, -0.577217, -0.577217, -0.577217]))
    torch.testing.assert_close(group_advantages(r, 4, unbiased=True),
                               torch.tensor([1.499700, -0.499900, -0.499900, -0.499900]))
    torch.testing.assert_close(group_advantages(r, 4, std_norm=False, unbiased=True),
                               torch.tensor([0.75, -0.25, -0.25, -0.25]))  # no std: the flag changes nothing


def test_equal_reward_group_gives_exactly_zero_policy_gradient():
    torch.manual_seed(0)
    ro = make_rollouts(B=8, G=4)
    model, cfg = TinyLM(), GRPOConfig(group_size=4)
    mask = ro["response_mask"][:, 1:]  # (B, T)
    targets = ro["tokens"][:, 1:].masked_fill(~mask, -100)  # (B, T)
    logp = response_logprobs(model, ro["tokens"][:, :-1], targets, cfg).logp  # (B, T)
    adv = group_advantages(ro["rewards"], 4)  # (B,)
    old = logp.detach() + 0.05 * torch.randn_like(logp)  # (B, T) off-policy: ratios != 1
    loss, diag = grpo_loss(logp[:4], old[:4], None, adv[:4], mask[:4], cfg)  # the equal group alone
    loss.backward(retain_graph=True)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())
    assert grpo.zero_spread(ro["rewards"][:4], 4) == 1.0 and grpo.zero_spread(ro["rewards"], 4) == 0.5
    model.zero_grad()
    grpo_loss(logp[4:], old[4:], None, adv[4:], mask[4:], cfg)[0].backward()  # the other group is not zero
    assert model.head.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- clipping and KL

def _grad_of_loss(ratios, adv, cfg):
    logp = torch.log(torch.tensor(ratios)).requires_grad_()  # (N,) with old_logp = 0
    n = logp.shape[0]
    mask = torch.ones(1, n, dtype=torch.bool)  # (1, N)
    loss, _ = grpo_loss(logp[None], torch.zeros(1, n), None, torch.tensor([adv]), mask, cfg)
    loss.backward()
    return loss, logp.grad


def test_clipping_blocks_gradient_only_in_the_clipped_direction():
    cfg = GRPOConfig(group_size=1, clip_low=0.2, clip_high=0.28)
    # A > 0: above 1 + clip_high the term is flat; below 1 - clip_low it still pulls up
    _, g = _grad_of_loss([1.4, 0.5], 1.0, cfg)
    assert g[0] == 0 and g[1] < 0
    # A < 0: below 1 - clip_low the term is flat; above 1 + clip_high it still pushes down
    _, g = _grad_of_loss([0.7, 1.5], -1.0, cfg)
    assert g[0] == 0 and g[1] > 0
    # asymmetric: 1.25 is inside [0.8, 1.28] so it still gets gradient (symmetric 0.2 would clip it)
    _, g = _grad_of_loss([1.25], 1.0, cfg)
    assert g[0] != 0
    assert _grad_of_loss([1.25], 1.0, GRPOConfig(group_size=1))[1][0] == 0
    # inside the range: loss and gradient equal the unclipped objective -mean(rho * A)
    ratios = [0.85, 1.0, 1.1, 1.27]
    for adv in (1.5, -0.7):
        loss, g = _grad_of_loss(ratios, adv, cfg)
        logp = torch.log(torch.tensor(ratios)).requires_grad_()  # (N,)
        ref = -(logp.exp() * adv).mean()
        ref.backward()
        torch.testing.assert_close(loss, ref)
        torch.testing.assert_close(g, logp.grad)


def test_clip_fraction_diagnostics():
    cfg = GRPOConfig(group_size=2)
    logp = torch.log(torch.tensor([[1.5, 1.0, 0.5], [0.5, 1.5, 1.0]]))  # (B, T) with old = 0
    mask = torch.ones(2, 3, dtype=torch.bool)  # (B, T)
    _, d = grpo_loss(logp, torch.zeros(2, 3), None, torch.tensor([1.0, -1.0]), mask, cfg)
    assert d["clip_frac_high"] == pytest.approx(1 / 6) and d["clip_frac_low"] == pytest.approx(1 / 6)
    assert "clip_low" not in d and "clip_high" not in d  # the names of the settings, not of the diagnostics
    assert d["ratio"] == pytest.approx(1.0)


def test_k3_kl_nonnegative_zero_when_equal_and_gradient_matches_definition():
    torch.manual_seed(0)
    logp = (-3 * torch.rand(64)).requires_grad_()  # (N,)
    ref = -3 * torch.rand(64)  # (N,)
    kl = k3_kl(logp, ref)  # (N,)
    assert (kl >= 0).all()
    assert torch.equal(k3_kl(ref, ref), torch.zeros(64))
    (g,) = torch.autograd.grad(kl.sum(), logp)
    p = logp.detach().exp().requires_grad_()  # (N,) definition in probabilities
    definition = ref.exp() / p - torch.log(ref.exp() / p) - 1  # (N,)
    (gp,) = torch.autograd.grad(definition.sum(), p)
    torch.testing.assert_close(kl, definition.detach())
    torch.testing.assert_close(g, gp * p.detach())  # chain rule: d/dlogp = p * d/dp
    torch.testing.assert_close(g, 1 - (ref - logp.detach()).exp())  # closed form
    # in the loss: A = 0 leaves beta * mean k3 (paper aggregation, one response)
    cfg = GRPOConfig(group_size=1, beta=0.1)
    mask = torch.ones(1, 64, dtype=torch.bool)  # (1, N)
    loss, d = grpo_loss(logp[None], logp.detach()[None], ref[None], torch.zeros(1), mask, cfg)
    torch.testing.assert_close(loss, 0.1 * kl.mean())
    assert d["kl"] == pytest.approx(kl.mean().item())


def test_clipped_loss_hand_values():
    """rho = [1.5, 0.5, 1.1], clip to [0.8, 1.2]. A = +1: -min(rho, clip(rho)) = [-1.2, -0.5, -1.1];
    A = -1: -min(-rho, -clip(rho)) = [1.5, 0.8, 1.1]."""
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1], [1.5, 0.5, 1.1]]))  # (B, T) with old_logp = 0
    out = clipped_loss(logp, torch.zeros(2, 3), torch.tensor([1.0, -1.0]), 0.2, 0.2)  # (B, T)
    torch.testing.assert_close(out, torch.tensor([[-1.2, -0.5, -1.1], [1.5, 0.8, 1.1]]))


def test_per_token_loss_adds_beta_k3_hand_values():
    """On-policy rho = 1, A = [2, -1]: clipped part [-2, 1]. The reference has half the policy's probability
    on token 0 (k3 = .5 - log .5 - 1 = .193147) and the same on token 1 (k3 = 0); beta = 0.1."""
    logp = torch.log(torch.tensor([[0.4, 0.3], [0.4, 0.3]]))  # (B, T)
    ref = torch.log(torch.tensor([[0.2, 0.3], [0.2, 0.3]]))  # (B, T)
    out = per_token_loss(logp, logp, torch.tensor([2.0, -1.0]), ref_logp=ref, beta=0.1)  # (B, T)
    torch.testing.assert_close(out, torch.tensor([[-2.0 + 0.0193147, -2.0], [1.0 + 0.0193147, 1.0]]))
    torch.testing.assert_close(per_token_loss(logp, logp, torch.tensor([2.0, -1.0]), ref_logp=ref),
                               torch.tensor([[-2.0, -2.0], [1.0, 1.0]]))  # beta = 0: the reference is unused
    with pytest.raises(ValueError, match="ref_logp"):
        per_token_loss(logp, logp, torch.tensor([2.0, -1.0]), beta=0.1)
    assert grpo.k3_kl is kernels.k3_kl  # one k3 definition (and one clamp) for grpo.py and kernels.py


def test_reinforce_losses_hand_values():
    """logp = log [.5, .25] per row; rewards [1, 0] (one group of 2). No baseline: A = r, so row 1 gets 0;
    group-mean baseline: A = [.5, -.5]. -A log p: log .5 = -.693147, log .25 = -1.386294."""
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.25]]))  # (B, T)
    rewards = torch.tensor([1.0, 0.0])  # (B,)
    torch.testing.assert_close(no_baseline_loss(logp, rewards), torch.tensor([[0.693147, 1.386294], [0.0, 0.0]]))
    torch.testing.assert_close(reinforce_with_baseline_loss(logp, rewards, 2),
                               torch.tensor([[0.346574, 0.693147], [-0.346574, -0.693147]]))
    torch.testing.assert_close(reinforce_loss(logp, torch.tensor([2.0, 0.0]))[0], torch.tensor([1.386294, 2.772589]))


def test_on_policy_clipped_gradient_equals_reinforce_gradient():
    """At rho = 1 the clip is inactive and d(-rho A)/d logp = -A: GRPO's first update is REINFORCE with the
    group-normalised advantage as its baseline-corrected return."""
    torch.manual_seed(0)
    logp = torch.log_softmax(torch.randn(4, 6), -1).requires_grad_()  # (B, T)
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5]), 2)  # (B,)
    weights = token_mean_weights(torch.ones(4, 6, dtype=torch.bool))  # (B, T)
    (g_clip,) = torch.autograd.grad(aggregate(clipped_loss(logp, logp.detach(), adv), weights), logp)
    (g_pg,) = torch.autograd.grad(aggregate(reinforce_loss(logp, adv), weights), logp)
    torch.testing.assert_close(g_clip, g_pg)


# ----------------------------------------------------------------------------- aggregation modes

def _hand_example():
    """Two groups of two. Group 0: rewards [1, 0] -> A = [.5, -.5] (no std), lengths 1 and 3 with
    ratios [1.1] and [1.0, 0.9, 1.1]; group 1: equal rewards, lengths 2 and 2.
    Per-token terms -min(rho A, clip(rho) A): row 0: -0.55; row 1: 0.5, 0.45, 0.55 (sum 1.5); rows 2, 3: 0."""
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])  # (B,)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1], [1, 1, 0], [0, 1, 1]], dtype=torch.bool)  # (B, T)
    ratio = torch.tensor([[1.1, 1, 1], [1.0, 0.9, 1.1], [1.3, 0.6, 1], [1, 1, 1]])  # (B, T)
    return rewards, mask, ratio.log(), torch.tensor([False, True, False, False])


@pytest.mark.parametrize("flags, expected", [
    ({}, (-0.55 + 1.5 / 3) / 4),                                          # DeepSeekMath: per response, then mean
    ({"token_level": True}, (-0.55 + 1.5) / 8),                           # DAPO: all 8 tokens
    ({"const_norm": 4}, (-0.55 + 1.5) / (4 * 4)),                         # Dr. GRPO: constant 4, 4 responses
    ({"drop_equal_groups": True}, (-0.55 + 1.5 / 3) / 2),                 # group 1 leaves the loss and n
    ({"drop_equal_groups": True, "token_level": True}, (-0.55 + 1.5) / 4),
    ({"drop_truncated": True}, -0.55 / 3),                                # row 1 leaves: 3 responses left
    ({"drop_truncated": True, "token_level": True}, -0.55 / 5),
])
def test_aggregation_modes_match_hand_computed_values(flags, expected):
    rewards, mask, logp, truncated = _hand_example()
    cfg = GRPOConfig(group_size=2, std_norm=False, **flags)
    m = loss_mask(mask, rewards, truncated, cfg)  # (B, T)
    adv = group_advantages(rewards, 2, std_norm=False)  # (B,)
    loss, _ = grpo_loss(logp, torch.zeros(4, 3), None, adv, m, cfg)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert token_weights(m, cfg).sum().item() == pytest.approx(
        1.0 if not flags.get("const_norm") else 8 / 16)  # weights of the mean modes sum to 1


def test_normaliser_override():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)  # (B, T)
    weights = token_weights(mask, GRPOConfig(group_size=2, token_level=True), normaliser=10)  # (B, T)
    torch.testing.assert_close(weights, mask.float() / 10)
    weights = token_weights(mask, GRPOConfig(group_size=2), normaliser=4)  # (B, T) 4 responses globally
    torch.testing.assert_close(weights[1], torch.full((3,), 1 / 12))


def test_aggregation_weights_hand_values_and_their_masked_reduction_twins():
    """mask rows of 1 and 3 tokens. DeepSeekMath: 1/(1*2), 1/(3*2); DAPO: 1/4 each; Dr. GRPO with L = 4:
    1/(4*2) each. Each is a masked_mean / masked_normalize written as weights."""
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.bool)  # (B, T)
    torch.testing.assert_close(sequence_mean_weights(mask), torch.tensor([[1 / 2, 0, 0], [1 / 6, 1 / 6, 1 / 6]]))
    torch.testing.assert_close(token_mean_weights(mask), torch.tensor([[1 / 4, 0, 0], [1 / 4, 1 / 4, 1 / 4]]))
    torch.testing.assert_close(constant_norm_weights(mask, 4), torch.tensor([[1 / 8, 0, 0], [1 / 8, 1 / 8, 1 / 8]]))
    x = torch.tensor([[3.0, 7.0, 7.0], [1.0, 2.0, 6.0]])  # (B, T) a per-token loss
    assert aggregate(x, sequence_mean_weights(mask)).item() == pytest.approx(masked_mean(x, mask, 1).mean().item())
    assert aggregate(x, token_mean_weights(mask)).item() == pytest.approx(masked_mean(x, mask).item())
    assert aggregate(x, constant_norm_weights(mask, 4)).item() == pytest.approx(
        masked_normalize(x, mask, 4, dim=1).mean().item())
    assert aggregate(x, sequence_mean_weights(mask)).item() == pytest.approx(3 / 2 + 9 / 6)  # hand: 3.0
    empty = torch.zeros(2, 3, dtype=torch.bool)  # (B, T) nothing left: weights 0, never 0/0
    for weights in (sequence_mean_weights(empty), token_mean_weights(empty), constant_norm_weights(empty, 4)):
        assert torch.equal(weights, torch.zeros(2, 3))


def test_fsdp_normaliser_below_one_is_used_as_given():
    """3 ranks, 2 surviving responses in all: each rank divides by 2 / 3 and the all-reduce averages the 3
    ranks, so a 2-token response on rank 0 gets 1 / (2 * 2/3) = 0.75 per token (0.5 if clamped at 1)."""
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)  # (B, T) this rank: one response left
    torch.testing.assert_close(token_weights(mask, GRPOConfig(group_size=2), normaliser=2 / 3),
                               torch.tensor([[0.75, 0.75, 0.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(token_weights(mask, GRPOConfig(group_size=2, token_level=True), normaliser=3 / 3),
                               torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(token_weights(mask, GRPOConfig(group_size=2, token_level=True), normaliser=2 / 3),
                               torch.tensor([[1.5, 1.5, 0.0], [0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("flags", [{}, {"token_level": True}], ids=["paper", "token_level"])
def test_simulated_ranks_average_to_the_full_batch_gradient(flags):
    """Three simulated ranks, one group of 2 each, drop_truncated leaves 2 responses (ranks 0 and 1, none on
    rank 2). Each rank runs rl_step with normaliser = global count / 3; the mean of their gradients (what the
    FSDP all-reduce computes) must equal one process's gradient on the whole batch."""
    ro = make_rollouts(B=6, G=2, seed=3)
    ro["rewards"] = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])  # (B,) every group has spread
    ro["truncated"] = torch.tensor([False, True, True, False, True, True])  # (B,)
    cfg = GRPOConfig(group_size=2, drop_truncated=True, max_grad_norm=0, **flags)
    full, _ = _grads_after_step(cfg, ro)
    mask = loss_mask(ro["response_mask"], ro["rewards"], ro["truncated"], cfg)[:, 1:]  # (B, T)
    count = float(mask.sum() if cfg.token_level else (mask.sum(1) > 0).sum())
    per_rank = []
    for rank in range(3):
        part = {k: v[2 * rank:2 * rank + 2] for k, v in ro.items()}
        grads, _ = _grads_after_step(cfg, part, normaliser=count / 3)
        per_rank.append(grads)
    for i, g in enumerate(full):
        torch.testing.assert_close(sum(r[i] for r in per_rank) / 3, g, atol=1e-6, rtol=1e-5)
    assert max(g.abs().max() for g in full) > 0


MODES = [
    {},
    {"token_level": True},
    {"const_norm": 16, "std_norm": False},
    {"drop_equal_groups": True, "token_level": True, "clip_high": 0.28},
    {"drop_truncated": True},
    {"beta": 0.05},
    {"unbiased_std": True},
]


def _grads_after_step(cfg, ro, aux=False, normaliser=None):
    torch.manual_seed(0)
    model = TinyLM(aux=aux)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: grads stay those of this batch
    stats = rl_step(model, opt, ro, cfg, ref_model=ref if cfg.beta else None, normaliser=normaliser)
    return [p.grad.clone() for p in model.parameters()], stats


@pytest.mark.parametrize("flags", MODES, ids=lambda f: ",".join(f) or "paper")
def test_micro_batching_equals_full_batch_gradient(flags):
    ro = make_rollouts(B=12, G=4)
    full, s_full = _grads_after_step(GRPOConfig(group_size=4, micro_batch=12, max_grad_norm=0, **flags), ro)
    micro, s_micro = _grads_after_step(GRPOConfig(group_size=4, micro_batch=5, max_grad_norm=0, **flags), ro)
    for a, b in zip(full, micro):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert s_full["loss"] == pytest.approx(s_micro["loss"], abs=1e-6)
    assert s_full["grad_norm"] > 0
    assert s_full["zero_spread"] == pytest.approx(1 / 3)


def test_micro_batches_sort_by_length_and_crop_padding():
    mask = torch.zeros(5, 10, dtype=torch.bool)  # (B, T)
    for row, (a, b) in enumerate([(2, 4), (3, 9), (1, 2), (0, 0), (5, 7)]):
        mask[row, a:b] = True
    batches = micro_batches(mask, 2)
    assert [width for _, width in batches] == [9, 4, 1]  # longest first; the empty row still gets width 1
    assert sorted(torch.cat([rows for rows, _ in batches]).tolist()) == list(range(5))
    assert all(not mask[rows, width:].any() for rows, width in batches)  # nothing cut off is in the loss


def test_rl_step_loss_equals_grpo_loss_on_the_whole_batch():
    ro = make_rollouts(B=8, G=4)
    cfg = GRPOConfig(group_size=4, micro_batch=3, token_level=True)
    torch.manual_seed(0)
    model = TinyLM()
    mask = ro["response_mask"][:, 1:]  # (B, T)
    targets = ro["tokens"][:, 1:].masked_fill(~mask, -100)  # (B, T)
    logp = response_logprobs(model, ro["tokens"][:, :-1], targets, cfg).logp  # (B, T)
    expected, _ = grpo_loss(logp, logp.detach(), None, group_advantages(ro["rewards"], 4), mask, cfg)
    stats = rl_step(model, torch.optim.SGD(model.parameters(), lr=0.1), ro, cfg)
    assert stats["loss"] == pytest.approx(expected.item(), abs=1e-6)
    assert stats["ratio"] == pytest.approx(1.0) and stats["kl_old"] == pytest.approx(0.0, abs=1e-7)
    assert stats["tokens"] == mask.sum().item() and stats["entropy"] > 0


# ----------------------------------------------------------------------------- Dr. GRPO length bias

def test_length_bias_of_per_response_averaging():
    """Group of 4: two right (r=1), a short wrong (2 tokens) and a long wrong (8 tokens) answer.
    Per-response averaging (1/|o_i|) gives each token of the long wrong answer 4x less push-down
    than the short one's, so long wrong answers are cheap; the constant normaliser treats them alike."""
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0])  # (B,)
    lengths = torch.tensor([3, 3, 2, 8])  # (B,)
    mask = torch.arange(8)[None] < lengths[:, None]  # (B, T)

    def per_token_grad(cfg):
        logp = torch.zeros(4, 8, requires_grad=True)  # (B, T) on-policy: ratio 1
        adv = group_advantages(rewards, 4, std_norm=cfg.std_norm)  # (B,)
        grpo_loss(logp, logp.detach(), None, adv, mask, cfg)[0].backward()
        return logp.grad  # d loss / d logp: > 0 means the token is pushed down

    g = per_token_grad(GRPOConfig(group_size=4))
    short, long = g[2, 0], g[3, 0]
    assert short > 0 and long > 0
    torch.testing.assert_close(short / long, torch.tensor(4.0))  # |o_long| / |o_short|
    assert g[3, :8].sum() == pytest.approx(g[2, :2].sum().item())  # same total: the long one is diluted
    g = per_token_grad(GRPOConfig(group_size=4, const_norm=8, std_norm=False))
    assert g[2, 0] == g[3, 0] > 0
    assert g[3, :8].sum() == pytest.approx(4 * g[2, :2].sum().item())  # longer wrong answer, more penalty


def test_zero_spread_comes_from_prompt_order_not_micro_batch_order():
    """rl_step hands grpo_loss length-sorted rows; a per-group statistic read from them regroups the wrong rows.
    Group 0 (rows 0-1) has equal rewards and short responses, group 1 long ones: the length sort interleaves them."""
    tokens = torch.randint(1, 13, (4, 8), generator=torch.Generator().manual_seed(0))  # (B, L)
    response_mask = torch.zeros(4, 8, dtype=torch.bool)  # (B, L)
    for row, end in enumerate([3, 7, 8, 4]):  # rows 1 and 2 longest: sorted order is 2, 1, 3, 0
        response_mask[row, 2:end] = True
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0])  # (B,) group 0 equal, group 1 spread: zero_spread = 1/2
    ro = {"tokens": tokens, "response_mask": response_mask, "rewards": rewards}
    cfg = GRPOConfig(group_size=2, micro_batch=4)
    model = TinyLM()
    stats = rl_step(model, torch.optim.SGD(model.parameters(), lr=0.0), ro, cfg)
    assert stats["zero_spread"] == 0.5
    rows, width = micro_batches(response_mask[:, 1:], 4)[0]
    assert rows.tolist() == [2, 1, 3, 0]  # what the loss sees
    adv = group_advantages(ro["rewards"], 2)  # (B,)
    logp = torch.zeros(4, width)  # (b, width)
    _, diag = grpo_loss(logp, logp, None, adv[rows], response_mask[rows, 1:width + 1], cfg)
    # a zero_spread from these rows would regroup (2, 1) and (3, 0) and read 0.0
    assert diag.get("zero_spread", 0.5) == 0.5


def test_entropy_is_absent_not_zero_when_every_response_is_dropped():
    """All rollouts truncated and dropped: no token is measured, so entropy (and the other token means)
    must read NaN, not a fake collapse to 0.0. The loss and the gradient are exactly 0."""
    ro = make_rollouts(B=8, G=4)
    ro["truncated"] = torch.ones(8, dtype=torch.bool)  # (B,)
    model = TinyLM()
    stats = rl_step(model, torch.optim.SGD(model.parameters(), lr=0.1), ro, GRPOConfig(group_size=4, micro_batch=3,
                                                                                      drop_truncated=True))
    assert stats["tokens"] == 0 and stats["loss"] == 0 and stats["grad_norm"] == 0
    for name in ("entropy", "ratio", "clip_frac_low", "clip_frac_high", "kl_old"):
        assert math.isnan(stats[name]), (name, stats[name])
    kept = rl_step(model, torch.optim.SGD(model.parameters(), lr=0.1), ro, GRPOConfig(group_size=4, micro_batch=3))
    assert kept["entropy"] > 0 and kept["ratio"] == pytest.approx(1.0)  # the same rows, kept: measured


def test_drop_truncated_old_name_still_accepted():
    assert GRPOConfig(mask_truncated=True).drop_truncated is True
    assert GRPOConfig(mask_truncated=False).drop_truncated is False
    assert GRPOConfig(drop_truncated=True).drop_truncated is True
    with pytest.raises(ValueError, match="mask_truncated"):
        GRPOConfig(drop_truncated=True, mask_truncated=False)


# ----------------------------------------------------------------------------- the SFT step

def test_sft_microbatch_step_hand_values():
    """Rows: logp [-1, -2, (-3 masked)] and [-0.5, (-1, -9 masked)]; 2 accumulation steps, normaliser 1:
    per-row NLL sums [3, 0.5], mean 1.75, / 2 = 0.875. d loss / d logp = -1 / (b * steps) = -0.25 on the mask."""
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.0, -9.0]], requires_grad=True)  # (b, T)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)  # (b, T)
    loss, meta = sft_microbatch_step(logp, mask, grad_accum_steps=2)
    assert loss.item() == pytest.approx(0.875)
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.25, -0.25, 0.0], [-0.25, 0.0, 0.0]]))
    assert meta["nll_per_token"].item() == pytest.approx(3.5 / 3) and meta["tokens"].item() == 3
    logp.grad = None
    loss, _ = sft_microbatch_step(logp, mask, grad_accum_steps=1, normaliser=4.0)  # per-token scale 1/4
    assert loss.item() == pytest.approx(3.5 / 4 / 2)
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.125, -0.125, 0.0], [-0.125, 0.0, 0.0]]))


def test_sft_gradient_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 7, requires_grad=True)  # (B, T, V)
    targets = torch.randint(0, 7, (4, 5))  # (B, T)
    mask = torch.rand(4, 5) > 0.3  # (B, T)
    logp = lambda rows: torch.log_softmax(logits[rows], -1).gather(-1, targets[rows, :, None])[..., 0]  # noqa
    sft_microbatch_step(logp(slice(0, 4)), mask, grad_accum_steps=1, normaliser=5)
    full, logits.grad = logits.grad.clone(), None
    for rows in (slice(0, 2), slice(2, 4)):
        sft_microbatch_step(logp(rows), mask[rows], grad_accum_steps=2, normaliser=5)
    torch.testing.assert_close(logits.grad, full)


# ----------------------------------------------------------------------------- inner updates, hooks, errors

class RecordingSGD(torch.optim.SGD):
    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.seen = []

    def step(self, closure=None):
        self.seen.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


def test_mu_greater_than_one_first_update_is_on_policy():
    ro = make_rollouts(B=8, G=4)
    torch.manual_seed(0)
    model = TinyLM()
    cfg = GRPOConfig(group_size=4, micro_batch=3, mu=3)
    mask = ro["response_mask"][:, 1:]  # (B, T)
    targets = ro["tokens"][:, 1:].masked_fill(~mask, -100)  # (B, T)
    batches = micro_batches(mask, 3)
    old = _frozen_logprobs(model, ro["tokens"][:, :-1], targets, cfg, batches)  # (B, T)
    for rows, width in batches:
        new = response_logprobs(model, ro["tokens"][rows, :width], targets[rows, :width], cfg).logp  # (b, width)
        assert torch.equal(torch.exp(new - old[rows, :width]), torch.ones_like(new))  # ratio exactly 1 at first

    on_policy_model, multi_model = copy.deepcopy(model), copy.deepcopy(model)
    opt1, opt3 = RecordingSGD(on_policy_model.parameters(), 0.5), RecordingSGD(multi_model.parameters(), 0.5)
    rl_step(on_policy_model, opt1, ro, GRPOConfig(group_size=4, micro_batch=3, mu=1))
    stats = rl_step(multi_model, opt3, ro, cfg)
    assert len(opt3.seen) == 3 and multi_model.bias_updates == 3
    for a, b in zip(opt1.seen[0], opt3.seen[0]):
        assert torch.equal(a, b)  # first of the mu updates == the on-policy update
    assert not all(torch.equal(a, b) for a, b in zip(opt3.seen[0], opt3.seen[2]))
    assert stats["kl_old"] > 0  # later updates moved away from pi_old


def test_aux_loss_is_added_and_router_bias_updated():
    ro = make_rollouts(B=8, G=4)
    cfg = GRPOConfig(group_size=4, micro_batch=3, max_grad_norm=0)
    with_aux, _ = _grads_after_step(cfg, ro, aux=True)
    without, _ = _grads_after_step(cfg, ro, aux=False)
    assert not torch.allclose(with_aux[0], without[0])  # the embedding feels the aux loss
    full, _ = _grads_after_step(GRPOConfig(group_size=4, micro_batch=8, max_grad_norm=0), ro, aux=True)
    torch.testing.assert_close(with_aux[0], full[0], atol=1e-6, rtol=1e-5)  # aux is micro-batch exact too


def test_errors():
    with pytest.raises(ValueError, match="token_level and const_norm"):
        GRPOConfig(token_level=True, const_norm=256)
    with pytest.raises(ValueError):
        GRPOConfig(clip_low=1.5)
    model = TinyLM()
    with pytest.raises(ValueError, match="ref_model"):
        rl_step(model, torch.optim.SGD(model.parameters(), lr=0.1), make_rollouts(),
                GRPOConfig(group_size=4, beta=0.1))
    with pytest.raises(ValueError, match="divisible"):
        rl_step(model, torch.optim.SGD(model.parameters(), lr=0.1), make_rollouts(B=8), GRPOConfig(group_size=3))


# ----------------------------------------------------------------------------- the Triton path

TRITON_SCRIPT = textwrap.dedent("""
    import copy, sys, torch
    sys.path.insert(0, sys.argv[1])
    import kernels
    assert kernels.INTERPRET
    from grpo import GRPOConfig, rl_step
    torch.manual_seed(0)
    B, L, V = 8, 10, 40
    tokens = torch.randint(0, V, (B, L))  # (B, L)
    response_mask = torch.arange(L)[None] >= torch.randint(2, 6, (B, 1))  # (B, L)
    rollouts = {"tokens": tokens, "response_mask": response_mask, "rewards": torch.rand(B),
                "truncated": torch.zeros(B, dtype=torch.bool)}
    base = torch.nn.Sequential(torch.nn.Embedding(V, 16), torch.nn.Tanh(), torch.nn.Linear(16, V))
    ref = copy.deepcopy(base)
    torch.nn.init.normal_(ref[2].weight)
    for flags in ({"token_level": True, "beta": 0.1, "temperature": 0.7, "mu": 2},):
        out = {}
        for impl in ("torch", "triton"):
            model = copy.deepcopy(base)
            cfg = GRPOConfig(group_size=4, micro_batch=3, logprob_impl=impl, max_grad_norm=0, **flags)
            stats = rl_step(model, torch.optim.SGD(model.parameters(), lr=0.0), rollouts, cfg, ref_model=ref)
            out[impl] = (stats, [p.grad for p in model.parameters()])
        (s_t, g_t), (s_k, g_k) = out["torch"], out["triton"]
        for k in ("loss", "kl", "entropy", "ratio"):
            assert abs(s_t[k] - s_k[k]) < 1e-5, (flags, k, s_t[k], s_k[k])
        for a, b in zip(g_t, g_k):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        assert s_t["entropy"] > 0 and abs(s_t["loss"]) > 0
    print("OK")
""")


def test_loss_through_triton_kernel_equals_pytorch_twin():
    pytest.importorskip("triton")  # the CPU interpreter needs the triton package (a dependency on Linux)
    env = {**os.environ, "TRITON_INTERPRET": "1"}  # must be set before triton is imported: a subprocess
    res = subprocess.run([sys.executable, "-c", TRITON_SCRIPT, str(ROOT)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr


def test_rl_step_on_the_real_transformer():
    """tiny-moe: MLA attention + DeepSeekMoE. aux_loss_alpha stays 0 here: the sequence-wise balance
    loss averages over padded positions too, so it (alone) changes with how rows are micro-batched."""
    from model import ModelConfig, Transformer
    ro = make_rollouts(B=8, G=4, L=12, vocab=13)
    torch.manual_seed(0)
    base = Transformer(ModelConfig.from_preset("tiny-moe", vocab_size=13))
    grads, chunks, real = [], [], grpo.linear_token_logprobs
    grpo.linear_token_logprobs = lambda *a, **kw: (chunks.append(kw["chunk_size"]), real(*a, **kw))[1]
    try:  # full batch; micro-batched with the fused lm_head in chunks of 256 and of 2 loss tokens
        runs = ((8, False, 256), (3, True, 256), (3, True, 2))
        for micro_batch, fused, chunk in runs:
            model = copy.deepcopy(base)
            cfg = GRPOConfig(group_size=4, micro_batch=micro_batch, max_grad_norm=0, beta=0.01, fused_head=fused,
                             fused_head_chunk=chunk)
            stats = rl_step(model, torch.optim.SGD(model.parameters(), lr=0.0), ro, cfg, ref_model=base)
            grads.append([p.grad for p in model.parameters() if p.grad is not None])
            assert stats["entropy"] > 0
    finally:
        grpo.linear_token_logprobs = real
    assert set(chunks) == {256, 2}  # the fused_head_chunk setting reaches the kernel
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    model = copy.deepcopy(base)
    before = [p.clone() for p in model.parameters()]
    stats = rl_step(model, torch.optim.AdamW(model.parameters(), lr=1e-3), ro, GRPOConfig(group_size=4, mu=2))
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(base.buffers(), model.buffers()))  # router bias moved
