"""
Tests for kernels.py: the PyTorch twin against autograd.gradcheck and a naive log_softmax reference;
the Triton kernels against the twin under TRITON_INTERPRET=1 on CPU (in a subprocess, because
triton.jit reads the variable when kernels.py is imported); bf16 at real vocab sizes on a GPU.

Run: python -m pytest tests/test_kernels.py -q
     TRITON_INTERPRET=1 python tests/test_kernels.py      # just the interpreter checks, verbose
"""
import math
import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import kernels  # noqa: E402
from kernels import backward_torch, forward_torch, linear_token_logprobs, token_logprobs  # noqa: E402

IGNORE = -100


def make_case(N, V, seed=0, dtype=torch.float32, masked=(0, 5), device="cpu"):
    """logits (N, V) * 3, targets (N,) with some rows = IGNORE, near-policy ref log-probs (N,)."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(N, V, generator=g, dtype=torch.float64) * 3).to(dtype)  # (N, V)
    targets = torch.randint(0, V, (N,), generator=g)                               # (N,)
    targets[[i for i in masked if i < N]] = IGNORE
    ref = torch.randn(N, generator=g, dtype=torch.float64) * 0.3                   # (N,)
    return logits.to(device), targets.to(device), ref.to(device)


def weighted_loss(stats, seed=1):
    """Sum of each output times fixed random weights, so every upstream gradient is non-trivial."""
    g = torch.Generator().manual_seed(seed)
    loss = 0.0
    for out in stats:
        if out is not None:
            w = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)  # (N,)
            loss = loss + (out * w).sum()
    return loss


# ----------------------------------------------------------------------------------------------
# PyTorch twin

def test_twin_gradcheck_float64():
    logits, targets, ref = make_case(5, 7, masked=(1,), dtype=torch.float64)
    logits.requires_grad_()
    ref = forward_torch(logits.detach(), targets, 0.7)[0] + ref  # (N,) near the policy

    def f(x):
        logp, ent, kl, _ = forward_torch(x, targets, 0.7, ref, True, IGNORE)
        return logp, ent, kl
    assert torch.autograd.gradcheck(f, (logits,))


@pytest.mark.parametrize("entropy,kl", [(False, False), (True, False), (False, True), (True, True)])
def test_backward_twin_matches_autograd(entropy, kl):
    logits, targets, ref = make_case(6, 11, masked=(2,), dtype=torch.float64)
    logits.requires_grad_()
    tau = 1.3
    ref = forward_torch(logits.detach(), targets, tau)[0] + ref if kl else None  # (N,)
    logp, ent, klv, lse = forward_torch(logits, targets, tau, ref, entropy, IGNORE)
    g = [torch.randn(6, dtype=torch.float64) for _ in range(3)]
    loss = (logp * g[0]).sum()
    loss = loss + ((ent * g[1]).sum() if entropy else 0) + ((klv * g[2]).sum() if kl else 0)
    expected, = torch.autograd.grad(loss, logits)
    got = backward_torch(logits.detach(), targets, lse.detach(), ent.detach() if entropy else None,
                         logp.detach(), ref, g[0], g[1] if entropy else None,
                         g[2] if kl else None, tau, IGNORE)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-10)
    assert got[2].abs().max() == 0  # masked row


def test_twin_matches_naive_reference():
    logits, targets, ref = make_case(9, 33, masked=(3, 4))
    tau = 0.6
    stats = token_logprobs(logits, targets, tau, ref, return_entropy=True, impl="torch")
    logz = torch.log_softmax(logits.double() / tau, -1)                          # (N, V)
    valid = targets != IGNORE
    logp = logz.gather(1, targets.clamp(min=0)[:, None]).squeeze(1) * valid    # (N,)
    ent = torch.distributions.Categorical(logits=logz).entropy() * valid        # (N,)
    d = ref.double() - logp
    kl = (d.exp() - d - 1) * valid                                              # (N,)
    for got, exp in zip(stats, (logp, ent, kl)):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), exp, atol=1e-5, rtol=1e-5)
    assert stats.logp[3] == 0 and stats.entropy[4] == 0 and stats.kl[3] == 0


def test_masked_rows_get_zero_grad_and_leading_shape():
    logits, targets, ref = make_case(12, 20, masked=(0, 7))
    x = logits.view(3, 4, 20).requires_grad_()                                  # (B, T, V)
    stats = token_logprobs(x, targets.view(3, 4), ref_logprobs=ref.view(3, 4), return_entropy=True)
    assert stats.logp.shape == stats.entropy.shape == stats.kl.shape == (3, 4)
    weighted_loss(stats).backward()
    assert x.grad.view(12, 20)[[0, 7]].abs().max() == 0
    assert x.grad.view(12, 20)[1].abs().max() > 0
    assert token_logprobs(logits, targets).entropy is None  # auto on CPU -> torch, no extras


def test_kl_clamp_is_finite():
    logits, targets, _ = make_case(4, 10, masked=())
    ref = torch.full((4,), 500.0)  # exp(500 - logp) would overflow without the clamp
    kl = token_logprobs(logits, targets, ref_logprobs=ref).kl
    assert torch.isfinite(kl).all() and kl.min() > 1e6


def test_k3_hand_values():
    """r = pi_ref / pi: r = 0.5 gives 0.5 - log 0.5 - 1 = 0.193147; r = 2 gives 2 - log 2 - 1 = 0.306853."""
    logp = torch.log(torch.tensor([0.5, 0.25, 0.3]))                            # (N,)
    ref = torch.log(torch.tensor([0.25, 0.5, 0.3]))                             # (N,)
    torch.testing.assert_close(kernels.k3_kl(logp, ref), torch.tensor([0.193147, 0.306853, 0.0]))


def test_k3_clamp_is_one_sided():
    """Policy e^25 above the reference: KL = e^-25 + 25 - 1 = 24 and d KL / d logp = 1 - e^-25 = 1.
    (A two-sided clamp at 20 read 19 with gradient 0.) Above the clamp the value saturates, gradient 0.
    The same through the PyTorch twin's forward and its hand-written backward."""
    logp = torch.tensor([-1.0, -30.0], dtype=torch.float64, requires_grad=True)  # (N,)
    ref = torch.tensor([-26.0, -1.0], dtype=torch.float64)                      # (N,) d = -25, +29
    kl = kernels.k3_kl(logp, ref)                                               # (N,)
    kl.sum().backward()
    cap = kernels.KL_CLAMP
    torch.testing.assert_close(kl.detach(), torch.tensor([24.0, torch.e ** cap - cap - 1], dtype=torch.float64))
    torch.testing.assert_close(logp.grad, torch.tensor([1.0, 0.0], dtype=torch.float64))
    # the fused path: two equal logits (logp = log 0.5), reference 25 below / 25 above the policy
    logits = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)         # (N, V)
    targets = torch.tensor([0, 0])                                              # (N,)
    ref = math.log(0.5) + torch.tensor([-25.0, 25.0], dtype=torch.float64)      # (N,)
    stats = token_logprobs(logits, targets, ref_logprobs=ref, impl="torch")
    assert stats.kl[0].item() == pytest.approx(24.0, abs=1e-6)
    logp, _, _, lse = forward_torch(logits.detach(), targets, 1.0, ref)
    ones = torch.ones(2, dtype=torch.float64)                                   # (N,)
    dz = backward_torch(logits.detach(), targets, lse, None, logp, ref, 0 * ones, None, ones)  # (N, V) of sum(kl)
    (auto,) = torch.autograd.grad(stats.kl.sum(), logits)
    torch.testing.assert_close(dz, auto)
    torch.testing.assert_close(dz[0], torch.tensor([0.5, -0.5], dtype=torch.float64))  # 1 * (1[j = y] - p_j)
    assert dz[1].abs().max() == 0                                               # clamped side: no gradient


def test_bad_inputs_raise():
    logits, targets, ref = make_case(4, 10)
    with pytest.raises(ValueError, match="targets shape"):
        token_logprobs(logits, targets[:3])
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        token_logprobs(logits, torch.tensor([0, 1, 10, IGNORE]))
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, targets, temperature=0.0)
    with pytest.raises(ValueError, match="impl"):
        token_logprobs(logits, targets, impl="cuda")
    with pytest.raises(ValueError, match="ref_logprobs"):
        token_logprobs(logits, targets, ref_logprobs=ref[:2])
    if not kernels.INTERPRET:
        with pytest.raises(ValueError, match="triton"):
            token_logprobs(logits, targets, impl="triton")


def test_import_without_triton():
    """kernels.py imports and works (impl auto/torch) where triton is missing."""
    code = ("import sys; sys.modules['triton'] = None; import torch, kernels; "
            "s = kernels.token_logprobs(torch.randn(3, 9), torch.tensor([1, 2, -100])); "
            "assert kernels.triton is None and s.logp[2] == 0; print('ok')")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                       timeout=120)
    assert r.stdout.strip() == "ok", r.stderr[-2000:]


def test_linear_matches_full_logits():
    torch.manual_seed(0)
    N, C, V = 13, 8, 29
    h = torch.randn(N, C, dtype=torch.float64, requires_grad=True)             # (N, C)
    w = torch.randn(V, C, dtype=torch.float64, requires_grad=True)             # (V, C)
    _, targets, ref = make_case(N, V, masked=(2, 11))
    a = linear_token_logprobs(h, w, targets, 0.8, ref, True, chunk_size=4, impl="torch")
    b = token_logprobs(h @ w.t(), targets, 0.8, ref, True, impl="torch")
    ga = torch.autograd.grad(weighted_loss(a), (h, w))
    gb = torch.autograd.grad(weighted_loss(b), (h, w))
    for x, y in zip((*a, *ga), (*b, *gb)):
        torch.testing.assert_close(x, y, atol=1e-10, rtol=1e-10)


def test_linear_saves_no_logits():
    """The chunked variant keeps only inputs and per-row stats for backward, never (N, V)."""
    N, C, V = 64, 8, 300
    h = torch.randn(N, C, requires_grad=True)                                   # (N, C)
    w = torch.randn(V, C, requires_grad=True)                                   # (V, C)
    targets = torch.randint(0, V, (N,))                                         # (N,)
    for fn, expect_logits in [(linear_token_logprobs, False), (None, True)]:
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t,
                                                      lambda t: t):
            if fn is None:
                stats = token_logprobs(h @ w.t(), targets, return_entropy=True, impl="torch")
            else:
                stats = fn(h, w, targets, return_entropy=True, chunk_size=16, impl="torch")
        assert (max(saved) >= N * V) == expect_logits, saved
        weighted_loss(stats).backward()


# ----------------------------------------------------------------------------------------------
# Triton kernels under the CPU interpreter (subprocess: TRITON_INTERPRET must precede the import)

def interpreter_checks():
    """Triton vs twin in fp32 within 1e-5: N=37, V=517, several block sizes, temperatures, masked
    rows, entropy and KL on/off; plus bf16 and the fused-linear variant. Prints each case."""
    assert kernels.INTERPRET, "run with TRITON_INTERPRET=1"
    N, V = 37, 517
    cases = [  # (entropy, kl, temperature, BLOCK_V)
        (False, False, 1.0, 128), (True, False, 0.7, 128), (False, True, 0.7, 128),
        (True, True, 1.3, 128), (True, True, 0.7, 1024)]
    for entropy, kl, tau, block in cases:
        logits, targets, ref = make_case(N, V, seed=block)
        ref = (forward_torch(logits, targets, tau)[0] + ref).float() if kl else None  # (N,)
        x = logits.clone().requires_grad_()
        a = token_logprobs(x, targets, tau, ref, entropy, impl="triton", block_v=block)
        ga, = torch.autograd.grad(weighted_loss(a), x)
        b = token_logprobs(logits.requires_grad_(), targets, tau, ref, entropy, impl="torch")
        gb, = torch.autograd.grad(weighted_loss(b), logits)
        for u, w in zip((*a, ga), (*b, gb)):
            assert (u is None) == (w is None)
            if u is not None:
                torch.testing.assert_close(u, w, atol=1e-5, rtol=1e-5)
        assert ga[0].abs().max() == 0 and ga[1].abs().max() > 0
        print(f"ok entropy={entropy} kl={kl} tau={tau} BLOCK_V={block} "
              f"max|dlogp|={(a.logp - b.logp).abs().max():.1e} max|dgrad|={(ga - gb).abs().max():.1e}")
    logits, targets, _ = make_case(7, 300, dtype=torch.bfloat16)  # bf16 in, bf16 grad out
    x = logits.clone().requires_grad_()
    a = token_logprobs(x, targets, return_entropy=True, impl="triton", block_v=128)
    weighted_loss(a).backward()
    xf = logits.float().requires_grad_()                                         # (N, V)
    b = token_logprobs(xf, targets, return_entropy=True, impl="torch")
    gb, = torch.autograd.grad(weighted_loss(b), xf)
    torch.testing.assert_close(a.logp, b.logp, atol=1e-5, rtol=1e-5)
    assert x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(x.grad.float(), gb.float(), atol=2e-2, rtol=1e-2)
    print("ok bf16")
    torch.manual_seed(0)
    h = torch.randn(10, 8, requires_grad=True)                                  # (N, C)
    w = torch.randn(300, 8, requires_grad=True)                                 # (V, C)
    _, targets, ref = make_case(10, 300)
    ref = (forward_torch(h.detach() @ w.detach().t(), targets, 0.9)[0] + ref).float()  # (N,)
    outs = [linear_token_logprobs(h, w, targets, 0.9, ref, True, chunk_size=4, impl=impl)
            for impl in ("triton", "torch")]
    grads = [torch.autograd.grad(weighted_loss(o), (h, w)) for o in outs]
    for u, v in zip((*outs[0], *grads[0]), (*outs[1], *grads[1])):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-5)
    print("ok linear_token_logprobs")
    logits, targets, _ = make_case(6, 200, masked=())                            # reference far from the policy
    logp = forward_torch(logits, targets)[0]                                    # (N,)
    ref = logp + torch.tensor([-25.0, -5.0, 0.0, 5.0, 19.0, 29.0])              # (N,) both sides of the clamp
    outs = []
    for impl in ("triton", "torch"):
        x = logits.clone().requires_grad_()
        s = token_logprobs(x, targets, ref_logprobs=ref, impl=impl, block_v=64 if impl == "triton" else None)
        outs.append((s.kl, *torch.autograd.grad(s.kl.sum(), x)))
    for u, v in zip(*outs):
        torch.testing.assert_close(u, v, atol=1e-4, rtol=1e-5)
    assert abs(outs[0][0][0].item() - 24.0) < 1e-4                              # low side exact, not clamped
    print("ok k3 far from the reference")
    x = torch.randn(5, 100, requires_grad=True)                                 # (N, V) all masked
    s = token_logprobs(x, torch.full((5,), IGNORE), ref_logprobs=torch.zeros(5), return_entropy=True,
                       impl="triton", block_v=64)
    weighted_loss(s).backward()
    assert all(u.abs().max() == 0 for u in s) and x.grad.abs().max() == 0
    assert token_logprobs(x[:0], torch.zeros(0, dtype=torch.long), impl="triton").logp.shape == (0,)
    print("ok all rows masked, N=0")


def test_triton_interpreter_matches_twin():
    pytest.importorskip("triton")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    assert r.stdout.count("ok ") == 9, r.stdout


# ----------------------------------------------------------------------------------------------
# GPU: bf16 kernels against an fp32 reference at real vocabulary sizes

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("V", [32768, 129280, 151936])
def test_gpu_bf16_real_vocab(V):
    logits, targets, ref = make_case(257, V, dtype=torch.bfloat16, masked=(0, 100), device="cuda")
    ref = (forward_torch(logits, targets, 0.8)[0] + ref).float()                # (N,)
    x = logits.clone().requires_grad_()
    a = token_logprobs(x, targets, 0.8, ref, True, impl="triton")
    weighted_loss(a).backward()
    xf = logits.float().requires_grad_()                                         # (N, V) fp32 ref
    b = token_logprobs(xf, targets, 0.8, ref, True, impl="torch")
    weighted_loss(b).backward()
    torch.testing.assert_close(a.logp, b.logp, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(a.entropy, b.entropy, atol=5e-3, rtol=1e-4)
    torch.testing.assert_close(a.kl, b.kl, atol=1e-3, rtol=1e-3)
    assert x.grad.dtype == torch.bfloat16 and x.grad[[0, 100]].abs().max() == 0
    err = (x.grad.float() - xf.grad).abs().max()
    assert err <= 1e-2 * xf.grad.abs().max(), err


@cuda
def test_gpu_int64_offsets():
    N, V = 14200, 151936  # N * V > 2^31
    assert N * V > 2**31
    logits = torch.randn(N, V, device="cuda", dtype=torch.bfloat16)             # (N, V) 4.3 GB
    targets = torch.randint(0, V, (N,), device="cuda")                           # (N,)
    x = logits.requires_grad_()
    a = token_logprobs(x, targets, impl="triton")
    a.logp[-3:].sum().backward()
    tail = logits[-3:].detach().float().requires_grad_()                         # (3, V)
    b = token_logprobs(tail, targets[-3:], impl="torch")
    b.logp.sum().backward()
    torch.testing.assert_close(a.logp[-3:], b.logp, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(x.grad[-3:].float(), tail.grad, atol=1e-2, rtol=1e-2)


if __name__ == "__main__":
    interpreter_checks()
