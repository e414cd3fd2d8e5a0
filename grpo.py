"""
grpo.py: the GRPO objective (DeepSeekMath, used by DeepSeek-R1) built from small pieces, one RL step
composed of them, and the SFT step on log-probs that distillation needs.

For each prompt q the sampler draws a group of G responses o_1..o_G and rewards r_1..r_G. GRPO
maximises (no value model; the group mean is the baseline)

    J = 1/G sum_i 1/|o_i| sum_t [ min(rho_it A_i, clip(rho_it, 1-eps_low, 1+eps_high) A_i) - beta KL_it ]
    rho_it = pi(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t)        A_i = (r_i - mean(r)) / (std(r) + eps)
    KL_it  = pi_ref/pi - log(pi_ref/pi) - 1

and we minimise loss = -J. KL_it is "k3", the third of J. Schulman's three Monte Carlo KL estimators
("Approximating KL Divergence", 2020): unbiased under samples from pi, never negative (kernels.k3_kl).

Every aggregation mode is written as per-token weights w_it, loss = sum over tokens of w_it * l_it,
where l_it is the bracket above with the sign flipped (per_token_loss):

    paper default (DeepSeekMath)    w_it = 1 / (|o_i| * n)        n = responses with a loss token
    token_level=True (DAPO)         w_it = 1 / sum_i |o_i|        every token in the batch counts once
    const_norm=L (Dr. GRPO)         w_it = 1 / (L * n)            no per-response length division
    std_norm=False (Dr. GRPO)       advantages are r_i - mean(r), not divided by the group std

drop_equal_groups=True (DAPO) and drop_truncated=True (DAPO's overlong filtering, Dr. GRPO's
"truncated -> 0") remove rows from the loss mask before the weights are computed, so they also
leave the normaliser: n and sum_i |o_i| count only the rows that remain (the remaining rows are
averaged as if the dropped ones had never been sampled). Because the weights are computed once
for the whole batch before it is split, the micro-batch losses add up to the full-batch loss and
gradient accumulation is exact in every mode (the common "mean per micro-batch, divide by the
number of micro-batches" is exact only for the paper mode with equal-sized micro-batches).

The file reads top to bottom: masked reductions, advantages, per-token losses, aggregation weights,
the GRPO loss with its diagnostics, the SFT step, then rl_step, which composes them with a model.

Simplifications vs the papers and production trainers (verl, TRL, OpenRLHF):
1. One RL loss in rl_step: clipped ratio + k3 KL. No value model, no dual clip, no KL-in-reward, no
   k1/k2. The REINFORCE losses (no baseline, group-mean baseline) are here as pieces, not wired in.
2. DAPO's dynamic sampling (re-sampling to refill dropped groups) is the caller's business; here
   drop_equal_groups only masks those groups (their rows sort last and cost width-1 forwards).
3. Old log-probs are recomputed by the trainer (one no_grad pass when mu > 1), not taken from the
   sampler, so the ratio never mixes two numerical paths.
4. Single process. For FSDP, rl_step takes a `normaliser` override so every rank can weight its
   tokens with the global count (see token_weights and rl_step).
5. Diagnostics are token means over the loss mask (not weighted by w); NaN when no token is left.

Use:
    cfg = GRPOConfig(group_size=8, clip_high=0.28, token_level=True)   # DAPO-style
    stats = rl_step(model, optimizer, {"tokens": tokens, "response_mask": response_mask,
                                       "rewards": rewards, "truncated": truncated}, cfg)
    adv = group_advantages(rewards, 8)                                  # the pieces, one at a time
    loss = aggregate(per_token_loss(logp, old_logp, adv), token_mean_weights(mask))
Tests: python -m pytest tests/test_grpo.py -q          Exercises: docs/assignments.md

Shapes: B responses (= P prompts * G group size), P prompts, G group size, L rollout length
(prompt + response), T = L - 1 predicted positions, V vocab, C model dim, N loss tokens; a micro-batch
holds b rows and the first `width` positions.
"""
from dataclasses import InitVar, dataclass

import torch

from kernels import TokenStats, k3_kl, linear_token_logprobs, token_logprobs

IGNORE = -100  # target id for positions outside the loss; the log-prob kernel skips them


@dataclass
class GRPOConfig:
    group_size: int = 8          # G responses per prompt; rows are grouped prompt-major
    clip_low: float = 0.2        # rho is clipped to [1 - clip_low, 1 + clip_high]
    clip_high: float = 0.2       # DAPO "clip-higher": 0.28
    beta: float = 0.0            # k3 KL coefficient; 0 -> no reference model needed
    std_norm: bool = True        # divide advantages by the group std (Dr. GRPO: False)
    unbiased_std: bool = False   # group std with Bessel's correction (/(G-1)); False: population std (/G)
    token_level: bool = False    # DAPO: average over all tokens in the batch
    const_norm: float = 0        # Dr. GRPO: 0 off, else the constant (e.g. max_new_tokens)
    drop_equal_groups: bool = False  # groups whose rewards are all equal leave the loss
    drop_truncated: bool = False     # responses that hit max_new_tokens leave the loss
    mu: int = 1                  # inner updates per batch (1 = strictly on-policy)
    micro_batch: int = 16        # rows per forward/backward
    max_grad_norm: float = 1.0   # 0 -> no clipping (the norm is still reported)
    temperature: float = 1.0     # the sampling temperature; log-probs are of logits / temperature
    logprob_impl: str = "auto"   # kernels.token_logprobs impl: "auto" | "triton" | "torch"
    fused_head: bool = False     # lm_head fused into the log-prob kernel on loss tokens only (never
                                 # holds (B, T, V) logits); needs model(x, return_hidden=True), model.lm_head
    fused_head_chunk: int = 256  # loss tokens per fused-head chunk: peak extra memory ~8 x chunk x V fp32 on the
                                 # PyTorch twin, ~2 x on Triton (kernels.linear_token_logprobs)
    mask_truncated: InitVar[bool | None] = None  # the old name of drop_truncated, still accepted

    def __post_init__(self, mask_truncated):
        if mask_truncated is not None:
            if self.drop_truncated and not mask_truncated:
                raise ValueError("drop_truncated=True and its old name mask_truncated=False disagree; set one")
            self.drop_truncated = bool(mask_truncated)
        if self.group_size < 1 or self.mu < 1 or self.micro_batch < 1 or self.fused_head_chunk < 1:
            raise ValueError(f"group_size, mu, micro_batch and fused_head_chunk must be >= 1, got {self.group_size}, "
                             f"{self.mu}, {self.micro_batch}, {self.fused_head_chunk}")
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0):
            raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {self.clip_low}, {self.clip_high}")
        if self.beta < 0 or self.const_norm < 0 or self.max_grad_norm < 0 or self.temperature <= 0:
            raise ValueError("beta, const_norm, max_grad_norm must be >= 0 and temperature > 0")
        if self.token_level and self.const_norm:
            raise ValueError("token_level and const_norm are two different normalisers; set one")
        if self.logprob_impl not in ("auto", "triton", "torch"):
            raise ValueError(f"logprob_impl must be 'auto', 'triton' or 'torch', got {self.logprob_impl!r}")


# ----------------------------------------------------------------------------- masked reductions

def masked_mean(x, mask, dim=None):
    """Mean of x over the entries where mask is True. x and mask (B, T) (any equal shapes).
    dim=None: a 0-dim tensor; dim=d: that dimension reduced. NaN where the mask selects nothing
    (a mean of no tokens is absent, not 0). Entries outside the mask never reach the result, even inf or NaN."""
    mask = mask.bool()
    kept = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))  # same shape as x
    if dim is None:
        return kept.sum() / mask.sum()
    return kept.sum(dim) / mask.sum(dim)


def masked_normalize(x, mask, normaliser, dim=None):
    """Sum of x over the entries where mask is True, divided by a constant normaliser.
    x and mask (B, T); dim=None: a 0-dim tensor; dim=d: that dimension reduced. Dr. GRPO's aggregation
    is masked_normalize(l, mask, L, dim=1).mean() when every row has a loss token: each response divided
    by the same L. Entries outside the mask never reach the result."""
    kept = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))  # same shape as x
    return (kept.sum() if dim is None else kept.sum(dim)) / normaliser


# ----------------------------------------------------------------------------- advantages

def _groups(rewards, group_size):
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a length divisible by group_size={group_size}, "
                         f"got shape {tuple(rewards.shape)}")
    return rewards.float().view(-1, group_size)  # (P, G)


def group_spread(rewards, group_size):
    """(B,) bool: True for rows whose group has at least two different rewards. rewards (B,) prompt-major."""
    r = _groups(rewards, group_size)  # (P, G)
    spread = r.amax(dim=1) > r.amin(dim=1)  # (P,)
    return spread.repeat_interleave(group_size)  # (B,)


def zero_spread(rewards, group_size):
    """Share of groups whose rewards are all equal (no learning signal); a 0-dim float tensor.
    rewards (B,) in prompt-major order (rows of one group adjacent), as sampled, never micro-batch order."""
    r = _groups(rewards, group_size)  # (P, G)
    return (r.amax(dim=1) == r.amin(dim=1)).float().mean()


def group_advantages(rewards, group_size, std_norm=True, unbiased=False, eps=1e-4):
    """A_i = (r_i - mean of its group) / (std of its group + eps). rewards (B,) prompt-major -> (B,) float32.
    std_norm=False (Dr. GRPO): no division, A_i = r_i - mean, the REINFORCE group-mean baseline.
    unbiased=False: population std (divide by G), the DeepSeekMath formula as written; unbiased=True:
    Bessel's correction (divide by G - 1), torch.std's default and so what TRL, verl and OpenRLHF compute.
    Groups with equal rewards get exactly 0 (not a rounding residue of r - mean), so they contribute
    exactly no policy gradient."""
    r = _groups(rewards, group_size)  # (P, G)
    adv = r - r.mean(dim=1, keepdim=True)  # (P, G)
    if std_norm:
        adv = adv / (r.std(dim=1, keepdim=True, correction=1 if unbiased else 0) + eps)  # (P, G)
    adv = adv.flatten()  # (B,)
    return torch.where(group_spread(rewards, group_size), adv, torch.zeros_like(adv))  # (B,)


# ----------------------------------------------------------------------------- per-token losses, each (B, T)

def reinforce_loss(logp, advantages):
    """The REINFORCE per-token loss -A_i * logp_it: logp (B, T) of the sampled tokens (with grad),
    advantages (B,) -> (B, T). Its gradient is the policy gradient -A_i grad log pi(o_it)."""
    return -advantages.float()[:, None] * logp  # (B, T)


def no_baseline_loss(logp, rewards):
    """REINFORCE without a baseline: the raw reward is the advantage. logp (B, T), rewards (B,) -> (B, T)."""
    return reinforce_loss(logp, rewards)  # (B, T)


def reinforce_with_baseline_loss(logp, rewards, group_size):
    """REINFORCE with the group mean as baseline: A_i = r_i - mean(r of its group). logp (B, T),
    rewards (B,) prompt-major -> (B, T). Same expected gradient as no_baseline_loss, lower variance."""
    return reinforce_loss(logp, group_advantages(rewards, group_size, std_norm=False))  # (B, T)


def clipped_loss(logp, old_logp, advantages, clip_low=0.2, clip_high=0.2):
    """PPO's clipped surrogate per token, sign flipped: -min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A)
    with rho = exp(logp - old_logp). logp (B, T) with grad, old_logp (B, T), advantages (B,) -> (B, T).
    On-policy (old_logp = logp.detach(), rho = 1) its gradient equals reinforce_loss's."""
    adv = advantages.float()[:, None]  # (B, 1)
    ratio = torch.exp(logp - old_logp)  # (B, T)
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high)  # (B, T)
    return -torch.minimum(ratio * adv, clipped * adv)  # (B, T)


def per_token_loss(logp, old_logp, advantages, clip_low=0.2, clip_high=0.2, ref_logp=None, beta=0.0):
    """GRPO's per-token loss l_it: clipped_loss + beta * k3 KL to the reference. logp (B, T) with grad,
    old_logp (B, T), advantages (B,), ref_logp (B, T) or None (needed when beta > 0) -> (B, T).
    Positions outside the loss must hold finite values (grpo_loss fills them with 0)."""
    loss = clipped_loss(logp, old_logp, advantages, clip_low, clip_high)  # (B, T)
    if beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp (log-probs of the reference policy)")
        loss = loss + beta * k3_kl(logp, ref_logp)  # (B, T)
    return loss


# ----------------------------------------------------------------------------- aggregation as per-token weights

def loss_mask(response_mask, rewards, truncated, cfg):
    """(B, L) bool: the response tokens that enter the loss, after drop_equal_groups / drop_truncated.
    response_mask (B, L) bool, rewards (B,), truncated (B,) bool or None."""
    keep = torch.ones_like(rewards, dtype=torch.bool)  # (B,)
    if cfg.drop_equal_groups:
        keep &= group_spread(rewards, cfg.group_size)
    if cfg.drop_truncated and truncated is not None:
        keep &= ~truncated.bool()
    return response_mask.bool() & keep[:, None]  # (B, L)


def _divide(m, denominator):
    """m / denominator where m > 0, else 0: an empty row or batch gets weight 0, never 0/0."""
    return torch.where(m > 0, m / denominator, torch.zeros_like(m))


def sequence_mean_weights(mask, n_responses=None):
    """DeepSeekMath: w_it = 1 / (|o_i| * n), a mean per response, then over the n responses.
    mask (B, T) bool -> (B, T) float32. n_responses defaults to the rows with a loss token; under
    FSDP pass the global count / world size (it may be below 1 and is used as given)."""
    m = mask.float()  # (B, T)
    lengths = m.sum(dim=1, keepdim=True)  # (B, 1)
    n = (lengths > 0).sum() if n_responses is None else torch.tensor(float(n_responses))
    return _divide(m, lengths * n.to(m.device))  # (B, T)


def token_mean_weights(mask, n_tokens=None):
    """DAPO: w_it = 1 / sum_i |o_i|, every loss token in the batch counts once. mask (B, T) bool ->
    (B, T) float32. n_tokens defaults to mask.sum(); under FSDP the global count / world size."""
    m = mask.float()  # (B, T)
    count = m.sum() if n_tokens is None else torch.tensor(float(n_tokens))
    return _divide(m, count.to(m.device))  # (B, T)


def constant_norm_weights(mask, const, n_responses=None):
    """Dr. GRPO: w_it = 1 / (const * n), no per-response length division, so a long wrong answer is
    pushed down per token as hard as a short one. mask (B, T) bool -> (B, T) float32; n as in
    sequence_mean_weights."""
    m = mask.float()  # (B, T)
    n = (m.sum(dim=1) > 0).sum() if n_responses is None else torch.tensor(float(n_responses))
    return _divide(m, const * n.to(m.device))  # (B, T)


def token_weights(mask, cfg, normaliser=None):
    """The weights of cfg's aggregation mode: (B, T) float32 with loss = sum(w * per_token_loss).
    mask (B, T) bool. normaliser overrides the batch count the weights divide by: the number of loss
    tokens when cfg.token_level, else the number of responses (rows with at least one loss token)."""
    if cfg.token_level:
        return token_mean_weights(mask, normaliser)
    if cfg.const_norm:
        return constant_norm_weights(mask, cfg.const_norm, normaliser)
    return sequence_mean_weights(mask, normaliser)


def aggregate(per_token, weights):
    """The scalar loss sum_it w_it * l_it. per_token (B, T), weights (B, T) (0 outside the loss)."""
    return (weights * per_token).sum()


# ----------------------------------------------------------------------------- the GRPO loss and its diagnostics

def grpo_loss(logp, old_logp, ref_logp, advantages, mask, cfg, weights=None, entropy=None):
    """The GRPO loss for one (micro-)batch: aggregate(per_token_loss(...), weights).
    logp (B, T) of the current policy (with grad); old_logp (B, T) of the sampling policy; ref_logp
    (B, T) of the reference or None (needed when cfg.beta > 0); advantages (B,); mask (B, T) bool;
    weights (B, T) from token_weights (computed from mask with cfg when None); entropy (B, T) or None.
    Returns (loss, diagnostics): diagnostics are detached 0-dim tensors, token means over the mask
    (NaN when the mask is empty; entropy NaN when not given; kl 0 without a reference), and "tokens"."""
    if cfg.beta > 0 and ref_logp is None:
        raise ValueError("cfg.beta > 0 needs ref_logp (log-probs of the reference policy)")
    mask = mask.bool()
    weights = token_weights(mask, cfg) if weights is None else weights  # (B, T)
    logp = logp.masked_fill(~mask, 0.0)  # (B, T) masked first: no inf/nan from padding leaks into the loss
    old_logp = old_logp.masked_fill(~mask, 0.0)  # (B, T)
    ref_logp = ref_logp.masked_fill(~mask, 0.0) if ref_logp is not None else None  # (B, T)
    per_token = per_token_loss(logp, old_logp, advantages, cfg.clip_low, cfg.clip_high, ref_logp, cfg.beta)
    loss = aggregate(per_token, weights)

    with torch.no_grad():
        ratio = torch.exp(logp - old_logp)  # (B, T)
        adv = advantages.float()[:, None]  # (B, 1)
        diag = {
            "loss": loss.detach(),
            "clip_frac_low": masked_mean(((ratio < 1 - cfg.clip_low) & (adv < 0)).float(), mask),  # clip active
            "clip_frac_high": masked_mean(((ratio > 1 + cfg.clip_high) & (adv > 0)).float(), mask),
            "ratio": masked_mean(ratio, mask),
            "kl_old": masked_mean(k3_kl(logp, old_logp), mask),  # how far the inner updates moved from pi_old
            "kl": masked_mean(k3_kl(logp, ref_logp), mask) if ref_logp is not None else ratio.new_zeros(()),
            "entropy": masked_mean(entropy.float(), mask) if entropy is not None else ratio.new_tensor(float("nan")),
            "tokens": mask.sum(),
        }
    return loss, diag


# ----------------------------------------------------------------------------- the SFT step

def sft_microbatch_step(logp, mask, grad_accum_steps=1, normaliser=1.0):
    """One micro-batch of supervised fine-tuning on per-token log-probs, with gradient accumulation:
    calls backward and returns (loss, metadata); the caller steps the optimizer every grad_accum_steps.
    logp (b, T) log-probs of the target tokens (with grad); mask (b, T) bool, True on tokens to learn.
    loss = mean over the b rows of -(sum of the row's masked logp) / normaliser, divided by
    grad_accum_steps, so that many equal-sized micro-batches add up to the mean over all rows.
    normaliser=1 sums each row's NLL; a fixed token count makes it a per-token scale.
    metadata: nll_per_token (masked mean of -logp), tokens (0-dim tensors, detached)."""
    nll = -masked_normalize(logp, mask, normaliser, dim=1)  # (b,)
    loss = nll.mean() / grad_accum_steps
    loss.backward()
    return loss.detach(), {"nll_per_token": masked_mean(-logp.detach(), mask), "tokens": mask.sum()}


# ----------------------------------------------------------------------------- one RL step on a model

def response_logprobs(model, inputs, targets, cfg, return_entropy=False):
    """Per-token log-probs (B, T) (and entropy) of targets under model(inputs) via kernels.py; 0 where
    targets == IGNORE. The model sees tokens[:, :-1]: by causality these logits equal logits[:, :-1]
    of the full rows, without copying a (B, T, V) slice. With cfg.fused_head the lm_head runs inside
    the kernel on the loss tokens only (no logits for prompt or padding positions)."""
    kw = dict(temperature=cfg.temperature, return_entropy=return_entropy, ignore_index=IGNORE, impl=cfg.logprob_impl)
    keep = targets != IGNORE  # (B, T)
    load = {"load_mask": keep} if hasattr(model, "expert_load") else {}  # MoE load: count response tokens only
    if not cfg.fused_head:
        return token_logprobs(model(inputs, **load), targets, **kw)  # logits (B, T, V)
    hidden = model(inputs, return_hidden=True, **load)  # (B, T, C)
    stats = linear_token_logprobs(hidden[keep], model.lm_head.weight, targets[keep],  # each (N,)
                                  chunk_size=cfg.fused_head_chunk, **kw)
    zeros = torch.zeros(targets.shape, device=hidden.device)  # (B, T)
    return TokenStats(*(zeros.masked_scatter(keep, x) if x is not None else None for x in stats))  # (B, T) each


def micro_batches(mask, micro_batch):
    """[(row ids (b,), width)]: rows sorted by where their last loss token ends, so rows of similar
    length share a micro-batch, and each micro-batch is cut to its longest row (right padding past it
    is never computed). Exact: the weights are per token and causal logits ignore later positions.
    Rows leave prompt order here: anything per group (advantages, zero_spread) is computed before."""
    T = mask.shape[1]
    ends = (mask * torch.arange(1, T + 1, device=mask.device)).amax(dim=1)  # (B,) one past the last loss token
    order = ends.argsort(descending=True, stable=True)  # (B,)
    widths = ends[order].tolist()
    return [(order[i:i + micro_batch], max(widths[i], 1)) for i in range(0, len(widths), micro_batch)]


@torch.no_grad()
def _frozen_logprobs(model, inputs, targets, cfg, batches):
    """Log-probs (B, T) of a frozen policy (the reference, or pi_old before the first update)."""
    out = torch.zeros(targets.shape, device=targets.device)  # (B, T)
    for rows, width in batches:
        stats = response_logprobs(model, inputs[rows, :width], targets[rows, :width], cfg)
        out[rows, :width] = stats.logp  # (b, width)
    return out


def _rollout_tensors(rollouts, device):
    """tokens (B, L), response_mask (B, L) bool, truncated (B,) bool of a rollouts dict, on device, checked."""
    tokens = rollouts["tokens"].to(device)  # (B, L)
    response_mask = rollouts["response_mask"].to(device).bool()  # (B, L)
    truncated = rollouts.get("truncated")
    truncated = (truncated.to(device).bool() if truncated is not None
                 else torch.zeros(tokens.shape[:1], dtype=torch.bool, device=device))  # (B,)
    if tokens.dim() != 2 or response_mask.shape != tokens.shape or truncated.shape != tokens.shape[:1]:
        raise ValueError(f"need tokens (B, L), response_mask (B, L), truncated (B,); got {tuple(tokens.shape)}, "
                         f"{tuple(response_mask.shape)}, {tuple(truncated.shape)}")
    return tokens, response_mask, truncated


def frozen_logprobs(model, rollouts, cfg, ref_model=None):
    """(old_logp, ref_logp), each (B, T) or None: the log-probs of the two frozen policies rl_step needs,
    pi_old (only when cfg.mu > 1; with one update it is the current logp, detached) and the reference
    (only when cfg.beta > 0). Call it before the update. rollouts as rl_step's, rewards not needed:
    the log-probs are taken on every response token drop_truncated keeps (drop_equal_groups, which needs
    the rewards, only removes rows later), so a trainer can score the rewards on the host while the
    device computes these (train.py's --overlap). rl_step calls it itself when not given them."""
    if cfg.beta > 0 and ref_model is None:
        raise ValueError("cfg.beta > 0 needs a ref_model (or set beta=0)")
    if cfg.beta == 0 and cfg.mu == 1:
        return None, None
    tokens, response_mask, truncated = _rollout_tensors(rollouts, next(model.parameters()).device)
    keep = ~truncated if cfg.drop_truncated else torch.ones_like(truncated)  # (B,)
    mask = (response_mask & keep[:, None])[:, 1:]  # (B, T) the loss mask before the rewards are known
    inputs, targets = tokens[:, :-1], tokens[:, 1:].masked_fill(~mask, IGNORE)  # (B, T) each
    batches = micro_batches(mask, cfg.micro_batch)  # [(row ids (b,), width)], length-sorted
    ref_logp = _frozen_logprobs(ref_model, inputs, targets, cfg, batches) if cfg.beta > 0 else None  # (B, T)
    old_logp = _frozen_logprobs(model, inputs, targets, cfg, batches) if cfg.mu > 1 else None  # (B, T)
    return old_logp, ref_logp


DIAGNOSTICS = ("clip_frac_low", "clip_frac_high", "ratio", "kl", "kl_old")  # token means over updates


def rl_step(model, optimizer, rollouts, cfg, ref_model=None, normaliser=None, frozen=None):
    """One GRPO batch: cfg.mu optimizer updates on the rollouts, each micro-batched with gradient
    accumulation. rollouts: tokens (B, L) int64 prompt+response right-padded, response_mask (B, L)
    bool (True on predicted response tokens), rewards (B,), truncated (B,) bool (optional); rows
    grouped prompt-major. ref_model is only used (and only needed) when cfg.beta > 0.
    normaliser: see token_weights. Under FSDP pass the global count divided by the world size (the
    gradient all-reduce averages over ranks), so the summed gradient is the global-batch gradient.
    frozen: (old_logp, ref_logp) from frozen_logprobs on these rollouts, computed while the rewards were
    scored; None computes them here, first (the same calls: the two ways give bitwise-equal updates).
    Returns a dict of floats: loss, clip_frac_low, clip_frac_high, ratio, kl, kl_old, entropy (token
    means over all micro-batches and updates; entropy from the first update; NaN when no loss token is
    left, e.g. every response truncated and dropped), grad_norm (mean over updates), reward_mean,
    reward_std, zero_spread, response_len, truncated, tokens.
    model: any causal LM returning logits (B, T, V). A mixture-of-experts model of model.py is balanced by
    DeepSeek-V3's aux-loss-free bias rule (model.py: MoE.update_bias): it counts expert load on the response
    tokens (load_mask) and model.update_router_bias() applies the rule after every optimizer step; models without
    a router (e.g. a Hugging Face one in tests) skip both."""
    old_logp, ref_logp = frozen if frozen is not None else frozen_logprobs(model, rollouts, cfg, ref_model)  # (B, T)
    if cfg.beta > 0 and ref_logp is None:
        raise ValueError("cfg.beta > 0 needs a ref_model (or the ref_logp in frozen)")
    tokens, response_mask, truncated = _rollout_tensors(rollouts, next(model.parameters()).device)
    rewards = rollouts["rewards"].to(tokens.device).float()  # (B,)
    if rewards.shape != tokens.shape[:1]:
        raise ValueError(f"need rewards (B,) for tokens (B, L); got {tuple(rewards.shape)}, {tuple(tokens.shape)}")

    advantages = group_advantages(rewards, cfg.group_size, cfg.std_norm, cfg.unbiased_std)  # (B,) prompt order
    mask = loss_mask(response_mask, rewards, truncated, cfg)[:, 1:]  # (B, T) position t predicts token t+1
    inputs = tokens[:, :-1]  # (B, T)
    targets = tokens[:, 1:].masked_fill(~mask, IGNORE)  # (B, T)
    weights = token_weights(mask, cfg, normaliser)  # (B, T) once for the whole batch
    batches = micro_batches(mask, cfg.micro_batch)  # [(row ids (b,), width)], length-sorted

    sums = dict.fromkeys(("loss", "entropy") + DIAGNOSTICS, 0.0)  # token-weighted sums of the diagnostics
    grad_norms = []
    for update in range(cfg.mu):
        optimizer.zero_grad(set_to_none=True)
        for rows, width in batches:
            stats = response_logprobs(model, inputs[rows, :width], targets[rows, :width], cfg,
                                      return_entropy=update == 0)
            old = old_logp[rows, :width] if old_logp is not None else stats.logp.detach()  # (b, width)
            ref = ref_logp[rows, :width] if ref_logp is not None else None  # (b, width)
            loss, diag = grpo_loss(stats.logp, old, ref, advantages[rows], mask[rows, :width], cfg,
                                   weights[rows, :width], stats.entropy)
            aux = getattr(model, "aux_loss", None)  # MoE balance loss of this forward (a batch mean)
            if isinstance(aux, torch.Tensor):
                loss = loss + aux * (len(rows) / tokens.shape[0])  # micro-batch shares sum to the batch mean
            loss.backward()
            n = diag["tokens"]  # loss tokens in this micro-batch; a mean over none (NaN) adds nothing
            add = lambda mean: torch.where(n > 0, mean * n, 0.0)  # noqa: E731
            sums["loss"] += diag["loss"] / cfg.mu
            for name in DIAGNOSTICS:
                sums[name] += add(diag[name]) / cfg.mu
            if update == 0:
                sums["entropy"] += add(diag["entropy"])
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        grad_norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        optimizer.step()
        if hasattr(model, "update_router_bias"):  # aux-loss-free balancing (see the docstring), once per update
            model.update_router_bias()

    total = float(mask.sum())  # loss tokens, the same in every update
    out = {"loss": float(sums["loss"])}
    for name in ("entropy",) + DIAGNOSTICS:  # token means; absent (NaN) when no token was in the loss
        out[name] = float(sums[name]) / total if total > 0 else float("nan")
    out["grad_norm"] = float(torch.stack(grad_norms).mean())
    out["reward_mean"] = float(rewards.mean())
    out["reward_std"] = float(rewards.std(correction=0))
    out["zero_spread"] = float(zero_spread(rewards, cfg.group_size))
    out["response_len"] = float(response_mask.sum(dim=1).float().mean())
    out["truncated"] = float(truncated.float().mean())
    out["tokens"] = total
    return out
