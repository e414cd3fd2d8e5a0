"""Tests for model.py: cache/absorb/MoE equivalences, routing and balancing, parameter counts, HF parity."""
import pytest
import torch

from model import PRESETS, ModelConfig, Transformer, cache_bytes_per_token, count_params


def tiny(name, **kw):
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_preset(name, **kw)).eval()


@pytest.mark.parametrize("name", ["tiny-mla", "tiny-gqa", "tiny-moe"])
def test_param_count_matches_instantiated(name):
    m = tiny(name)
    assert m.num_params() == sum(p.numel() for p in m.parameters())


def test_real_preset_param_counts():
    v3 = ModelConfig.from_preset("deepseek-v3")
    assert abs(count_params(v3) / 671e9 - 1) < 0.01 and abs(count_params(v3, active=True) / 37e9 - 1) < 0.03
    assert abs(count_params(ModelConfig.from_preset("qwen2.5-0.5b")) / 494e6 - 1) < 0.01
    assert abs(count_params(ModelConfig.from_preset("llama-3.2-1b")) / 1.236e9 - 1) < 0.01
    assert abs(count_params(ModelConfig.from_preset("deepseek-v2-lite")) / 15.7e9 - 1) < 0.01


def test_mla_cache_smaller_than_gqa():
    v3 = ModelConfig.from_preset("deepseek-v3")
    assert cache_bytes_per_token(v3) == (512 + 64) * 2
    assert cache_bytes_per_token(ModelConfig.from_preset("tiny-gqa")) == 2 * 2 * 16 * 2


@pytest.mark.parametrize("name", ["tiny-mla", "tiny-gqa", "tiny-moe"])
@pytest.mark.parametrize("absorb", [False, True])
def test_cached_decode_equals_full_forward(name, absorb):
    m = tiny(name, mla_absorb=absorb)
    tok = torch.randint(0, 512, (2, 12))
    with torch.no_grad():
        full = m(tok)  # (B, T, V)
        cache = m.make_cache(2, 16)
        outs = [m(tok[:, :7], cache=cache)] + [m(tok[:, t:t + 1], cache=cache) for t in range(7, 12)]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["tiny-mla", "tiny-moe"])
def test_mla_absorbed_equals_naive(name):
    m = tiny(name)
    tok = torch.randint(0, 512, (2, 10))
    with torch.no_grad():
        naive = m(tok)
        m.cfg.mla_absorb = True
        absorbed = m(tok)
    torch.testing.assert_close(absorbed, naive, atol=1e-5, rtol=0)


def test_moe_fast_equals_loop_with_grads():
    m = tiny("tiny-moe").train()
    tok = torch.randint(0, 512, (3, 9))
    out = {}
    for impl in ("loop", "fast"):
        m.cfg.moe_impl = impl
        m.zero_grad()
        logits = m(tok)
        logits.square().mean().backward()
        out[impl] = (logits.detach(), m.layers[1].ffn.w1.grad.clone(), m.layers[1].ffn.gate.weight.grad.clone())
    for a, b in zip(out["loop"], out["fast"]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["tiny-mla", "tiny-gqa"])
def test_left_padded_batch_matches_unpadded_rows(name):
    m = tiny(name)
    a, b = torch.randint(0, 512, (1, 9)), torch.randint(0, 512, (1, 5))
    tokens = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], 1)])  # (2, 9) row 1 left-padded
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, :4] = False
    pos = (valid.cumsum(1) - 1).clamp(min=0)  # (2, 9)
    with torch.no_grad():
        ref_a, ref_b = m(a), m(b)
        cache = m.make_cache(2, 12)
        pre = m(tokens, cache=cache, pos=pos, valid=valid)
        nxt = torch.tensor([[7], [11]])
        step = m(nxt, cache=cache, pos=pos[:, -1:] + 1)
        ref_a2, ref_b2 = m(torch.cat([a, nxt[:1]], 1)), m(torch.cat([b, nxt[1:]], 1))
    torch.testing.assert_close(pre[0], ref_a[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(pre[1, 4:], ref_b[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(step[0, 0], ref_a2[0, -1], atol=1e-5, rtol=0)
    torch.testing.assert_close(step[1, 0], ref_b2[0, -1], atol=1e-5, rtol=0)


def test_cache_select_repeats_and_drops_rows():
    m = tiny("tiny-moe")
    tok = torch.randint(0, 512, (2, 6))
    with torch.no_grad():
        cache = m.make_cache(2, 10)
        m(tok, cache=cache)
        cache.select(torch.tensor([1, 1, 0]))
        nxt = torch.tensor([[3], [3], [5]])
        step = m(nxt, cache=cache)
        ref = m(torch.cat([tok[[1, 1, 0]], nxt], 1))[:, -1]
    torch.testing.assert_close(step[:, 0], ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="cache full"):
        m(torch.zeros(3, 5, dtype=torch.long), cache=cache)
