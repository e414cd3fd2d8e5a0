"""Tests for model.py: cache/absorb/MoE equivalences, routing and balancing, parameter counts, HF parity."""
import pytest
import torch

from model import ModelConfig, Transformer, cache_bytes_per_token, count_params


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny shapes: one intra-op thread is fastest, and avoids OpenMP spin contention on busy shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
@pytest.mark.parametrize("static", [False, True])
def test_cached_decode_equals_full_forward(name, absorb, static):
    """Dynamic cache, and static cache (fixed shapes: device-side slot, attention over all 16 slots) after the
    prefill: both equal one full forward."""
    m = tiny(name, mla_absorb=absorb)
    tok = torch.randint(0, 512, (2, 12))
    with torch.no_grad():
        full = m(tok)  # (B, T, V)
        cache = m.make_cache(2, 16)
        outs = [m(tok[:, :7], cache=cache)]
        if static:
            cache.to_static()
        outs += [m(tok[:, t:t + 1], cache=cache) for t in range(7, 12)]
        assert cache.kv[0][0].shape[1] == 16 and (not static or int(cache.slot) == 12)
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


def test_moe_grouped_mm_bf16_equals_loop():
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("this torch has no _grouped_mm")  # the fast path then uses per-expert matmuls (tested above)
    m = tiny("tiny-moe").to(torch.bfloat16).train()
    x = torch.randn(2, 16, 64, dtype=torch.bfloat16)
    moe = m.layers[1].ffn
    out = {}
    for impl in ("loop", "fast"):
        m.cfg.moe_impl = impl
        moe.zero_grad()
        y = moe(x)
        y.float().square().sum().backward()
        out[impl] = (y.float(), moe.w2.grad.float().clone())
    for a, b in zip(out["loop"], out["fast"]):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


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


def test_bias_update_balances_skewed_router():
    m = tiny("tiny-moe", n_expert_groups=1, n_limited_groups=1, bias_update_speed=0.01).train()
    moe = m.layers[1].ffn
    with torch.no_grad():
        moe.gate.weight[:2] += 0.03  # experts 0 and 1 score high for every token: skewed load
    x = torch.randn(4, 32, 64) + 0.5  # (B, T, C)

    def load_spread():
        moe.load.zero_()
        moe(x)
        load = moe.load / moe.load.sum()  # (E,)
        return (load.max() - load.min()).item()

    before = load_spread()
    for _ in range(40):
        moe(x)
        m.update_router_bias()
    after = load_spread()
    assert before > 0.45 and after < 0.15, (before, after)
    assert moe.bias[0] < 0 and moe.bias[7] > 0  # overloaded expert pushed down, idle one pulled up
    weights = moe.route(x.view(-1, 64))[0]  # (N, K)
    torch.testing.assert_close(weights.sum(-1), torch.full((128,), 2.0))  # normalised * route_scale, no bias


def test_expert_load_and_aux_loss():
    m = tiny("tiny-moe", aux_loss_alpha=0.01).train()
    m(torch.randint(0, 512, (2, 8)))
    loads = m.expert_load()
    assert set(loads) == {1, 2} and all(abs(v.sum().item() - 1) < 1e-6 for v in loads.values())
    assert m.aux_loss.requires_grad and 0 < m.aux_loss.item() < 0.01 * 8 * 2  # alpha * E per layer at most
    m.update_router_bias()
    assert all(l.ffn.load.sum() == 0 for l in m.layers[1:])  # the counts are consumed by the update
    after = m.expert_load()  # ... and logging right after the step still sees the loads the update used
    assert all(torch.equal(after[i], loads[i]) for i in loads)
    with torch.no_grad():  # generation-style forwards neither count load nor produce an aux loss
        m(torch.randint(0, 512, (2, 8)))
    assert all(l.ffn.load.sum() == 0 for l in m.layers[1:]) and m.aux_loss.item() == 0


def test_config_errors_are_actionable():
    with pytest.raises(ValueError, match="attn"):
        ModelConfig(attn="mha")
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelConfig(attn="gqa", n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="n_limited_groups"):
        ModelConfig(n_routed_experts=8, n_expert_groups=2, n_limited_groups=3)
    with pytest.raises(ValueError, match="n_activated_experts"):
        ModelConfig(n_routed_experts=8, n_activated_experts=9)
    with pytest.raises(ValueError, match="tiny-mla"):
        ModelConfig.from_preset("nope")
    with pytest.raises(ValueError, match="valid"):
        ModelConfig.from_preset("tiny-mla", dims=3)


# ---- Hugging Face parity (transformers as the independent reference) -----------------------------------------

transformers = pytest.importorskip("transformers")


def hf_roundtrip(hf, tmp_path, vocab, **kw):
    """Save a random HF model, load it with us, compare logits; then save ours and load it back with HF."""
    hf.eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = Transformer.from_pretrained(str(tmp_path / "hf"), **kw)
    tok = torch.randint(0, vocab, (2, 24))
    with torch.no_grad():
        ref = hf(tok).logits.float()
        out = ours(tok)
    assert (out - ref).abs().max() <= 1e-4
    ours.save_pretrained(str(tmp_path / "ours"), max_shard_bytes=40_000)  # force a sharded checkpoint
    back = type(hf).from_pretrained(str(tmp_path / "ours")).eval()
    ours_back = Transformer.from_pretrained(str(tmp_path / "ours"))  # our sharded checkpoint, read by us
    with torch.no_grad():
        assert (back(tok).logits.float() - out).abs().max() <= 1e-4
        assert (ours_back(tok) - out).abs().max() == 0
    return ours, out, tok


def deepseek_v3(q_lora_rank, yarn, groups=(4, 2)):
    cfg = transformers.DeepseekV3Config(
        vocab_size=96, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=8, num_experts_per_tok=3,
        n_group=groups[0], topk_group=groups[1], first_k_dense_replace=1, q_lora_rank=q_lora_rank, kv_lora_rank=32,
        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, initializer_range=0.1, max_position_embeddings=64,
        rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16, mscale=1.0,
                          mscale_all_dim=0.8, beta_fast=32, beta_slow=1) if yarn else None)
    torch.manual_seed(0)
    hf = transformers.DeepseekV3ForCausalLM(cfg)
    with torch.no_grad():
        for name, buf in hf.named_buffers():
            if "e_score_correction_bias" in name:
                buf.copy_(torch.randn_like(buf) * 0.3)  # the bias must change which experts are picked
    return hf


@pytest.mark.parametrize("q_lora_rank,yarn", [(16, False), (None, True), (16, True)])
def test_deepseek_v3_parity(tmp_path, q_lora_rank, yarn):
    ours, out, tok = hf_roundtrip(deepseek_v3(q_lora_rank, yarn), tmp_path, 96)
    assert ours.cfg.n_expert_groups == 4 and ours.layers[1].ffn.bias.abs().sum() > 0
    absorbed = Transformer.from_pretrained(str(tmp_path / "hf"), mla_absorb=True, rope_interleave=False)
    with torch.no_grad():  # weight-absorbed path + half-split relayout of the rope rows give the same logits
        assert (absorbed(tok) - out).abs().max() <= 1e-4


def test_qwen2_llama_deepseek_v2_parity(tmp_path):
    T = transformers
    torch.manual_seed(0)
    qwen = T.Qwen2ForCausalLM(T.Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    ours, _, _ = hf_roundtrip(qwen, tmp_path / "q", 96)
    assert ours.cfg.qkv_bias and ours.lm_head.weight is ours.embed.weight
    llama = T.LlamaForCausalLM(T.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                 high_freq_factor=4.0, original_max_position_embeddings=8)))
    hf_roundtrip(llama, tmp_path / "l", 96)
    v2 = T.DeepseekV2ForCausalLM(T.DeepseekV2Config(
        vocab_size=96, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, n_shared_experts=2, n_routed_experts=8, num_experts_per_tok=3,
        n_group=4, topk_group=2, topk_method="group_limited_greedy", first_k_dense_replace=1, q_lora_rank=None,
        kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, routed_scaling_factor=1.5))
    ours, _, _ = hf_roundtrip(v2, tmp_path / "v2", 96)
    assert ours.cfg.score_func == "softmax"


def test_rope_layout_mapping_for_gqa(tmp_path):
    m = tiny("tiny-gqa", qkv_bias=False, rope_interleave=True)  # interleaved pairs, as in Meta's original Llama
    m.save_pretrained(str(tmp_path))  # written in the half-split layout transformers' Llama expects
    hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path)).eval()
    again = Transformer.from_pretrained(str(tmp_path), rope_interleave=True)  # relayout back on load
    tok = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        ref = m(tok)
        assert (hf(tok).logits - ref).abs().max() <= 1e-4 and (again(tok) - ref).abs().max() <= 1e-5
    torch.testing.assert_close(again.layers[0].attn.wq.weight, m.layers[0].attn.wq.weight)


def test_fused_experts_and_fp8_checkpoints(tmp_path):
    from safetensors.torch import save_file
    hf = deepseek_v3(None, False, groups=(1, 1)).eval()
    sd = {k: v.contiguous() for k, v in hf.state_dict().items()}  # in-memory v5 layout: fused experts
    assert "model.layers.1.mlp.experts.gate_up_proj" in sd
    w = sd["model.layers.0.self_attn.o_proj.weight"]  # (64, 64) -> FP8 with one scale per 128x128 block
    scale = w.abs().max() / 448.0
    sd["model.layers.0.self_attn.o_proj.weight"] = (w / scale).to(torch.float8_e4m3fn)
    sd["model.layers.0.self_attn.o_proj.weight_scale_inv"] = scale.reshape(1, 1)
    save_file(sd, str(tmp_path / "model.safetensors"))
    hf.config.save_pretrained(str(tmp_path))
    ours = Transformer.from_pretrained(str(tmp_path))
    deq = sd["model.layers.0.self_attn.o_proj.weight"].float() * scale
    torch.testing.assert_close(ours.layers[0].attn.wo.weight, deq)
    assert (deq - w).abs().max() < 0.1 * w.abs().max()
    with torch.no_grad():
        hf.model.layers[0].self_attn.o_proj.weight.copy_(deq)
        tok = torch.randint(0, 96, (2, 16))
        assert (ours(tok) - hf(tok).logits).abs().max() <= 1e-4


def test_checkpoint_errors_are_actionable(tmp_path):
    import json
    m = tiny("tiny-gqa", qkv_bias=False, rope_interleave=False)
    m.save_pretrained(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="qwen2.*llama.*deepseek_v3"):
        Transformer.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen2"}))  # qwen2 expects q/k/v biases
    with pytest.raises(KeyError, match=r"missing 6 tensors.*q_proj.bias"):
        Transformer.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 64}))
    mismatch = r"shape mismatch for model.layers.0.mlp.\w+_proj.weight: checkpoint \((128, 64|64, 128)\) " \
               r"vs model \(64, 64\)"
    with pytest.raises(ValueError, match=mismatch):
        Transformer.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 1}))
    Transformer.from_pretrained(str(tmp_path))  # extra layers are skipped as MTP-style leftovers ...
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    with pytest.raises(KeyError, match=r"unexpected 1 tensors \[lm_head.weight\]"):
        Transformer.from_pretrained(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a directory"):
        Transformer.from_pretrained(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("name", ["tiny-mla", "tiny-moe"])
def test_bf16_autocast_and_bf16_weights_forward_backward(name):
    """Under torch.autocast(bf16) (fp32 weights) and with bf16 weights, logits stay close to fp32 and the
    backward runs (the MoE fast path casts to the autocast dtype; the cache follows autocast's dtype)."""
    m = tiny(name).train()
    tok = torch.randint(0, 512, (2, 10))
    ref = m(tok).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = m(tok)
        assert m.make_cache(1, 4).kv[0][0].dtype == torch.bfloat16
    amp.float().square().mean().backward()
    assert all(p.grad is None or p.grad.isfinite().all() for p in m.parameters())
    bf = tiny(name).to(torch.bfloat16).train()
    out = bf(tok)
    out.float().square().mean().backward()
    for got in (amp, out):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.detach(), ref, atol=0.05, rtol=0)
