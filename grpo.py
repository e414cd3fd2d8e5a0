"""
grpo.py: the GRPO objective (DeepSeekMath, used by DeepSeek-R1) and one RL step from rollouts to
gradients, with the loss variants later work argues for as documented flags.

For each prompt q the sampler draws a group of G responses o_1..o_G and rewards r_1..r_G. GRPO
maximises (no value model; the group mean is the baseline)

    J = 1/G sum_i 1/|o_i| sum_t [ min(rho_it A_i, clip(rho_it, 1-eps_low, 1+eps_high) A_i) - beta KL_it ]
    rho_it = pi(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t)        A_i = (r_i - mean(r)) / (std(r) + eps)
    KL_it  = pi_ref/pi - log(pi_ref/pi) - 1                         (the "k3" estimator, always >= 0)

and we minimise loss = -J. Every aggregation mode is written as per-token weights w, loss =
sum over tokens of w_it * l_it, where l_it is the bracket above with the sign flipped:

    paper default (DeepSeekMath)    w_it = 1 / (|o_i| * n)        n = responses with a loss token
    token_level=True (DAPO)         w_it = 1 / sum_i |o_i|        every token in the batch counts once
    const_norm=L (Dr. GRPO)         w_it = 1 / (L * n)            no per-response length division
    std_norm=False (Dr. GRPO)       advantages are r_i - mean(r), not divided by the group std

drop_equal_groups=True (DAPO) and mask_truncated=True (DAPO's overlong filtering, Dr. GRPO's
"truncated -> 0") remove rows from the loss mask before the weights are computed, so they also
leave the normaliser: n and sum_i |o_i| count only the rows that remain (the remaining rows are
averaged as if the dropped ones had never been sampled). Because the weights are computed once
for the whole batch before it is split, the micro-batch losses add up to the full-batch loss and
gradient accumulation is exact in every mode (the common "mean per micro-batch, divide by the
number of micro-batches" is exact only for the paper mode with equal-sized micro-batches).

Simplifications vs the papers and production trainers (verl, TRL, OpenRLHF):
1. One loss: clipped ratio + k3 KL. No value model, no dual clip, no KL-in-reward, no k1/k2.
2. DAPO's dynamic sampling (re-sampling to refill dropped groups) is the caller's business; here
   drop_equal_groups only masks those groups (their rows sort last and cost width-1 forwards).
3. Old log-probs are recomputed by the trainer (one no_grad pass when mu > 1), not taken from the
   sampler, so the ratio never mixes two numerical paths.
4. Single process. For FSDP, rl_step takes a `normaliser` override so every rank can weight its
   tokens with the global count (see rl_step).
5. Diagnostics are token means over the loss mask (not weighted by w).

Use:
    cfg = GRPOConfig(group_size=8, clip_high=0.28, token_level=True)   # DAPO-style
    stats = rl_step(model, optimizer, {"tokens": tokens, "response_mask": response_mask,
                                       "rewards": rewards, "truncated": truncated}, cfg)
Tests: python -m pytest tests/test_grpo.py -q

Shapes: B batch of responses (= P prompts * G group size), P prompts, G group size,
L rollout length (prompt + response), T = L - 1 predicted positions, V vocab, C model dim,
N loss tokens; b rows and w positions of one micro-batch.
"""
from dataclasses import dataclass

import torch

from kernels import TokenStats, linear_token_logprobs, token_logprobs

IGNORE = -100  # target id for positions outside the loss; the log-prob kernel skips them


@dataclass
class GRPOConfig:
    group_size: int = 8          # G responses per prompt; rows are grouped prompt-major
    clip_low: float = 0.2        # rho is clipped to [1 - clip_low, 1 + clip_high]
    clip_high: float = 0.2       # DAPO "clip-higher": 0.28
    beta: float = 0.0            # k3 KL coefficient; 0 -> no reference model needed
    std_norm: bool = True        # divide advantages by the group std (Dr. GRPO: False)
    token_level: bool = False    # DAPO: average over all tokens in the batch
    const_norm: float = 0        # Dr. GRPO: 0 off, else the constant (e.g. max_new_tokens)
    drop_equal_groups: bool = False  # groups whose rewards are all equal leave the loss
    mask_truncated: bool = False     # responses that hit max_new_tokens leave the loss
    mu: int = 1                  # inner updates per batch (1 = strictly on-policy)
    micro_batch: int = 16        # rows per forward/backward
    max_grad_norm: float = 1.0   # 0 -> no clipping (the norm is still reported)
    temperature: float = 1.0     # the sampling temperature; log-probs are of logits / temperature
    logprob_impl: str = "auto"   # kernels.token_logprobs impl: "auto" | "triton" | "torch"
    fused_head: bool = False     # lm_head fused into the log-prob kernel on loss tokens only (never
                                 # holds (B, T, V) logits); needs model(x, return_hidden=True), model.lm_head

    def __post_init__(self):
        if self.group_size < 1 or self.mu < 1 or self.micro_batch < 1:
            raise ValueError(f"group_size, mu and micro_batch must be >= 1, got "
                             f"{self.group_size}, {self.mu}, {self.micro_batch}")
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0):
            raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {self.clip_low}, {self.clip_high}")
        if self.beta < 0 or self.const_norm < 0 or self.max_grad_norm < 0 or self.temperature <= 0:
            raise ValueError("beta, const_norm, max_grad_norm must be >= 0 and temperature > 0")
        if self.token_level and self.const_norm:
            raise ValueError("token_level and const_norm are two different normalisers; set one")
        if self.logprob_impl not in ("auto", "triton", "torch"):
            raise ValueError(f"logprob_impl must be 'auto', 'triton' or 'torch', got {self.logprob_impl!r}")


# ----------------------------------------------------------------------------- advantages and weights

def _groups(rewards, group_size):
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a length divisible by group_size={group_size}, "
                         f"got shape {tuple(rewards.shape)}")
    return rewards.float().view(-1, group_size)  # (P, G)


def group_spread(rewards, group_size):
    """(B,) bool: True for rows whose group has at least two different rewards."""
    r = _groups(rewards, group_size)  # (P, G)
    spread = r.amax(dim=1) > r.amin(dim=1)  # (P,)
    return spread.repeat_interleave(group_size)  # (B,)


def group_advantages(rewards, group_size, std_norm=True, eps=1e-4):
    """A_i = (r_i - mean of its group) / (std of its group + eps); (B,) float32.
    std is the population std of the group. Groups with equal rewards get exactly 0 (not a
    rounding residue of r - mean), so they contribute exactly no policy gradient."""
    r = _groups(rewards, group_size)  # (P, G)
    adv = r - r.mean(dim=1, keepdim=True)  # (P, G)
    if std_norm:
        adv = adv / (r.std(dim=1, keepdim=True, correction=0) + eps)  # (P, G)
    adv = adv.flatten()  # (B,)
    return torch.where(group_spread(rewards, group_size), adv, torch.zeros_like(adv))  # (B,)


def loss_mask(response_mask, rewards, truncated, cfg):
    """(B, L) bool: the response tokens that enter the loss, after drop_equal_groups / mask_truncated."""
    keep = torch.ones_like(rewards, dtype=torch.bool)  # (B,)
    if cfg.drop_equal_groups:
        keep &= group_spread(rewards, cfg.group_size)
    if cfg.mask_truncated and truncated is not None:
        keep &= ~truncated.bool()
    return response_mask.bool() & keep[:, None]  # (B, L)


def token_weights(mask, cfg, normaliser=None):
    """Per-token weights w (B, T) float32 with loss = sum(w * per_token_loss); see the module docstring.
    normaliser overrides the batch count the weights divide by: the number of loss tokens when
    cfg.token_level, else the number of responses (rows with at least one loss token)."""
    m = mask.float()  # (B, T)
    lengths = m.sum(dim=1)  # (B,)
    if cfg.token_level:
        count = lengths.sum() if normaliser is None else torch.tensor(float(normaliser))
        return m / count.to(m.device).clamp(min=1)  # (B, T)
    n = (lengths > 0).sum().float() if normaliser is None else torch.tensor(float(normaliser))
    per_row = torch.full_like(lengths, cfg.const_norm) if cfg.const_norm else lengths.clamp(min=1)  # (B,)
    return m / (per_row * n.to(m.device).clamp(min=1))[:, None]  # (B, T)


# ----------------------------------------------------------------------------- the loss

def k3_kl(logp, ref_logp):
    """Per-token k3 estimate of KL(pi || pi_ref): pi_ref/pi - log(pi_ref/pi) - 1 >= 0, same shape.
    The log-ratio is capped at 40 (exp(40) ~ 2e17) so fp32 stays finite for far-off tokens."""
    d = (ref_logp - logp).clamp(max=40.0)  # same shape as logp
    return torch.exp(d) - d - 1


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, cfg, weights=None, entropy=None):
    """The GRPO loss for one (micro-)batch of per-token log-probs.
    logp (B, T) of the current policy (with grad); old_logp (B, T) of the sampling policy; ref_logp
    (B, T) of the reference or None (needed when cfg.beta > 0); advantages (B,); mask (B, T) bool;
    weights (B, T) from token_weights (computed from mask with cfg when None); entropy (B, T) or None.
    Returns (loss, diagnostics): loss = sum(w * (-min(rho A, clip(rho) A) + beta * k3)); diagnostics
    are detached 0-dim tensors, token means over the mask."""
    if cfg.beta > 0 and ref_logp is None:
        raise ValueError("cfg.beta > 0 needs ref_logp (log-probs of the reference policy)")
    mask = mask.bool()
    weights = token_weights(mask, cfg) if weights is None else weights  # (B, T)
    adv = advantages.float()[:, None]  # (B, 1)
    log_ratio = (logp - old_logp).masked_fill(~mask, 0.0)  # (B, T); masked first: no inf/nan leaks
    ratio = torch.exp(log_ratio)  # (B, T)
    clipped = ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high)  # (B, T)
    per_token = -torch.minimum(ratio * adv, clipped * adv)  # (B, T)
    kl = None
    if ref_logp is not None:
        kl = k3_kl(logp.masked_fill(~mask, 0.0), ref_logp.masked_fill(~mask, 0.0))  # (B, T)
        if cfg.beta > 0:
            per_token = per_token + cfg.beta * kl  # (B, T)
    loss = (weights * per_token.masked_fill(~mask, 0.0)).sum()

    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        mean = lambda x: x.masked_fill(~mask, 0.0).sum() / n
        diag = {
            "loss": loss.detach(),
            "clip_low": mean(((ratio < 1 - cfg.clip_low) & (adv < 0)).float()),   # clip active below
            "clip_high": mean(((ratio > 1 + cfg.clip_high) & (adv > 0)).float()),  # clip active above
            "ratio": mean(ratio),
            "kl_old": mean(k3_kl(logp, old_logp)),  # how far the inner updates moved from pi_old
            "kl": mean(kl) if kl is not None else torch.zeros(()),  # k3 KL to the reference
            "entropy": mean(entropy.float()) if entropy is not None else torch.zeros(()),
            "tokens": mask.sum(),
        }
        if advantages.numel() % cfg.group_size == 0:  # share of groups with no reward spread
            diag["zero_spread"] = (advantages.view(-1, cfg.group_size) == 0).all(dim=1).float().mean()
    return loss, diag


# ----------------------------------------------------------------------------- one RL step

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
    stats = linear_token_logprobs(hidden[keep], model.lm_head.weight, targets[keep], **kw)  # each (N,)
    zeros = torch.zeros(targets.shape, device=hidden.device)  # (B, T)
    return TokenStats(*(zeros.masked_scatter(keep, x) if x is not None else None for x in stats))  # (B, T) each


def micro_batches(mask, micro_batch):
    """[(row ids (b,), width)]: rows sorted by where their last loss token ends, so rows of similar
    length share a micro-batch, and each micro-batch is cut to its longest row (right padding past it
    is never computed). Exact: the weights are per token and causal logits ignore later positions."""
    T = mask.shape[1]
    ends = (mask * torch.arange(1, T + 1, device=mask.device)).amax(dim=1)  # (B,) one past the last loss token
    order = ends.argsort(descending=True, stable=True)  # (B,)
    widths = ends[order].tolist()
    return [(order[i:i + micro_batch], max(widths[i], 1)) for i in range(0, len(widths), micro_batch)]


@torch.no_grad()
def _frozen_logprobs(model, inputs, targets, cfg, batches):
    """Log-probs (B, T) of a frozen policy (the reference, or pi_old before the first update)."""
    out = torch.zeros(targets.shape, device=targets.device)  # (B, T)
    for idx, w in batches:
        out[idx, :w] = response_logprobs(model, inputs[idx, :w], targets[idx, :w], cfg).logp  # (b, w)
    return out


def rl_step(model, optimizer, rollouts, cfg, ref_model=None, normaliser=None):
    """One GRPO batch: cfg.mu optimizer updates on the rollouts, each micro-batched with gradient
    accumulation. rollouts: tokens (B, L) int64 prompt+response right-padded, response_mask (B, L)
    bool (True on predicted response tokens), rewards (B,), truncated (B,) bool (optional); rows
    grouped prompt-major. ref_model is only used (and only needed) when cfg.beta > 0.
    normaliser: see token_weights. Under FSDP pass the global count divided by the world size (the
    gradient all-reduce averages over ranks), so the summed gradient is the global-batch gradient.
    Returns a dict of floats: loss, clip_low, clip_high, ratio, kl, kl_old, entropy (token means over
    all micro-batches and updates; entropy from the first update), grad_norm (mean over updates),
    reward_mean, reward_std, zero_spread, response_len, truncated, tokens."""
    if cfg.beta > 0 and ref_model is None:
        raise ValueError("cfg.beta > 0 needs a ref_model (or set beta=0)")
    device = next(model.parameters()).device
    tokens = rollouts["tokens"].to(device)  # (B, L)
    response_mask = rollouts["response_mask"].to(device).bool()  # (B, L)
    rewards = rollouts["rewards"].to(device).float()  # (B,)
    truncated = rollouts.get("truncated")
    truncated = truncated.to(device).bool() if truncated is not None else torch.zeros_like(rewards, dtype=torch.bool)
    if tokens.dim() != 2 or response_mask.shape != tokens.shape or rewards.shape != tokens.shape[:1]:
        raise ValueError(f"need tokens (B, L), response_mask (B, L), rewards (B,); got {tuple(tokens.shape)}, "
                         f"{tuple(response_mask.shape)}, {tuple(rewards.shape)}")

    advantages = group_advantages(rewards, cfg.group_size, cfg.std_norm)  # (B,)
    mask = loss_mask(response_mask, rewards, truncated, cfg)[:, 1:]  # (B, T) position t predicts token t+1
    inputs = tokens[:, :-1]  # (B, T)
    targets = tokens[:, 1:].masked_fill(~mask, IGNORE)  # (B, T)
    weights = token_weights(mask, cfg, normaliser)  # (B, T) once for the whole batch
    batches = micro_batches(mask, cfg.micro_batch)  # [(row ids (b,), width w)]
    ref_logp = _frozen_logprobs(ref_model, inputs, targets, cfg, batches) if cfg.beta > 0 else None  # (B, T)
    old_logp = _frozen_logprobs(model, inputs, targets, cfg, batches) if cfg.mu > 1 else None  # (B, T)

    n = mask.sum().clamp(min=1).float()  # loss tokens, the same in every update
    sums = dict.fromkeys(["loss", "clip_low", "clip_high", "ratio", "kl", "kl_old", "entropy"], 0.0)
    grad_norms = []
    for update in range(cfg.mu):
        optimizer.zero_grad(set_to_none=True)
        for idx, w in batches:
            stats = response_logprobs(model, inputs[idx, :w], targets[idx, :w], cfg, return_entropy=update == 0)
            old = old_logp[idx, :w] if old_logp is not None else stats.logp.detach()  # (b, w)
            ref = ref_logp[idx, :w] if ref_logp is not None else None  # (b, w)
            loss, diag = grpo_loss(stats.logp, old, ref, advantages[idx], mask[idx, :w], cfg, weights[idx, :w],
                                   stats.entropy)
            aux = getattr(model, "aux_loss", None)  # MoE balance loss of this forward (a batch mean)
            if isinstance(aux, torch.Tensor):
                loss = loss + aux * (len(idx) / tokens.shape[0])  # micro-batch shares sum to the batch mean
            loss.backward()
            share = diag["tokens"] / n  # this micro-batch's share of the loss tokens
            sums["loss"] += diag["loss"] / cfg.mu
            for name in ("clip_low", "clip_high", "ratio", "kl", "kl_old"):
                sums[name] += diag[name] * share / cfg.mu
            if update == 0:
                sums["entropy"] += diag["entropy"] * share
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        grad_norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        optimizer.step()
        if hasattr(model, "update_router_bias"):
            model.update_router_bias()

    out = {name: float(value) for name, value in sums.items()}
    out["grad_norm"] = float(torch.stack(grad_norms).mean())
    out["reward_mean"] = float(rewards.mean())
    out["reward_std"] = float(rewards.std(correction=0))
    out["zero_spread"] = float((~group_spread(rewards, cfg.group_size)).float().mean())
    out["response_len"] = float(response_mask.sum(dim=1).float().mean())
    out["truncated"] = float(truncated.float().mean())
    out["tokens"] = float(mask.sum())
    return out
