"""
Fused token log-probabilities for the RL hot path: log p(target), entropy and k3 KL from logits.

RL on a language model needs, for every response token, log p(token) under the policy at a
sampling temperature, often the entropy of that distribution, and sometimes a KL estimate to a
reference model. Done naively (log_softmax, gather, p * log p, ...) that materialises several
(N, V) float32 tensors, which with a 150k vocabulary dominates both memory and time. Here one Triton
program per token row streams the row once with an online softmax (running max and running sum,
fp32 accumulation) and keeps only per-row numbers; the backward streams the row once more and
writes dlogits in one pass. Each kernel has a plain PyTorch twin that is the readable definition and
that the tests hold equal. grpo.py uses the fused log-prob and entropy; it computes the KL itself
with `k3_kl` below on the (B, T) log-probs (elementwise, nothing to fuse), so both paths share one
KL definition and one clamp.

"k3" is the third of the three Monte Carlo KL estimators in J. Schulman, "Approximating KL
Divergence" (2020): with r = pi_ref / pi evaluated at the sampled token, k3 = r - log r - 1. It is
unbiased for KL(pi || pi_ref) under samples from pi, never negative, and has low variance; GRPO
(DeepSeekMath) uses it.

Math (z = logits / tau with tau the sampling temperature, p = softmax(z), lse = logsumexp(z), y the target,
r the reference log-prob):
    logp    = z[y] - lse
    entropy = -sum_j p_j log p_j = lse - sum_j p_j z_j
    kl      = exp(d) - d - 1,  d = min(r - logp, KL_CLAMP)                  (k3 estimator)
    d logp    / dz_j = 1[j = y] - p_j
    d entropy / dz_j = -p_j (z_j - sum_k p_k z_k)
    d kl      / dlogp = 1 - exp(d)   (0 where the clamp is active)
    dlogits_j = (g_logp' (1[j = y] - p_j) - g_ent p_j (z_j - sum_k p_k z_k)) / tau
    with g_logp' = g_logp + g_kl dkl/dlogp (the KL gradient folded into the logp one),
so the backward needs only lse and the entropy per row (sum p z = lse - entropy). The clamp is one-sided:
exp(d) only overflows for large positive d (reference far likelier than the policy); for negative d
(policy far likelier) k3 grows like -d and stays exact, gradient included.

Simplifications vs production kernels (Liger, verl, Unsloth, Cut-CE):
1. One program per row with a scalar running max: no split-row reduction for tiny N, no autotuning
   (block size, warps and pipeline stages picked by `_launch_config`; bench.py sweeps them).
2. The PPO ratio / clipping and the KL of grpo.py stay in PyTorch (they act on (B, T) tensors,
   cheap); only the (N, V) work is fused.
3. No gradient to ref_logprobs (the reference model is frozen).
4. Logits must be finite (like the PyTorch twin, -inf logits give NaN entropy); targets out of range
   raise ValueError (one device sync per call).
5. The kernels are opaque to torch.compile (no torch.library registration).
6. Fused-linear variant (`linear_token_logprobs`) chunks over tokens with a plain matmul per chunk;
   it recomputes the chunk's logits in backward instead of fusing the matmul into the kernel.

Shapes: N flattened tokens (the B x T response tokens of grpo.py, B batch rows, T positions), V vocab,
C model dim. The temperature is `temperature` (tau in the math above), never T.

Use:
    from kernels import token_logprobs
    stats = token_logprobs(logits, targets, temperature=0.7, ref_logprobs=ref, return_entropy=True)
    stats.logp, stats.entropy, stats.kl                    # each (...,) float32, differentiable
    token_logprobs(..., impl="torch")                      # the readable PyTorch definition
    TRITON_INTERPRET=1 python -c "..."                     # impl="triton" on CPU (set before import)
    linear_token_logprobs(hidden, lm_head.weight, targets, ...)  # chunked, never all logits
    k3_kl(logp, ref_logp)                                  # the k3 KL on any log-probs (grpo.py's)
    python -m pytest tests/test_kernels.py                 # twin gradcheck, Triton via interpreter
Avoid logits[:, :-1] (a non-viewable slice is copied to (N, V)); shift targets instead and mark the
last position with ignore_index.
"""
import os
from typing import NamedTuple

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the PyTorch twin still works
    triton = None

KL_CLAMP = 20.0  # upper clamp of d = ref - logp inside k3 so exp(d) cannot overflow; gradient 0 above it
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # read once: triton.jit reads it at import


def _patch_interpreter_index():
    """triton <= 3.6's CPU interpreter converts a scalar kernel argument used as a loop bound (V in
    `tl.range(0, V, ...)`) with int() on a numpy array of shape (1,), which numpy >= 2.4 refuses
    ("only 0-dimensional arrays can be converted"). Re-patch tensor.__index__ to take the single element,
    as newer triton does. Interpreter only (TRITON_INTERPRET=1); compiled kernels are untouched."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "one_element_index", False):
        return

    def index(self):
        return int(self.handle.data.reshape(-1)[0]) if self.handle.data.size == 1 else int(self.handle.data)

    def patched(tensor, *args, **kwargs):
        original(tensor, *args, **kwargs)
        scope = args[0] if args else kwargs.get("scope")
        if scope is not None and hasattr(scope, "set_attr"):  # triton >= 3.5 restores patches via a scope
            scope.set_attr(tensor, "__index__", index)
        else:
            tensor.__index__ = index

    patched.one_element_index = True
    interpreter._patch_lang_tensor = patched


if triton is not None and INTERPRET:
    _patch_interpreter_index()


def k3_kl(logp, ref_logp):
    """The k3 estimate of KL(pi || pi_ref) per token: r - log r - 1 with log r = ref_logp - logp, >= 0.
    logp, ref_logp: log-probs of the sampled tokens, same shape (any); returns that shape.
    log r is clamped above at KL_CLAMP (exp(20) ~ 5e8) so fp32 cannot overflow; below it is exact."""
    d = (ref_logp - logp).clamp(max=KL_CLAMP)  # same shape: log(pi_ref / pi)
    return torch.exp(d) - d - 1


class TokenStats(NamedTuple):
    logp: torch.Tensor                   # (...,) float32 log p(target) at the temperature
    entropy: torch.Tensor | None         # (...,) float32 entropy of softmax(logits / temperature), or None
    kl: torch.Tensor | None              # (...,) float32 k3 KL to the reference, or None


# ----------------------------------------------------------------------------------------------
# PyTorch twins: the readable definitions of the two kernels

def forward_torch(logits, targets, temperature=1.0, ref_logprobs=None, return_entropy=False,
                  ignore_index=-100):
    """Definition of the forward kernel. logits (N, V), targets (N,). Returns (logp, entropy or
    None, kl or None, lse), each (N,), fp32 (fp64 for fp64 logits). Differentiable (autograd)."""
    valid = targets != ignore_index                                   # (N,)
    acc = torch.promote_types(logits.dtype, torch.float32)            # fp32 (fp64 stays fp64)
    z = logits.to(acc) / temperature                                  # (N, V)
    lse = torch.logsumexp(z, dim=-1)                                  # (N,)
    logz = z - lse[:, None]                                           # (N, V) log p
    safe = torch.where(valid, targets, 0)                             # (N,)
    logp = logz.gather(1, safe[:, None]).squeeze(1)                   # (N,)
    logp = torch.where(valid, logp, 0.0)                              # (N,)
    entropy = kl = None
    if return_entropy:
        entropy = -(logz.exp() * logz).sum(-1)                        # (N,)
        entropy = torch.where(valid, entropy, 0.0)                    # (N,)
    if ref_logprobs is not None:
        kl = torch.where(valid, k3_kl(logp, ref_logprobs.to(acc)), 0.0)  # (N,)
    return logp, entropy, kl, lse


def backward_torch(logits, targets, lse, entropy, logp, ref_logprobs, g_logp, g_ent, g_kl,
                   temperature=1.0, ignore_index=-100):
    """Definition of the backward kernel: dlogits (N, V) in logits.dtype from the saved per-row
    statistics (lse, entropy, logp) and the upstream gradients (each (N,), g_ent/g_kl may be None)."""
    valid = targets != ignore_index                                   # (N,)
    acc = torch.promote_types(logits.dtype, torch.float32)            # fp32 (fp64 stays fp64)
    g = g_logp.to(acc)                                                # (N,) total dL/dlogp
    if ref_logprobs is not None and g_kl is not None:
        d = ref_logprobs.to(acc) - logp                               # (N,)
        inside = d <= KL_CLAMP                                        # (N,) k3_kl's clamp
        g = g + g_kl * torch.where(inside, 1 - d.exp(), 0.0)          # (N,)
    z = logits.to(acc) / temperature                                  # (N, V)
    p = torch.exp(z - lse[:, None])                                   # (N, V)
    dz = -g[:, None] * p                                              # (N, V)
    dz.scatter_add_(1, torch.where(valid, targets, 0)[:, None], g[:, None])  # + g 1[j = y]
    if entropy is not None and g_ent is not None:
        mean_z = lse - entropy                                        # (N,) sum_j p_j z_j
        dz -= g_ent[:, None] * p * (z - mean_z[:, None])              # (N, V)
    dz = torch.where(valid[:, None], dz, 0.0)                         # (N, V)
    return (dz / temperature).to(logits.dtype)                        # (N, V)


# ----------------------------------------------------------------------------------------------
# Triton kernels

if triton is not None:

    @triton.jit
    def _fwd_kernel(logits_ptr, row_stride, targets_ptr, ref_ptr, logp_ptr, ent_ptr, kl_ptr,
                    lse_ptr, V, inv_temp, ignore_index, kl_clamp,
                    HAS_ENT: tl.constexpr, HAS_REF: tl.constexpr, BLOCK_V: tl.constexpr,
                    NUM_STAGES: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)  # int64: row * row_stride may exceed 2^31
        row_ptr = logits_ptr + row * row_stride
        y = tl.load(targets_ptr + row)
        valid = y != ignore_index
        n_cols = tl.where(valid, V, 0)  # masked rows load nothing
        m = -float("inf")  # running max of z
        s = 0.0            # running sum of exp(z - m)
        a = 0.0            # running sum of exp(z - m) * z  (entropy only)
        for start in tl.range(0, V, BLOCK_V, num_stages=NUM_STAGES):  # pipelined loads
            cols = start + tl.arange(0, BLOCK_V)
            in_row = cols < n_cols
            z = tl.load(row_ptr + cols, mask=in_row, other=-float("inf")).to(tl.float32) * inv_temp
            m_new = tl.maximum(m, tl.max(z, 0))
            alpha = tl.exp(m - m_new)  # rescales the old sums to the new max
            e = tl.exp(z - m_new)
            s = s * alpha + tl.sum(e, 0)
            if HAS_ENT:
                a = a * alpha + tl.sum(tl.where(in_row, e * z, 0.0), 0)
            m = m_new
        lse = tl.where(valid, m + tl.log(s), 0.0)  # 0 on masked rows keeps backward finite
        z_y = tl.load(row_ptr + tl.where(valid, y, 0)).to(tl.float32) * inv_temp
        logp = tl.where(valid, z_y - lse, 0.0)
        tl.store(lse_ptr + row, lse)
        tl.store(logp_ptr + row, logp)
        if HAS_ENT:
            tl.store(ent_ptr + row, tl.where(valid, lse - a / s, 0.0))
        if HAS_REF:
            d = tl.load(ref_ptr + row) - logp
            d = tl.minimum(d, kl_clamp)  # k3_kl's one-sided clamp
            tl.store(kl_ptr + row, tl.where(valid, tl.exp(d) - d - 1.0, 0.0))

    @triton.jit
    def _bwd_kernel(logits_ptr, row_stride, dlogits_ptr, targets_ptr, lse_ptr, ent_ptr, logp_ptr,
                    ref_ptr, g_logp_ptr, g_ent_ptr, g_kl_ptr, V, inv_temp, ignore_index, kl_clamp,
                    HAS_ENT: tl.constexpr, HAS_REF: tl.constexpr, BLOCK_V: tl.constexpr,
                    NUM_STAGES: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + row * row_stride
        drow_ptr = dlogits_ptr + row * V  # dlogits is contiguous (N, V)
        y = tl.load(targets_ptr + row)
        valid = y != ignore_index
        lse = tl.load(lse_ptr + row)
        g = tl.load(g_logp_ptr + row)  # total dL/dlogp, KL folded in below
        if HAS_REF:
            d = tl.load(ref_ptr + row) - tl.load(logp_ptr + row)
            inside = d <= kl_clamp
            g += tl.load(g_kl_ptr + row) * tl.where(inside, 1.0 - tl.exp(d), 0.0)
        g_ent = 0.0
        mean_z = 0.0  # sum_j p_j z_j = lse - entropy
        if HAS_ENT:
            g_ent = tl.load(g_ent_ptr + row)
            mean_z = lse - tl.load(ent_ptr + row)
        n_cols = tl.where(valid, V, 0)  # masked rows load nothing, store zeros
        for start in tl.range(0, V, BLOCK_V, num_stages=NUM_STAGES):  # pipelined loads
            cols = start + tl.arange(0, BLOCK_V)
            in_vocab = cols < V
            z = tl.load(row_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32) * inv_temp
            p = tl.exp(z - lse)
            dz = g * (tl.where(cols == y, 1.0, 0.0) - p)
            if HAS_ENT:
                dz -= g_ent * p * (z - mean_z)
            dz = tl.where(valid, dz * inv_temp, 0.0)
            tl.store(drow_ptr + cols, dz.to(dlogits_ptr.dtype.element_ty), mask=in_vocab)


def _launch_config(V, block_v=None, num_stages=None):
    """(BLOCK_V, num_warps, NUM_STAGES): blocks of up to 4096 columns (loop over the rest), ~16
    columns per thread (a power of two in 4..16 warps), the next block's load in flight."""
    block_v = block_v or min(4096, triton.next_power_of_2(V))
    return block_v, max(4, min(16, block_v // 512)), num_stages or 2


def _check_triton(logits):
    if triton is None:
        raise ValueError("impl='triton' needs the triton package; use impl='torch' or 'auto'")
    if not (logits.is_cuda or INTERPRET):
        raise ValueError("impl='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before "
                         "kernels.py is imported (CPU interpreter); use impl='torch' or 'auto'")


def forward_triton(logits, targets, temperature=1.0, ref_logprobs=None, return_entropy=False,
                   ignore_index=-100, block_v=None, num_stages=None):
    """Triton forward. logits (N, V) with unit column stride, targets (N,) int64.
    Returns fp32 (logp, entropy or None, kl or None, lse), each (N,). Not differentiable."""
    _check_triton(logits)
    N, V = logits.shape
    f32 = dict(dtype=torch.float32, device=logits.device)
    logp, lse = torch.empty(N, **f32), torch.empty(N, **f32)            # (N,) (N,)
    ent = torch.empty(N, **f32) if return_entropy else None             # (N,)
    kl = torch.empty(N, **f32) if ref_logprobs is not None else None    # (N,)
    ref = ref_logprobs.float().contiguous() if ref_logprobs is not None else None  # (N,)
    if N == 0:
        return logp, ent, kl, lse
    block, warps, stages = _launch_config(V, block_v, num_stages)
    _fwd_kernel[(N,)](logits, logits.stride(0), targets, ref if ref is not None else logp,
                      logp, ent if ent is not None else logp, kl if kl is not None else logp, lse,
                      V, 1.0 / temperature, ignore_index, KL_CLAMP,
                      HAS_ENT=ent is not None, HAS_REF=ref is not None, BLOCK_V=block,
                      NUM_STAGES=stages, num_warps=warps)
    return logp, ent, kl, lse


def backward_triton(logits, targets, lse, entropy, logp, ref_logprobs, g_logp, g_ent, g_kl,
                    temperature=1.0, ignore_index=-100, block_v=None, num_stages=None):
    """Triton backward: dlogits (N, V) contiguous in logits.dtype, one pass over the logits."""
    _check_triton(logits)
    N, V = logits.shape
    dlogits = torch.empty((N, V), dtype=logits.dtype, device=logits.device)  # (N, V)
    if N == 0:
        return dlogits
    has_ent = entropy is not None and g_ent is not None
    has_ref = ref_logprobs is not None and g_kl is not None
    contig = lambda t: t.float().contiguous() if t is not None else lse  # noqa: E731 (lse fills unread slots)
    block, warps, stages = _launch_config(V, block_v, num_stages)
    _bwd_kernel[(N,)](logits, logits.stride(0), dlogits, targets, lse, contig(entropy), logp,
                      contig(ref_logprobs), contig(g_logp), contig(g_ent), contig(g_kl),
                      V, 1.0 / temperature, ignore_index, KL_CLAMP,
                      HAS_ENT=has_ent, HAS_REF=has_ref, BLOCK_V=block, NUM_STAGES=stages,
                      num_warps=warps)
    return dlogits


class TokenLogprobsFn(torch.autograd.Function):
    """Autograd wrapper: Triton forward saves (lse, entropy, logp), Triton backward writes dlogits."""

    @staticmethod
    def forward(ctx, logits, targets, ref_logprobs, temperature, return_entropy, ignore_index,
                block_v=None, num_stages=None):
        logp, ent, kl, lse = forward_triton(logits, targets, temperature, ref_logprobs,
                                            return_entropy, ignore_index, block_v, num_stages)
        ctx.save_for_backward(logits, targets, lse, ent, logp, ref_logprobs)
        ctx.args = (temperature, ignore_index, block_v, num_stages)
        ctx.mark_non_differentiable(lse)
        return logp, ent, kl, lse

    @staticmethod
    def backward(ctx, g_logp, g_ent, g_kl, _g_lse):
        logits, targets, lse, ent, logp, ref = ctx.saved_tensors
        temperature, ignore_index, block_v, num_stages = ctx.args
        dlogits = backward_triton(logits, targets, lse, ent, logp, ref, g_logp, g_ent, g_kl,
                                  temperature, ignore_index, block_v, num_stages)
        return dlogits, None, None, None, None, None, None, None


# ----------------------------------------------------------------------------------------------
# Public entry points

def _check_inputs(logits, targets, temperature, ref_logprobs, impl, V):
    if impl not in ("auto", "triton", "torch"):
        raise ValueError(f"impl must be 'auto', 'triton' or 'torch', got {impl!r}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor, got {logits.dtype}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"targets must be an integer tensor, got {targets.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if ref_logprobs is not None and ref_logprobs.shape != targets.shape:
        raise ValueError(f"ref_logprobs shape {tuple(ref_logprobs.shape)} must equal targets "
                         f"shape {tuple(targets.shape)}")
    if V == 0:
        raise ValueError("logits must have a non-empty vocabulary (last) dimension")


def _check_targets(targets, V, ignore_index):
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= V))  # (N,)
    if bad.any():
        raise ValueError(f"targets must be in [0, {V}) or equal ignore_index={ignore_index}; "
                         f"got {targets[bad][:5].tolist()}")


def _use_triton(impl, device):
    return impl == "triton" or (impl == "auto" and triton is not None and device.type == "cuda")


def token_logprobs(logits, targets, temperature=1.0, ref_logprobs=None, return_entropy=False,
                   ignore_index=-100, impl="auto", block_v=None,
                   num_stages=None) -> TokenStats:
    """log p(target), optional entropy and k3 KL from logits (..., V) and targets (...).
    Outputs have the leading shape, fp32, differentiable w.r.t. logits; rows with
    target == ignore_index give 0 and zero gradient. impl: "auto" (Triton on CUDA, else torch),
    "triton" or "torch". block_v, num_stages: Triton tuning knobs (None: `_launch_config`)."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits shape {tuple(logits.shape)} must be targets shape "
                         f"{tuple(targets.shape)} + (V,)")
    V = logits.shape[-1]
    _check_inputs(logits, targets, temperature, ref_logprobs, impl, V)
    lead = targets.shape
    x = logits.reshape(-1, V)                                           # (N, V) view when possible
    if x.stride(-1) != 1:
        x = x.contiguous()                                              # (N, V)
    t = targets.reshape(-1).long().contiguous()                         # (N,)
    _check_targets(t, V, ignore_index)
    ref = ref_logprobs.reshape(-1).contiguous() if ref_logprobs is not None else None  # (N,)
    if _use_triton(impl, logits.device):
        logp, ent, kl, _ = TokenLogprobsFn.apply(x, t, ref, temperature, return_entropy,
                                                 ignore_index, block_v, num_stages)
    else:
        logp, ent, kl, _ = forward_torch(x, t, temperature, ref, return_entropy, ignore_index)
    shape = lambda u: u.view(lead) if u is not None else None  # noqa: E731
    return TokenStats(shape(logp), shape(ent), shape(kl))


class LinearTokenLogprobsFn(torch.autograd.Function):
    """hidden (N, C) @ weight.T -> token stats, chunk_size tokens at a time; backward recomputes
    each chunk's logits, so at most one (chunk, V) logits and one dlogits block are alive."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, ref_logprobs, temperature, return_entropy,
                ignore_index, chunk_size, use_triton):
        fwd = forward_triton if use_triton else forward_torch
        outs = []
        for i in range(0, hidden.shape[0], chunk_size):
            logits = hidden[i:i + chunk_size] @ weight.t()              # (n, V)
            ref = ref_logprobs[i:i + chunk_size] if ref_logprobs is not None else None  # (n,)
            outs.append(fwd(logits, targets[i:i + chunk_size], temperature, ref,
                            return_entropy, ignore_index))
        cat = lambda k: torch.cat([o[k] for o in outs]) if outs[0][k] is not None else None  # noqa
        logp, ent, kl, lse = cat(0), cat(1), cat(2), cat(3)            # each (N,)
        ctx.save_for_backward(hidden, weight, targets, lse, ent, logp, ref_logprobs)
        ctx.args = (temperature, ignore_index, chunk_size, use_triton)
        return logp, ent, kl

    @staticmethod
    def backward(ctx, g_logp, g_ent, g_kl):
        hidden, weight, targets, lse, ent, logp, ref = ctx.saved_tensors
        temperature, ignore_index, chunk_size, use_triton = ctx.args
        bwd = backward_triton if use_triton else backward_torch
        dhidden = torch.empty_like(hidden)                              # (N, C)
        acc = torch.promote_types(weight.dtype, torch.float32)         # fp32 accumulation
        dweight = torch.zeros(weight.shape if ctx.needs_input_grad[1] else 0, dtype=acc,
                              device=weight.device)                     # (V, C)
        part = lambda u, i: u[i:i + chunk_size] if u is not None else None  # noqa: E731
        for i in range(0, hidden.shape[0], chunk_size):
            h = hidden[i:i + chunk_size]                                # (n, C)
            logits = h @ weight.t()                                     # (n, V)
            dlogits = bwd(logits, targets[i:i + chunk_size], lse[i:i + chunk_size], part(ent, i),
                          logp[i:i + chunk_size], part(ref, i), g_logp[i:i + chunk_size],
                          part(g_ent, i), part(g_kl, i), temperature, ignore_index)  # (n, V)
            dhidden[i:i + chunk_size] = dlogits @ weight                # (n, C)
            if ctx.needs_input_grad[1]:  # skip for a frozen lm_head
                dweight += dlogits.t() @ h                              # (V, C)
        dweight = dweight.to(weight.dtype) if ctx.needs_input_grad[1] else None
        return dhidden, dweight, None, None, None, None, None, None, None


def linear_token_logprobs(hidden, weight, targets, temperature=1.0, ref_logprobs=None,
                          return_entropy=False, ignore_index=-100, chunk_size=1024,
                          impl="auto") -> TokenStats:
    """Like token_logprobs(hidden @ weight.T, targets, ...) without ever holding all logits:
    hidden (..., C), weight (V, C) (the lm_head), targets (...). Differentiable w.r.t. hidden and
    weight; chunk_size tokens at a time. Peak extra memory, n = min(chunk_size, tokens): the PyTorch
    twin (CPU) holds about 8 (n, V) fp32 buffers at once (logits, scaled logits, probabilities and
    the backward's temporaries; measured 7.1-8.2 by bench.bench_fused_head_memory), so a chunk at
    least as long as the input saves nothing over the plain logits path; the Triton kernels hold
    the (n, V) logits and dlogits blocks (~2; by construction, not measured on a GPU). A trainable
    weight adds its (V, C) fp32 gradient."""
    if hidden.shape[:-1] != targets.shape or weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"need hidden (..., C), weight (V, C), targets (...); got hidden "
                         f"{tuple(hidden.shape)}, weight {tuple(weight.shape)}, targets "
                         f"{tuple(targets.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    V = weight.shape[0]
    _check_inputs(hidden, targets, temperature, ref_logprobs, impl, V)
    h = hidden.reshape(-1, hidden.shape[-1])                            # (N, C)
    t = targets.reshape(-1).long().contiguous()                         # (N,)
    _check_targets(t, V, ignore_index)
    ref = ref_logprobs.reshape(-1).contiguous() if ref_logprobs is not None else None  # (N,)
    use_triton = _use_triton(impl, hidden.device)
    if use_triton:
        _check_triton(hidden)
    logp, ent, kl = LinearTokenLogprobsFn.apply(h, weight, t, ref, temperature, return_entropy,
                                                ignore_index, chunk_size, use_triton)
    shape = lambda u: u.view(targets.shape) if u is not None else None  # noqa: E731
    return TokenStats(shape(logp), shape(ent), shape(kl))
