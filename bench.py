"""
bench.py: every performance goal measured against its baseline in one run, on this machine.

    python bench.py                        # all sections
    python bench.py kernels sample         # some sections
    python bench.py --quick                # small shapes (CPU smoke run)
    python bench.py --compile              # torch.compile where a section supports it (model)
    python bench.py decode --out_dir DIR   # also write the table to DIR/bench_decode.md and .json

Sections (each prints the device and every number it measured beside its baseline):
  model    forward+backward tokens/s and MFU, dense vs MoE; KV-cache bytes per token, MLA vs GQA
  sample   decode tokens/s: our KV-cached sampler vs full recompute vs transformers generate; bandwidth bound
  decode   aten ops, kernel launches and host syncs per decode step at zero-small's size, static loop vs eager
           twin (torch.profiler), CPU ms per step, and the projected H200 decode-step time (a projection);
           in bench_decode.py
  kernels  fused log-prob/entropy/KL: Triton vs eager vs torch.compile; GB/s, % of copy bandwidth, memory (GPU)
  rewards  math checks/s and sandboxed programs/s
  data     tokenizer training time and synthetic-corpus MB/s
  fsdp     step time and peak memory, FSDP2 path vs plain training, ~1B model (GPU); in bench_fsdp.py
  head     peak extra memory of the fused lm_head + log-prob path per chunk size vs plain logits (CPU)
At the end one table: each figure beside its baseline measured in the same run, and the device. A section that
fails prints an error row; the others still run. Flags take underscores or dashes (--out_dir = --out-dir).

Simplifications:
 1. Numbers are medians of a few repeats after a warm-up, not a statistical study.
 2. GPU targets are only claimed by the GPU run that measured them; on CPU a section reports CPU numbers or says
    it needs a GPU.
 3. Projections (bench_decode.py) are arithmetic on measured counts and stated assumptions, labelled as such.

Shapes: B batch rows, T positions (T_prompt prompt tokens, T_new generated tokens), N flattened tokens,
V vocab, C model dim, H heads, D head dim (D_qk query/key, D_v value). The sampling temperature is `temperature`,
never T.
"""
import argparse
import glob
import json
import math
import os
import sys
import sysconfig
import tasks
import time
from tokenizer import Tokenizer

# Dense bf16 tensor-core throughput assumed for H100/H200 SXM in MFU and projections: ~790 TFLOP/s is what large
# cuBLAS bf16 GEMMs sustain on these parts at their power-limited clocks; the datasheet's 989e12 assumes the
# 1.98 GHz boost clock throughout (989e12 = 132 SMs x 4 tensor cores x 1024 FLOP/clock x 1.83-1.98 GHz).
H200_BF16_FLOPS = 790e12
H200_HBM_BYTES_S = 4.8e12  # H200 SXM HBM3e datasheet bandwidth (the projection assumes 80% of it is reached)


def per_s(count, seconds):
    """count / seconds, or nan when the time is too small to divide by (the "2.5e11 tok/s" guard)."""
    return count / seconds if seconds is not None and seconds > 1e-6 else float("nan")


def ratio(a, b):
    """a / b, or nan when either is missing, not finite, or b is not positive."""
    ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (a, b)) and b > 0
    return a / b if ok else float("nan")


def median(xs):
    """The middle value (the mean of the two middle ones for an even count)."""
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])


def row(section, figure, value, unit, baseline=None, base_value=None, device="", higher_is_better=True):
    """One line of the final table: a measured figure beside its baseline measured in the same run."""
    r = ratio(value, base_value) if baseline else float("nan")
    return dict(section=section, figure=figure, value=value, unit=unit, baseline=baseline or "",
                base_value=base_value, ratio=r, better="higher" if higher_is_better else "lower", device=device)


# ====================================================================================================
# model
# bench_model(args): training throughput (forward + backward tokens/s) and model FLOPs utilisation of
# model.Transformer for a dense model and an MoE model of about the same active size, plus KV-cache bytes
# per token for MLA vs GQA/MHA at matched model size.
#
# Models (GPU, full size): "dense" ~125M params (dim 768, 12 layers, 12 heads, MLA, SwiGLU 2048, vocab 32768)
# and "moe" with the same attention and the same active FFN width per token (1 shared + 2 of 16 routed experts
# of width inter_dim // 3 = 682, first layer dense). CPU or args.quick: the same shapes shrunk (dim 128-256) so it
# runs in seconds. FLOPs per token = 6 x active params (all matmul weights a token touches: attention, active
# experts, router, lm_head; not the input embedding lookup) + causal attention scores
# 6 * n_layers * T/2 * H * (D_qk + D_v) (forward + backward).
# MFU = FLOPs/s over the peak: H200_BF16_FLOPS (790e12 measured dense bf16, not the 989e12 datasheet figure);
# on CPU only tokens/s is reported, since MFU needs a GPU peak. args.compile: torch.compile the model.
# Prints the device and every measured number; returns them as a dict.

def bench_model(args):
    import time

    import torch
    import torch.nn.functional as F

    from model import ModelConfig, Transformer, cache_bytes_per_token, count_params

    quick = bool(getattr(args, "quick", False))
    compile_ = bool(getattr(args, "compile", False))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    gpu = torch.cuda.get_device_name() if cuda else ""
    peak = H200_BF16_FLOPS if cuda and any(k in gpu for k in ("H100", "H200")) else None
    dtype = torch.bfloat16 if cuda else torch.float32
    name = gpu if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"[model] device: {name}; dtype {dtype}; torch.compile {compile_}; peak "
          f"{f'{peak:.3g} FLOP/s' if peak else 'unknown (MFU needs a GPU peak; reporting tokens/s only)'}")

    base = dict(vocab_size=32768, dim=768, n_layers=12, n_heads=12, kv_lora_rank=256, qk_nope_head_dim=64,
                qk_rope_head_dim=32, v_head_dim=64, inter_dim=2048, max_seq_len=2048)
    B, T, steps = 16, 1024, 10
    if quick or not cuda:  # CPU-sized stand-ins with the same structure
        base.update(vocab_size=4096, dim=128 if quick else 256, n_layers=2 if quick else 4, n_heads=4,
                    kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
                    inter_dim=384 if quick else 704)
        B, T, steps = (2, 64, 3) if quick else (4, 128, 3)
    # routed experts: 2 active + 1 shared of width inter/3 = the dense FFN's width per token
    moe = dict(base, n_routed_experts=16, n_activated_experts=2, n_shared_experts=1,
               moe_inter_dim=base["inter_dim"] // 3, n_dense_layers=1, n_expert_groups=1, n_limited_groups=1)
    configs = {"dense": ModelConfig(**base), "moe": ModelConfig(**moe)}
    results = {"device": name, "dtype": str(dtype), "compile": compile_, "batch": B, "seq_len": T}

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def flops_per_token(cfg):
        n_matmul = count_params(cfg, active=True) - cfg.vocab_size * cfg.dim  # minus the embedding lookup
        attn = 6 * cfg.n_layers * (T / 2) * cfg.n_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim)
        return 6 * n_matmul + attn

    for label, cfg in configs.items():
        for impl in (["fast", "loop"] if cfg.n_routed_experts else ["fast"]):
            cfg.moe_impl = impl
            torch.manual_seed(0)
            model = Transformer(cfg).to(device=device, dtype=dtype).train()
            fwd = torch.compile(model) if compile_ else model
            tokens = torch.randint(0, cfg.vocab_size, (B, T + 1), device=device)  # (B, T+1)

            def step():
                logits = fwd(tokens[:, :-1])  # (B, T, V)
                loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())  # (B*T, V) vs (B*T,) -> ()
                loss.backward()
                model.zero_grad(set_to_none=True)

            for _ in range(2 if compile_ else 1):  # warm-up (and compilation)
                step()
            times = []
            for _ in range(steps):
                sync()
                t0 = time.perf_counter()
                step()
                sync()
                times.append(time.perf_counter() - t0)
            dt = median(times)  # median step: robust to a busy machine
            tok_s = per_s(B * T, dt)
            key = label if impl == "fast" else f"{label}-loop"
            r = {"params": count_params(cfg), "active_params": count_params(cfg, active=True),
                 "tokens_per_s": tok_s, "step_s": dt, "flops_per_token": flops_per_token(cfg)}
            if peak:
                r["mfu"] = tok_s * r["flops_per_token"] / peak
            results[key] = r
            mfu = f"MFU {r['mfu']:.1%}" if peak else "MFU n/a (no GPU peak)"
            print(f"[model] {key:10s} params {r['params'] / 1e6:.1f}M (active {r['active_params'] / 1e6:.1f}M), "
                  f"B={B} T={T}: {dt * 1e3:.1f} ms/step, {tok_s:,.0f} tokens/s fwd+bwd, "
                  f"{r['flops_per_token'] / 1e9:.2f} GFLOP/token, {mfu}")
            del model, fwd
            if cuda:
                torch.cuda.empty_cache()

    # KV cache per token: MLA's latent (c_kv + shared rope key) vs GQA / MHA with the same dim and heads
    cfg = configs["dense"]
    head = cfg.dim // cfg.n_heads
    alts = {"mla": cfg,
            "mha": ModelConfig(**dict(base, attn="gqa", n_kv_heads=cfg.n_heads, head_dim=head)),
            f"gqa-{cfg.n_heads // 4}kv": ModelConfig(**dict(base, attn="gqa", n_kv_heads=cfg.n_heads // 4,
                                                            head_dim=head)),
            "deepseek-v3 mla": ModelConfig.from_preset("deepseek-v3"),
            "qwen2.5-7b gqa": ModelConfig.from_preset("qwen2.5-7b")}
    results["kv_bytes_per_token_per_layer_bf16"] = {}
    for label, c in alts.items():
        b = cache_bytes_per_token(c, dtype_bytes=2)
        results["kv_bytes_per_token_per_layer_bf16"][label] = b
        print(f"[model] KV cache {label:16s}: {b:6d} bytes/token/layer bf16, {b * c.n_layers / 1024:8.1f} KiB/token "
              f"over {c.n_layers} layers")
    rows = [row("model", "MoE fwd+bwd tokens/s (fast experts)", results["moe"]["tokens_per_s"], "tok/s",
                "per-expert loop", results["moe-loop"]["tokens_per_s"], name),
            row("model", "MoE fwd+bwd tokens/s", results["moe"]["tokens_per_s"], "tok/s",
                "dense model, same active size", results["dense"]["tokens_per_s"], name)]
    if peak:
        rows += [row("model", f"MFU {k} (peak {peak / 1e12:.0f} TFLOP/s)", results[k]["mfu"], "", device=name)
                 for k in ("dense", "moe")]
    mla, mha = results["kv_bytes_per_token_per_layer_bf16"]["mla"], results["kv_bytes_per_token_per_layer_bf16"]["mha"]
    rows.append(row("model", "KV cache bytes/token/layer, MLA", mla, "B", "MHA, same dim/heads", mha, name,
                    higher_is_better=False))
    results["rows"] = rows
    return results

# ====================================================================================================
# sample
# bench_sample(args): decode throughput of sample.generate vs recomputing the full sequence each step
# (no cache) vs transformers' generate, on the same random weights, plus the memory-bandwidth bound.
#
# GPU: a Qwen2.5-0.5B-shaped random model, bf16, batch 64. CPU (or args.quick): a much smaller GQA model.
# Weights: a random transformers Qwen2ForCausalLM is saved to a temp dir and loaded by both sides
# (Transformer.from_pretrained), so every method runs the same numbers. All methods decode greedily for
# exactly new_tokens steps (no stop tokens), so the work is identical.
# Bound: tokens/s <= B / (bytes read per decode step / measured copy bandwidth), bytes = weights (the
# embedding table only when tied, as lm_head) + KV cache at the mean context length.

def bench_sample(args):
    import torch
    threads = torch.get_num_threads()
    if not torch.cuda.is_available():  # one thread: a second one on a shared host made the ratio swing 0.1x-17x
        torch.set_num_threads(1)
    try:
        return _bench_sample(args)
    finally:
        torch.set_num_threads(threads)


def _bench_sample(args):
    import tempfile
    import time

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from model import ModelConfig, Transformer, cache_bytes_per_token
    from sample import generate

    quick = bool(getattr(args, "quick", False))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda and not quick:
        cfg = ModelConfig.from_preset("qwen2.5-0.5b", max_seq_len=1024)
        B, T_prompt, T_new, dtype = 64, 128, 256, torch.bfloat16
    elif cuda or not quick:
        cfg = ModelConfig.from_preset("qwen2.5-0.5b", vocab_size=32000, dim=512, n_layers=8, n_heads=8,
                                      n_kv_heads=2, head_dim=64, inter_dim=1536, max_seq_len=1024)
        B, T_prompt, T_new, dtype = 16, 64, 64, torch.bfloat16 if cuda else torch.float32
    else:
        cfg = ModelConfig.from_preset("qwen2.5-0.5b", vocab_size=4096, dim=256, n_layers=4, n_heads=4,
                                      n_kv_heads=2, head_dim=64, inter_dim=768, max_seq_len=512)
        B, T_prompt, T_new, dtype = 8, 32, 32, torch.float32
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"[sample] device: {name}; model: dim {cfg.dim}, {cfg.n_layers} layers, vocab {cfg.vocab_size}, "
          f"GQA {cfg.n_heads}/{cfg.n_kv_heads} heads; batch {B}, prompt {T_prompt}, new tokens {T_new}, {dtype}")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def timed(fn, repeat=5 if not quick else 3, warmup=2):
        """Median of `repeat` timed runs after `warmup` untimed ones (allocator, kernels, compile, caches):
        both sides of every ratio get the same treatment, so the ratio is stable on a busy host."""
        out, times = None, []
        for _ in range(warmup):
            out = fn()
        for _ in range(repeat):
            sync()
            t0 = time.perf_counter()
            out = fn()
            sync()
            times.append(time.perf_counter() - t0)
        return median(times), out

    # identical weights on both sides
    torch.manual_seed(0)
    hf_cfg = Qwen2Config(vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.inter_dim,
                         num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                         num_key_value_heads=cfg.n_kv_heads, max_position_embeddings=cfg.max_seq_len,
                         rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
                         rms_norm_eps=cfg.norm_eps)
    hf = Qwen2ForCausalLM(hf_cfg)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = Transformer.from_pretrained(tmp, dtype=dtype)
    ours = ours.to(device).eval()
    hf = hf.to(device=device, dtype=dtype).eval()
    cfg = ours.cfg

    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, cfg.vocab_size, (B, T_prompt), generator=g)  # (B, T_prompt)
    prompts = prompt.tolist()
    prompt = prompt.to(device)
    res = {"device": name, "batch": B, "prompt": T_prompt, "new_tokens": T_new}

    # 1) ours: KV cache, prefill once, one token per step
    def ours_run(n_new, compile=False, **kw):  # default loop: the static one on CUDA, the eager twin on CPU
        return generate(ours, prompts, max_new_tokens=n_new, temperature=0, compile=compile, **kw)
    t_ours, gen = timed(lambda: ours_run(T_new))
    t_prefill, _ = timed(lambda: ours_run(1))
    res["ours_tok_s"] = per_s(B * T_new, t_ours)
    res["ours_decode_tok_s"] = per_s(B * (T_new - 1), t_ours - t_prefill)  # nan if the difference is ~0
    print(f"[sample] ours (KV cache):      {t_ours:.3f} s, {res['ours_tok_s']:.1f} tok/s end-to-end, "
          f"{res['ours_decode_tok_s']:.1f} tok/s decode only (prefill {t_prefill:.3f} s)")
    if cuda:
        t_c, gen_c = timed(lambda: ours_run(T_new, compile=True))
        t_cp, _ = timed(lambda: ours_run(1, compile=True))
        res["ours_compiled_tok_s"] = per_s(B * T_new, t_c)
        res["ours_compiled_decode_tok_s"] = per_s(B * (T_new - 1), t_c - t_cp)
        res["compiled_tokens_equal"] = float((gen_c.tokens == gen.tokens).all(-1).float().mean())  # (B,) -> share
        print(f"[sample] ours compile=True:    {t_c:.3f} s, {res['ours_compiled_tok_s']:.1f} tok/s end-to-end, "
              f"{res['ours_compiled_decode_tok_s']:.1f} tok/s decode only; rows equal to plain loop: "
              f"{res['compiled_tokens_equal']:.2f}")
        t_g, gen_g = timed(lambda: ours_run(T_new, cuda_graph=True))
        t_gp, _ = timed(lambda: ours_run(1, cuda_graph=True))
        t_e, _ = timed(lambda: ours_run(T_new, static=False))
        res["ours_graph_decode_tok_s"] = per_s(B * (T_new - 1), t_g - t_gp)
        res["ours_graph_tok_s"], res["ours_eager_twin_tok_s"] = per_s(B * T_new, t_g), per_s(B * T_new, t_e)
        res["graph_tokens_equal"] = float((gen_g.tokens == gen.tokens).all(-1).float().mean())  # (B,) -> share
        print(f"[sample] ours cuda_graph=True: {t_g:.3f} s, {res['ours_graph_tok_s']:.1f} tok/s end-to-end, "
              f"{res['ours_graph_decode_tok_s']:.1f} tok/s decode only; eager twin {res['ours_eager_twin_tok_s']:.1f} "
              f"tok/s; rows equal to the static loop: {res['graph_tokens_equal']:.2f}")

    # 2) no cache: recompute the whole sequence for every new token
    n_nc = T_new if quick else T_new // 4  # the no-cache loop is slow on big runs: time a quarter of the steps

    @torch.inference_mode()
    def no_cache_part():
        seq = prompt  # (B, T_prompt)
        for _ in range(n_nc):
            h = ours(seq, return_hidden=True)[:, -1]  # (B, C) the whole sequence, every step
            nxt = ours.lm_head(h).argmax(-1)  # (B,)
            seq = torch.cat([seq, nxt[:, None]], 1)  # (B, T_prompt + tokens so far)
        return seq
    t_nc, seq_nc = timed(no_cache_part, repeat=1, warmup=0)  # slow: one run (the model is warm already)
    res["no_cache_tok_s"] = per_s(B * n_nc, t_nc)
    print(f"[sample] no cache (recompute): {t_nc:.3f} s for {n_nc} tokens, {res['no_cache_tok_s']:.1f} tok/s"
          + ("" if n_nc == T_new else " (first quarter of the steps: an upper bound on its rate)"))
    res["no_cache_tokens_equal"] = float((seq_nc[:, T_prompt:] == gen.tokens[:, :n_nc]).all(-1).float().mean())  # (B,)

    # 3) transformers generate (dynamic KV cache), greedy, exactly T_new new tokens
    mask = torch.ones_like(prompt)  # (B, T_prompt)

    @torch.inference_mode()
    def hf_run():
        return hf.generate(prompt, attention_mask=mask, max_new_tokens=T_new, min_new_tokens=T_new, do_sample=False,
                           pad_token_id=0, eos_token_id=None)
    t_hf, out_hf = timed(hf_run)
    res["hf_tok_s"] = per_s(B * T_new, t_hf)
    res["hf_tokens_equal"] = float((out_hf[:, T_prompt:] == gen.tokens).all(-1).float().mean())  # (B,) -> share
    print(f"[sample] transformers generate: {t_hf:.3f} s, {res['hf_tok_s']:.1f} tok/s end-to-end")
    print(f"[sample] greedy rows identical to ours: transformers {res['hf_tokens_equal']:.2f}, "
          f"no-cache {res['no_cache_tokens_equal']:.2f}")

    # 4) memory-bandwidth bound
    nbytes = (256 << 20) if not cuda else (2 << 30)
    x = torch.empty(nbytes, dtype=torch.uint8, device=device)  # (nbytes,)
    y = torch.empty_like(x)  # (nbytes,)
    t_copy, _ = timed(lambda: y.copy_(x), repeat=10)
    bw = per_s(2 * nbytes, t_copy)  # read + write
    params = {id(p): p for p in ours.parameters()}
    weight_bytes = sum(p.numel() * p.element_size() for p in params.values())
    if not cfg.tie_embeddings:  # an untied embedding table is only gathered (B rows), not streamed
        weight_bytes -= ours.embed.weight.numel() * ours.embed.weight.element_size()
    elt = torch.finfo(dtype).bits // 8
    kv_bytes = B * (T_prompt + T_new / 2) * cache_bytes_per_token(cfg, elt) * cfg.n_layers
    step_s = (weight_bytes + kv_bytes) / bw
    res.update(copy_GB_s=bw / 1e9, weight_MB=weight_bytes / 1e6, kv_MB=kv_bytes / 1e6, bound_tok_s=per_s(B, step_s))
    rates = [res["ours_decode_tok_s"], res.get("ours_compiled_decode_tok_s"), res.get("ours_graph_decode_tok_s")]
    best = max([v for v in rates if v is not None and math.isfinite(v)] or [float("nan")])
    res["ours_vs_hf"] = ratio(res["ours_tok_s"], res["hf_tok_s"])
    res["ours_vs_no_cache"] = ratio(res["ours_tok_s"], res["no_cache_tok_s"])
    res["bound_fraction"] = ratio(best, res["bound_tok_s"])
    print(f"[sample] copy bandwidth {res['copy_GB_s']:.1f} GB/s; per step: weights {res['weight_MB']:.1f} MB + "
          f"KV cache {res['kv_MB']:.1f} MB (mean context) -> bound {res['bound_tok_s']:.1f} tok/s")
    print(f"[sample] ratios: ours/transformers {res['ours_vs_hf']:.2f}x, ours/no-cache "
          f"{res['ours_vs_no_cache']:.2f}x (end-to-end); best decode = {res['bound_fraction']:.2f} of the bound")
    res["rows"] = [row("sample", "ours end-to-end", res["ours_tok_s"], "tok/s", "transformers generate",
                       res["hf_tok_s"], name),
                   row("sample", "ours end-to-end", res["ours_tok_s"], "tok/s", "no cache (recompute)",
                       res["no_cache_tok_s"], name),
                   row("sample", "ours decode only", best, "tok/s", "bandwidth bound", res["bound_tok_s"], name),
                   row("sample", "greedy rows equal to transformers", res["hf_tokens_equal"], "frac", device=name)]
    if cuda:
        res["rows"] += [row("sample", "ours static loop + CUDA graph", res["ours_graph_tok_s"], "tok/s",
                            "eager twin", res["ours_eager_twin_tok_s"], name),
                        row("sample", "ours static loop", res["ours_tok_s"], "tok/s", "eager twin",
                            res["ours_eager_twin_tok_s"], name)]
    return res

# ====================================================================================================
# decode: bench_decode.py (aten ops, kernel launches and host syncs per decode step; a projected H200 step time)

def bench_decode(args):
    from bench_decode import bench_decode as run
    return run(args)


# ====================================================================================================
# kernels
# bench_kernels(args): kernels.token_logprobs (Triton) vs eager PyTorch vs torch.compile of the same
# reference (log_softmax + gather + entropy + k3 KL), bf16 logits, N=16384 tokens, V in
# {32768, 129280, 151936}; plus kernels.linear_token_logprobs (chunked hidden -> log-probs) memory.
#
# Reported per method: forward time (no_grad, as when computing old/ref log-probs), forward+backward
# time (loss = weighted sum of logp, entropy and KL), achieved GB/s counting the unavoidable traffic
# (forward reads the bf16 logits once: S = 2 N V bytes; forward+backward reads them twice and writes
# bf16 dlogits: 3 S), that as % of a device-to-device copy measured in the same run, and peak extra
# memory above the inputs (forward+backward includes dlogits itself, S bytes).
# On CPU it says it needs a GPU and runs a tiny correctness check only.

def bench_kernels(args):
    import torch

    from kernels import linear_token_logprobs, token_logprobs

    quick = bool(getattr(args, "quick", False))
    temperature = 0.9

    def eager(logits, targets, ref):
        """The reference: what a plain PyTorch GRPO step computes. logits (N, V), targets (N,)."""
        logz = torch.log_softmax(logits.float() / temperature, dim=-1)      # (N, V)
        logp = logz.gather(1, targets[:, None]).squeeze(1)                  # (N,)
        entropy = -(logz.exp() * logz).sum(-1)                              # (N,)
        d = ref - logp                                                      # (N,)
        kl = d.exp() - d - 1                                                # (N,)
        return logp, entropy, kl

    def fused(logits, targets, ref):
        s = token_logprobs(logits, targets, temperature, ref, return_entropy=True)
        return s.logp, s.entropy, s.kl

    if not torch.cuda.is_available():
        print("[kernels] the kernel benchmark needs a CUDA GPU; running a tiny CPU correctness check")
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 1000, generator=g).bfloat16()                  # (N, V)
        t = torch.randint(0, 1000, (64,), generator=g)                     # (N,)
        r = torch.randn(64, generator=g) - 7                               # (N,)
        err = max((a - b).abs().max().item() for a, b in zip(fused(x, t, r), eager(x, t, r)))
        print(f"[kernels] token_logprobs(impl=auto -> torch) vs eager reference: max |diff| {err:.1e}")
        return {"gpu": False, "cpu_check_max_diff": err}

    dev = torch.device("cuda")
    name = torch.cuda.get_device_name()
    res = {"gpu": True, "device": name}

    def timed(fn, reps):
        """Median milliseconds of fn() over reps runs after 3 warm-ups (CUDA events)."""
        for _ in range(3):
            fn()
        times = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        return sorted(times)[len(times) // 2]

    def peak_extra(fn):
        """Peak bytes allocated during fn() above what was allocated before it."""
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    # device-to-device copy bandwidth, measured in this run (read + write bytes / time)
    src = torch.empty(2 * 1024**3, dtype=torch.uint8, device=dev)  # (2 GiB,) bytes
    dst = torch.empty_like(src)  # (2 GiB,)
    copy_ms = timed(lambda: dst.copy_(src), 20)
    copy_gbs = 2 * src.numel() / copy_ms / 1e6
    del src, dst
    res["copy_GBps"] = copy_gbs
    print(f"[kernels] device: {name}; measured D2D copy {copy_gbs:,.0f} GB/s")

    compiled = torch.compile(eager, dynamic=False)
    N = 4097 if quick else 16384
    vocab = [32768] if quick else [32768, 129280, 151936]
    reps = 5 if quick else 20
    for V in vocab:
        g = torch.Generator(device=dev).manual_seed(V)
        logits = (torch.randn(N, V, device=dev, generator=g) * 2).bfloat16()  # (N, V)
        targets = torch.randint(0, V, (N,), device=dev, generator=g)          # (N,)
        ref = torch.randn(N, device=dev, generator=g) * 0.5 - 10.0            # (N,)
        w = torch.randn(3, N, device=dev, generator=g)                        # (3, N) upstream weights
        S = logits.numel() * logits.element_size()
        x = logits.detach().requires_grad_()  # (N, V) the leaf the backward pass fills

        def fwd(fn):
            with torch.no_grad():
                fn(logits, targets, ref)

        def fwd_bwd(fn):
            x.grad = None
            logp, ent, kl = fn(x, targets, ref)
            ((logp * w[0]).sum() + (ent * w[1]).sum() + (kl * w[2]).sum()).backward()

        row = {}
        for label, fn in [("triton", fused), ("eager", eager), ("compiled", compiled)]:
            try:
                f_ms = timed(lambda: fwd(fn), reps)
                fb_ms = timed(lambda: fwd_bwd(fn), reps)
                x.grad = None
                f_mem, fb_mem = peak_extra(lambda: fwd(fn)), peak_extra(lambda: fwd_bwd(fn))
                x.grad = None
            except torch.cuda.OutOfMemoryError:
                print(f"[kernels] V={V} {label}: out of memory")
                x.grad = None
                torch.cuda.empty_cache()
                continue
            row[label] = dict(fwd_ms=f_ms, fwd_bwd_ms=fb_ms, fwd_GBps=S / f_ms / 1e6,
                              fwd_bwd_GBps=3 * S / fb_ms / 1e6, fwd_peak_GB=f_mem / 1e9,
                              fwd_bwd_peak_GB=fb_mem / 1e9)
        # correctness of this run's Triton outputs against the fp32 eager reference
        with torch.no_grad():
            err = max((a - b).abs().max().item()
                      for a, b in zip(fused(logits, targets, ref), eager(logits, targets, ref)))
        print(f"[kernels] N={N} V={V} bf16 (S = {S / 1e9:.2f} GB of logits; max |triton - eager| {err:.1e})")
        print(f"[kernels]   {'method':9s} {'fwd ms':>8s} {'GB/s':>7s} {'%copy':>6s} {'fwd+bwd ms':>10s} "
              f"{'GB/s':>7s} {'%copy':>6s} {'peak fwd GB':>11s} {'peak f+b GB':>11s}")
        for label, m in row.items():
            print(f"[kernels]   {label:9s} {m['fwd_ms']:8.2f} {m['fwd_GBps']:7.0f} "
                  f"{100 * m['fwd_GBps'] / copy_gbs:5.0f}% {m['fwd_bwd_ms']:10.2f} "
                  f"{m['fwd_bwd_GBps']:7.0f} {100 * m['fwd_bwd_GBps'] / copy_gbs:5.0f}% "
                  f"{m['fwd_peak_GB']:11.2f} {m['fwd_bwd_peak_GB']:11.2f}")
        if "triton" in row:
            tri = row["triton"]
            for base in ("eager", "compiled"):
                if base in row:
                    print(f"[kernels]   triton vs {base}: fwd {row[base]['fwd_ms'] / tri['fwd_ms']:.1f}x, "
                          f"fwd+bwd {row[base]['fwd_bwd_ms'] / tri['fwd_bwd_ms']:.1f}x")
            print(f"[kernels]   triton fwd+bwd peak extra / dlogits size: "
                  f"{tri['fwd_bwd_peak_GB'] * 1e9 / S:.2f}")
        res[f"V{V}"] = row
        res[f"V{V}_max_err"] = err
        del logits, x, row
        torch.cuda.empty_cache()

    # launch-config sweep of the Triton kernels at the largest vocab (default BLOCK_V=4096, 2 stages)
    V = vocab[-1]
    logits = torch.randn(N, V, device=dev).bfloat16()                            # (N, V)
    targets = torch.randint(0, V, (N,), device=dev)                              # (N,)
    x = logits.detach().requires_grad_()  # (N, V)
    S = logits.numel() * logits.element_size()
    configs = [(b, st) for b in (2048, 4096, 8192, 16384) for st in (1, 2, 3)]
    for block, stages in configs[4:5] if quick else configs:
        knobs = dict(block_v=block, num_stages=stages)

        def fb():
            x.grad = None
            s = token_logprobs(x, targets, temperature, return_entropy=True, **knobs)
            (s.logp.sum() + s.entropy.sum()).backward()
        try:
            with torch.no_grad():
                f_ms = timed(lambda: token_logprobs(logits, targets, temperature, return_entropy=True, **knobs), reps)
            fb_ms = timed(fb, reps)
        except Exception as e:  # e.g. out of shared memory / resources for a large block
            print(f"[kernels] BLOCK_V={block} stages={stages}: failed ({type(e).__name__})")
            continue
        res[f"sweep_block{block}_stages{stages}"] = dict(fwd_ms=f_ms, fwd_bwd_ms=fb_ms)
        print(f"[kernels] BLOCK_V={block:5d} stages={stages} V={V}: fwd {f_ms:.2f} ms "
              f"({100 * S / f_ms / 1e6 / copy_gbs:.0f}% copy), fwd+bwd {fb_ms:.2f} ms "
              f"({100 * 3 * S / fb_ms / 1e6 / copy_gbs:.0f}% copy)")
    del logits, x
    torch.cuda.empty_cache()

    # fused-linear: hidden (N, C) and lm_head (V, C) -> stats, never all logits at once
    C, V = 4096, vocab[-1]
    g = torch.Generator(device=dev).manual_seed(1)
    h = (torch.randn(N, C, device=dev, generator=g) * 0.05).bfloat16().requires_grad_()  # (N, C)
    W = (torch.randn(V, C, device=dev, generator=g) * 0.05).bfloat16().requires_grad_()  # (V, C)
    targets = torch.randint(0, V, (N,), device=dev, generator=g)                       # (N,)
    ref = torch.randn(N, device=dev, generator=g) - 10.0                               # (N,)

    def full():
        s = token_logprobs(h @ W.t(), targets, temperature, ref, return_entropy=True)  # all logits (N, V) at once
        (s.logp.sum() + s.entropy.sum() + s.kl.sum()).backward()

    def chunked():
        s = linear_token_logprobs(h, W, targets, temperature, ref, return_entropy=True, chunk_size=2048)
        (s.logp.sum() + s.entropy.sum() + s.kl.sum()).backward()

    for label, fn in [("full", full), ("chunked", chunked)]:
        try:
            ms = timed(fn, 3 if quick else 5)
            h.grad = W.grad = None
            mem = peak_extra(fn)
            h.grad = W.grad = None
        except torch.cuda.OutOfMemoryError:
            print(f"[kernels] fused-linear {label}: out of memory")
            continue
        res[f"linear_{label}"] = dict(fwd_bwd_ms=ms, peak_GB=mem / 1e9)
        what = "h @ W.T, then token_logprobs" if label == "full" else "linear_token_logprobs"
        print(f"[kernels] N={N} C={C} V={V} bf16 fwd+bwd, {what:29s}: {ms:8.2f} ms, "
              f"peak extra {mem / 1e9:6.2f} GB (all logits would be {N * V * 2 / 1e9:.2f} GB)")
    rows = []
    for key, r in res.items():  # one row per vocab size and baseline: triton fwd+bwd time, lower is better
        if key.startswith("V") and isinstance(r, dict) and "triton" in r:
            for base in ("eager", "compiled"):
                if base in r:
                    rows.append(row("kernels", f"{key} fwd+bwd ms, triton", r["triton"]["fwd_bwd_ms"], "ms", base,
                                    r[base]["fwd_bwd_ms"], name, higher_is_better=False))
            rows.append(row("kernels", f"{key} fwd+bwd GB/s, triton", r["triton"]["fwd_bwd_GBps"], "GB/s",
                            "D2D copy", copy_gbs, name))
    if "linear_full" in res and "linear_chunked" in res:
        rows.append(row("kernels", "fused-linear peak GB, chunked", res["linear_chunked"]["peak_GB"], "GB",
                        "full logits", res["linear_full"]["peak_GB"], name, higher_is_better=False))
    res["rows"] = rows
    return res

# ====================================================================================================
# rewards
# bench_rewards(args): throughput of the rule-based rewards on this machine (meant for 2 CPU cores).
#
# Math: math_equal checks/s on three kinds of pairs: plain numbers/fractions (exact rational fast path,
# in-process), symbolic ones (roots, pi, polynomials: the killable sympy worker) and hostile ones
# (towers, huge factorials, megabyte strings: rejected by the pre-checks).
# Code: sandboxed programs/s (each program = a bwrap sandbox: fresh namespaces, private root, size-capped tmpfs,
# seccomp, rlimits, a per-run cgroup killed at the end, a private uid as root) for a trivial stdin/stdout program
# through the bounded pool of sandbox.code_rewards (sandbox.SANDBOX_WORKERS at a time) beside bare python runs
# through a pool of the same size, plus the latency of one program.
# Also prints which isolation layers work here (sandbox.sandbox_capabilities()).

def bench_rewards(args):
    """Math checks/s, then sandboxed programs/s (sandbox.py: bwrap namespaces, private root, seccomp, per-run
    cgroup) for a trivial correct stdin/stdout program through code_rewards' pool, twice (the CPU is shared),
    beside the floor: the same bare `python -I -S -B` runs through a pool of the same size. Where the machine
    cannot sandbox, it prints why and returns the math numbers."""
    import subprocess
    import time
    from concurrent.futures import ThreadPoolExecutor

    import sandbox
    from rewards import math_equal

    quick = bool(getattr(args, "quick", False))
    res = {}

    exact = [("\\frac{1}{2}", "0.5"), ("391", "391"), ("1,000", "1000"), ("2^{-99}", "2^{-98}"), ("0.333", "1/3"),
             ("(1, 2)", "[1, 2]"), ("\\{1, 2, 3\\}", "\\{3, 2, 1\\}"), ("x = 2", "2"), ("1/2004!", "1/2006!"),
             ("-\\frac{9}{4}", "-2.25"), ("18 dollars", "18"), ("50\\%", "50")]
    symbolic = [("\\sqrt{8}", "2\\sqrt{2}"), ("\\frac{\\pi}{2}", "\\pi/2 + 0"), ("x^2 + 2x + 1", "(x+1)^2"),
                ("\\frac{3}{\\sqrt{3}}", "\\sqrt{3}"), ("\\sqrt{2}", "\\sqrt{3}"), ("e^{i\\pi}", "-1"),
                ("2x + 2", "2(x+1)"), ("\\log_2 8", "3")]
    hostile = [("9^{9^{9^9}}", "1"), ("(10^{10})!", "1"), ("{" * 100_000 + "1" + "}" * 100_000, "1"),
               ("1" * 1_000_000, "1"), ("x^{10^{10}}", "x"), ("(" * 5000 + "1" + ")" * 5000, "1")]
    math_equal("\\sqrt{2}", "\\sqrt{2}+0")                             # start the sympy worker (not timed)
    reps = {"exact": 20 if quick else 100, "symbolic": 3 if quick else 15, "hostile": 5 if quick else 20}
    for name, pairs in [("exact", exact), ("symbolic", symbolic), ("hostile", hostile)]:
        t0 = time.perf_counter()
        for _ in range(reps[name]):
            for p, g in pairs:
                math_equal(p, g)
        dt = time.perf_counter() - t0
        checks = reps[name] * len(pairs)
        res[f"math_{name}_checks_s"] = checks / dt
        print(f"[rewards] math_equal {name:8s}: {checks} checks in {dt:.2f} s, {checks / dt:,.0f} checks/s")

    caps = sandbox.sandbox_capabilities()
    res["sandbox_ok"] = bool(caps.get("ok"))
    if not caps["ok"]:
        print(f"[rewards] code sandbox: not measured: {caps['error']}")
        return res
    print(f"[rewards] sandbox: cgroup {caps['cgroup']}, seccomp {caps['seccomp']}, uid {caps['uid']}, "
          f"python {caps['python']}, {os.cpu_count()} CPUs, {sandbox.SANDBOX_WORKERS} programs at a time")
    code, tests = "print(int(input()) * 2)", [{"input": "21\n", "output": "42\n"}]
    n = 8 if quick else 60
    sandbox.run_sandboxed({"a.py": code}, "a.py", stdin="1\n")              # warm the page cache
    bare = [sandbox._setup()["python"], "-I", "-S", "-B", "-c", code]

    def bare_run(_):
        return subprocess.run(bare, input=b"21\n", capture_output=True).stdout == b"42\n"

    rows = []
    for attempt in (1, 2):
        t0 = time.perf_counter()
        with ThreadPoolExecutor(sandbox.SANDBOX_WORKERS) as ex:
            ok_bare = all(ex.map(bare_run, range(n)))
        dt_bare = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = sandbox.code_rewards([code] * n, [tests] * n)
        dt = time.perf_counter() - t0
        t0 = time.perf_counter()
        sandbox.run_sandboxed({"a.py": code}, "a.py", stdin="21\n")
        latency = time.perf_counter() - t0
        rows.append((attempt, n / dt_bare, n / dt, latency, ok_bare and scores == [1.0] * n))
    print(f"[rewards] {'run':>4} | {'bare python/s (floor)':>21} | {'sandboxed programs/s':>20} | "
          f"{'one program ms':>14} | all correct")
    for attempt, bare_s, sbx_s, latency, ok in rows:
        print(f"[rewards] {attempt:>4} | {bare_s:>21.1f} | {sbx_s:>20.1f} | {latency * 1000:>14.0f} | {ok}")
    best = max(rows, key=lambda r: r[2])
    res.update(sandbox_programs_s=best[2], sandbox_bare_python_s=best[1], sandbox_latency_s=best[3],
               sandbox_workers=sandbox.SANDBOX_WORKERS, sandbox_all_passed=all(r[4] for r in rows))
    print(f"[rewards] sandbox: {best[2]:.1f} programs/s (target >= 50 on 2 cores), "
          f"{best[2] / best[1]:.0%} of bare python's {best[1]:.1f}/s")
    return res

# ====================================================================================================
# data
# bench_data(args): tokenizer training time and synthetic-corpus throughput.
#
# bench_data(args) -> dict, printing one line per measurement. args may carry `quick` (bool: smaller
# inputs for a CPU smoke run). Times are CPU seconds of this process (time.process_time), so a busy
# shared machine does not distort them; wall seconds are reported beside.

def _timed(fn):
    """(fn(), CPU seconds of this process, wall seconds)."""
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def _take_mb(it, mb):
    """The first documents of `it` that add up to at least mb million characters, and their character count."""
    out, n = [], 0
    for doc in it:
        out.append(doc)
        n += len(doc)
        if n >= mb * 1e6:
            break
    return out, n


def bench_data(args=None) -> dict:
    quick = bool(getattr(args, "quick", False))
    mb = 2 if quick else 20
    res = {}
    # 1. corpus generation speed (one core)
    s = tasks.corpus_stats(seed=0, n_docs=3000 if quick else 30000)
    res["corpus_mb_per_s"] = s["mb_per_s"]
    print(f"corpus: {s['mb_per_s']:.1f} MB/s (CPU) over {s['chars'] / 1e6:.1f} MB; doc shares "
          + ", ".join(f"{k} {s['doc_share'][k]:.2f}" for k in ["drill", "textbook", "dialogue", "filler"])
          + f"; dialogue defects {s['dialogue_defect_rate']:.2f}")
    # 2. tokenizer training on the corpus (its vocabulary saturates: few unique chunks)
    docs, n = _take_mb(tasks.corpus_stream(0), mb)
    tok, cpu, wall = _timed(lambda: Tokenizer.train(docs, 4096))
    res.update(tok_train_corpus_s=cpu, tok_corpus_vocab=tok.vocab_size)
    print(f"tokenizer: trained on {n / 1e6:.0f} MB corpus in {cpu:.1f}s CPU ({wall:.1f}s wall), vocab {tok.vocab_size}")
    ids, cpu, wall = _timed(lambda: tok.encode_batch(docs))
    res["tok_encode_mb_per_s"] = n / 1e6 / max(cpu, 1e-9)
    print(f"tokenizer: encode {res['tok_encode_mb_per_s']:.1f} MB/s (CPU), {sum(map(len, ids)) / n:.2f} tokens/char")
    # 3. tokenizer training, 4k vocab on ~20 MB of diverse text (the Python standard library's sources)
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "**", "*.py"), recursive=True))
    texts = (open(f, encoding="utf-8", errors="replace").read() for f in files)
    texts, n = _take_mb(texts, mb)
    tok, cpu, wall = _timed(lambda: Tokenizer.train(texts, 4096))
    res.update(tok_train_diverse_s=cpu, tok_train_diverse_mb=n / 1e6)
    print(f"tokenizer: 4096 vocab on {n / 1e6:.0f} MB of stdlib source in {cpu:.1f}s CPU ({wall:.1f}s wall)")
    return res

# ====================================================================================================
# fsdp: bench_fsdp.py (peak memory and step time, FSDP2 path vs plain training)

def bench_fsdp(args):
    from bench_fsdp import bench_fsdp as run
    return run(args)

# ====================================================================================================
# head: the fused lm_head + log-prob path's memory (CPU)

def _head_memory_run(path: str, N: int, V: int, C: int, chunk: int, q) -> None:
    """One fresh process of bench_fused_head_memory: extra peak resident memory (bytes) of one forward + backward
    of the log-prob head over N tokens (logits path or fused with chunk), lm_head frozen, hidden trainable."""
    import resource

    import torch

    import kernels
    torch.set_num_threads(1)
    torch.manual_seed(0)
    weight = torch.randn(V, C) * 0.02  # (V, C) the lm_head
    hidden = torch.randn(N, C, requires_grad=True)  # (N, C)
    targets = torch.randint(0, V, (N,))  # (N,)
    rss = lambda: int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()  # noqa: E731
    before = rss()
    kw = dict(temperature=0.7, return_entropy=True, impl="torch")  # GRPO's call: entropy logged, no KL
    if path == "logits":
        stats = kernels.token_logprobs(hidden @ weight.t(), targets, **kw)  # logits (N, V)
    else:
        stats = kernels.linear_token_logprobs(hidden, weight, targets, chunk_size=chunk, **kw)
    stats.logp.sum().backward()
    q.put((max(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - before))


def bench_fused_head_memory(args):
    """Peak extra memory of the fused lm_head + log-prob path (kernels.linear_token_logprobs, PyTorch twin) per
    chunk size, beside the plain logits path, at Qwen2.5-0.5B's head (V 151936, C 896) over 512 loss tokens
    (--quick: V 32768, 256 tokens). CPU resident memory, each run in a fresh process; the lm_head is frozen so
    that only the (tokens, V) buffers count (a trainable head adds one (V, C) fp32 gradient on both paths)."""
    import torch.multiprocessing as mp

    quick = bool(getattr(args, "quick", False))
    N, V, C = (256, 32768, 896) if quick else (512, 151936, 896)
    ctx = mp.get_context("spawn")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)  # children: freed buffers >= 1 MiB leave the RSS at once
    rows = []
    for path, chunk in [("logits", N), ("fused", 128), ("fused", 256), ("fused", 512), ("fused", 1024)]:
        q = ctx.Queue()
        p = ctx.Process(target=_head_memory_run, args=(path, N, V, C, chunk, q))
        p.start()
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"head memory run {path} chunk {chunk} failed (exit code {p.exitcode})")
        extra = q.get()
        tokens_at_once = min(chunk, N)
        rows.append((path, chunk, extra, extra / (tokens_at_once * V * 4)))  # in (tokens_at_once, V) fp32 buffers
    print(f"head memory: CPU, {N} loss tokens, V {V}, C {C}, fp32, temperature 0.7, entropy on; peak extra "
          "resident memory of forward + backward")
    print("| path | chunk | peak extra MiB | in (min(chunk, tokens) x V) fp32 buffers |\n|---|---|---|---|")
    for path, chunk, extra, n_buffers in rows:
        print(f"| {'logits + token_logprobs' if path == 'logits' else 'linear_token_logprobs'} | "
              f"{chunk if path == 'fused' else '-'} | {extra / 2**20:.0f} | {n_buffers:.1f} |")
    return {f"{p}_{c}": e for p, c, e, _ in rows}


SECTIONS = {"model": bench_model, "sample": bench_sample, "decode": bench_decode, "kernels": bench_kernels,
            "rewards": bench_rewards, "data": bench_data, "fsdp": bench_fsdp,
            "head": bench_fused_head_memory}
FLAGS = {"--quick": "small shapes for a CPU smoke run", "--compile": "torch.compile where a section supports it",
         "--out_dir DIR": "also write the table to DIR/bench_<sections>.md and .json", "--help": "this text"}


def usage_error(msg):
    """A user mistake: one line on stderr, exit status 2 (the shell's usage-error convention), nothing run."""
    print(f"bench.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv):
    """Sections and flags; dashes and underscores are the same (--out-dir = --out_dir). A bad name is a one-line
    error listing the valid ones, before anything runs."""
    args = argparse.Namespace(sections=[], quick=False, compile=False, out_dir=None)
    argv = list(argv)
    while argv:
        a = argv.pop(0)
        if a in ("-h", "--help"):
            print(__doc__.strip() + "\n\nflags:\n" + "\n".join(f"  {k:14s} {v}" for k, v in FLAGS.items()))
            sys.exit(0)
        if a.startswith("--"):
            name, _, value = a[2:].partition("=")
            name = name.replace("-", "_")
            if name in ("quick", "compile") and not value:
                setattr(args, name, True)
            elif name == "out_dir":
                if not value and (not argv or argv[0].startswith("--")):
                    usage_error("--out_dir needs a directory (--out_dir DIR)")
                args.out_dir = value or argv.pop(0)
            else:
                usage_error(f"unknown flag {a!r}; valid: --quick, --compile, --out_dir DIR, --help")
        elif a in SECTIONS:
            args.sections.append(a)
        else:
            usage_error(f"unknown section {a!r}; valid: {', '.join(SECTIONS)}")
    return args


def _fmt(v):
    """A table cell: n/a for missing or non-finite, thousands separators from 1000 up, else 3 significant digits."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def table(rows):
    """Markdown table: section | figure | value | baseline | baseline value | value / baseline | device."""
    lines = ["| section | figure | value | baseline | baseline value | value / baseline | device |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        unit = f" {r['unit']}" if r.get("unit") else ""
        base = f"{_fmt(r['base_value'])}{unit}" if r.get("baseline") else ""
        rat = f"{r['ratio']:.2f}x ({r['better']} is better)" if math.isfinite(r.get("ratio", float("nan"))) else ""
        lines.append(f"| {r['section']} | {r['figure']} | {_fmt(r['value'])}{unit} | {r.get('baseline', '')} | "
                     f"{base} | {rat} | {r.get('device', '')} |")
    return "\n".join(lines)


def _rows_of(section, res):
    """A section's table rows: its own "rows", else one row per top-level number it returned (no baseline)."""
    if isinstance(res, dict) and res.get("rows"):
        return res["rows"]
    items = res.items() if isinstance(res, dict) else []
    return [row(section, k, v, "") for k, v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]


def main(argv=None):
    """Run the chosen sections (all by default), each guarded, then print (and with --out_dir write) the table."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sections = args.sections or list(SECTIONS)
    rows, results = [], {}
    for s in sections:
        print(f"\n===== bench {s} =====", flush=True)
        t0 = time.perf_counter()
        try:
            res = SECTIONS[s](args)
            results[s] = res
            rows += _rows_of(s, res)
        except (Exception, SystemExit) as e:  # one failing section never hides the others
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
            print(f"[{s}] FAILED: {msg}", flush=True)
            rows.append(dict(row(s, "ERROR", msg, ""), value=msg))
            results[s] = {"error": msg}
        print(f"[{s}] {time.perf_counter() - t0:.1f} s", flush=True)
    md = table(rows)
    print("\n===== bench table: each figure beside its baseline, measured in this run =====\n" + md)
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        stem = os.path.join(args.out_dir, "bench_" + "-".join(sections))
        with open(stem + ".md", "w") as f:
            f.write(md + "\n")
        with open(stem + ".json", "w") as f:
            json.dump({"rows": rows, "results": results}, f, indent=1, default=str)
        print(f"wrote {stem}.md and {stem}.json")
    return results


if __name__ == "__main__":
    main()
