"""bench_decode.py: what one decode step of sample.generate costs, in aten ops, kernel launches and host syncs.

    python bench.py decode                 # this section, with bench.py's table at the end
    python bench.py decode --quick         # fewer rows and steps

Three loops at zero-small's model size: the eager twin with the old per-expert MoE ("before"), the eager twin
today, and the static loop; counted with torch.profiler on this CPU, timed per step, then turned into a projected
H200 time per step (a projection, with its assumptions printed). A section of bench.py, in its own file because
its counting tools (count_host_syncs, count_launches, project_decode_step) are a concept of their own.

Simplifications:
 1. Counts are taken on CPU; a GPU launches one kernel per leaf aten op that computes, which is what is counted.
 2. The projection is arithmetic on the measured counts and stated assumptions, not a measurement.
 3. Per step = (a run of 1 + `steps` steps - a run of 1 step) / steps, so prefill and set-up cancel.

Shapes: P prompts, G samples per prompt, B = P*G rows being decoded, T new tokens (T_prompt: a prompt's
length), V vocab, H heads, R kv latent rank (kv_lora_rank), Dr RoPE head dim (qk_rope_head_dim).
"""
import contextlib
import time

from bench import H200_BF16_FLOPS, H200_HBM_BYTES_S, median, row

# bench_decode(args): what one decode step of sample.generate costs in launches and host syncs, at zero-small's
# model size (model preset "zero-small", vocab from train.TRAIN_PRESETS["zero-small"]), for three loops:
#   before      the eager twin (static=False: dynamic cache, a host check every step, stop strings checked on the
#               host for every row) with the per-expert MoE (.tolist() per MoE layer): what the code ran before
#   eager twin  the same loop with today's MoE fast path (torch._grouped_mm, offsets on the device)
#   static      the static loop (static cache, stops on the device, one host check every 16 steps)
# Counted on this CPU: aten ops (torch.profiler: every aten:: event, nested included, minus the CPU-only insides of
# _grouped_mm), kernel launches (leaf aten ops that compute, i.e. not views; on a GPU each is one launch) and host
# syncs (count_host_syncs: calls of .tolist() / .cpu() / .item() / .nonzero() / bool() / int() on device tensors,
# each of which blocks on a GPU; the loops use no boolean-mask indexing). Per step = (generate(1 + steps) -
# generate(1)) / steps, so prefill and set-up cancel. CPU ms per step: the same difference, timed, median of
# repeats after a warm-up. Then project_decode_step() turns the counts into a
# projected H200 time per step (a projection, with its assumptions printed).

VIEW_OPS = {"aten::" + op for op in (  # ops that make views or metadata only: no kernel
    "view reshape expand as_strided transpose t unsqueeze squeeze slice select permute split split_with_sizes chunk "
    "unbind empty empty_like empty_strided _unsafe_view alias detach lift_fresh resolve_conj resolve_neg result_type "
    "_reshape_alias flatten view_as expand_as narrow contiguous to _to_copy is_nonzero size stride numel dim item "
    "_local_scalar_dense _has_compatible_shallow_copy_type set_ unfold").split()}
HOST_S_PER_OP = 5e-6  # assumed host cost of one aten op called from Python on a GPU server (dispatch, launch), s
KERNEL_MIN_S = 3e-6  # assumed device time of a tiny kernel launched eagerly (launch-latency bound), seconds
KERNEL_MIN_GRAPH_S = 1.5e-6  # the same inside a CUDA graph (no per-launch CPU work), seconds
HBM_EFFICIENCY = 0.8  # assumed fraction of H200_HBM_BYTES_S a decode step's reads reach


def gpu_visible_ops(prof):
    """The aten events of a CPU profile, minus the insides of aten::_grouped_mm: on CPU it loops over the experts
    (reading the offsets on the host), on a Hopper GPU it is one kernel with the offsets on the device."""
    def inside_grouped(e):
        p = e.cpu_parent
        while p is not None:
            if p.name == "aten::_grouped_mm":
                return True
            p = p.cpu_parent
        return False
    return [e for e in prof.events() if e.name.startswith("aten::") and not inside_grouped(e)]


@contextlib.contextmanager
def count_host_syncs():
    """Count the tensor methods that block on a GPU (.tolist(), .cpu(), .item(), .nonzero(), bool()/int()/float())
    while inside; yields a one-element list holding the count. Calls on host copies (results of .cpu(), and their
    views) are not counted: on a GPU they would not wait for it."""
    import torch
    names = ("tolist", "cpu", "item", "nonzero", "__bool__", "__int__", "__float__")
    real, calls = {name: getattr(torch.Tensor, name) for name in names}, [0]

    def wrap(name):
        def f(self, *a, **k):
            base = self._base if self._base is not None else self
            if not getattr(base, "_host_copy", False):
                calls[0] += 1
            out = real[name](self, *a, **k)
            if name == "cpu":
                out._host_copy = True
            return out
        return f
    for name in names:
        setattr(torch.Tensor, name, wrap(name))
    try:
        yield calls
    finally:
        for name, f in real.items():
            setattr(torch.Tensor, name, f)


def count_launches(events):
    """Kernel launches a GPU would make for these events: leaf ops that compute (not views), and each
    _grouped_mm once."""
    return sum(1 for e in events if (not e.cpu_children and e.name not in VIEW_OPS) or e.name == "aten::_grouped_mm")


def decode_bytes_flops(cfg, rows, context, slots, dtype_bytes=2):
    """Bytes read and FLOPs of one decode step for `rows` sequences: bf16 weights (all experts: at hundreds of rows
    every expert is hit; the input embedding only gathers rows), KV cache over `slots` per row (the static cache
    reads all its slots; the dynamic one the mean context), and 2 x active matmul params + absorbed-MLA attention
    over `context` keys (FLOPs)."""
    from model import cache_bytes_per_token, count_params
    weights = (count_params(cfg) - cfg.vocab_size * cfg.dim) * dtype_bytes
    kv = rows * slots * cache_bytes_per_token(cfg, dtype_bytes) * cfg.n_layers
    H, R, Dr = cfg.n_heads, cfg.kv_lora_rank, cfg.qk_rope_head_dim
    attn = 2 * H * context * (2 * R + Dr) + 2 * H * R * (cfg.qk_nope_head_dim + cfg.v_head_dim)  # per row and layer
    flops = rows * (2 * (count_params(cfg, active=True) - cfg.vocab_size * cfg.dim) + cfg.n_layers * attn)
    return weights + kv, flops


def project_decode_step(host_ops, launches, graph_launches, bytes_, flops, syncs_per_step):
    """Projected H200 seconds for one decode step (a projection, not a measurement). host = host_ops (aten ops
    called from Python) x HOST_S_PER_OP; device = launches x KERNEL_MIN_S + graph_launches x KERNEL_MIN_GRAPH_S
    + max(bytes at HBM_EFFICIENCY x H200_HBM_BYTES_S, flops at H200_BF16_FLOPS). With a host sync every step the
    host waits for the device (host + device); without one it runs ahead (the slower of the two)."""
    host = host_ops * HOST_S_PER_OP
    device = launches * KERNEL_MIN_S + graph_launches * KERNEL_MIN_GRAPH_S \
        + max(bytes_ / (HBM_EFFICIENCY * H200_HBM_BYTES_S), flops / H200_BF16_FLOPS)
    return host + device if syncs_per_step >= 1 else max(host, device)


def bench_decode(args):
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: one thread avoids OpenMP contention on a shared host
    try:
        return _bench_decode(bool(getattr(args, "quick", False)))
    finally:
        torch.set_num_threads(threads)


def _bench_decode(quick):
    import torch
    from torch.profiler import ProfilerActivity, profile

    import model as model_mod
    import sample
    from model import ModelConfig, Transformer
    from train import TRAIN_PRESETS

    preset = TRAIN_PRESETS["zero-small"]
    cfg = ModelConfig.from_preset(preset["model"], vocab_size=preset["vocab_size"])
    torch.manual_seed(0)
    m = Transformer(cfg).eval()
    device = f"CPU ({torch.get_num_threads()} threads)"
    P, G, steps, repeats = (2, 2, 16, 3) if quick else (4, 4, 32, 5)  # prompts, samples per prompt
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, cfg.vocab_size, (40 + 7 * i,), generator=g).tolist() for i in range(P)]  # P lists

    class CharTokenizer:  # one CJK character per id: "</answer>" can never complete, so every row runs every step
        vocab_size, eos_id, pad_id, special_tokens = cfg.vocab_size, 1, 0, {}

        def decode(self, ids):
            return "".join(chr(0x4E00 + i) for i in ids)

    kw = dict(n=G, temperature=1.0, stop_strings=["</answer>"], tokenizer=CharTokenizer(), seed=0)
    loops = {"before": dict(static=False, moe="split"), "eager twin": dict(static=False),
             "static": dict(static=True, check_every=16)}
    print(f"[decode] device: {device}; zero-small model: dim {cfg.dim}, {cfg.n_layers} layers, "
          f"{cfg.n_routed_experts} experts (top-{cfg.n_activated_experts}), vocab {cfg.vocab_size}; "
          f"{P * G} rows, {steps} steps counted")

    def run(T, opts):  # one generate() call of T new tokens on the loop `opts` chooses
        real_kernel = model_mod.moe_kernel
        if opts.get("moe"):
            model_mod.moe_kernel = lambda device, dtype: opts["moe"]
        try:
            return sample.generate(m, prompts, max_new_tokens=T, static=opts["static"],
                                   check_every=opts.get("check_every", 16), **kw)
        finally:
            model_mod.moe_kernel = real_kernel

    def counts(T, opts):
        """(aten ops, kernel launches, host syncs) of one generate() call of T steps."""
        with count_host_syncs() as syncs, profile(activities=[ProfilerActivity.CPU]) as prof:
            run(T, opts)
        ev = gpu_visible_ops(prof)
        top = sum(1 for e in ev if e.cpu_parent is None)  # called from Python: what the host pays dispatch for
        return len(ev), top, count_launches(ev), syncs[0]

    res, rows = {}, []
    for label, opts in loops.items():
        run(4, opts)  # warm-up
        c1, c2 = counts(1, opts), counts(1 + steps, opts)
        ops, top, launches, syncs = ((b - a) / steps for a, b in zip(c1, c2))
        t1, t2 = [], []
        for _ in range(repeats):
            for T, ts in ((1, t1), (1 + steps, t2)):
                t0 = time.perf_counter()
                run(T, opts)
                ts.append(time.perf_counter() - t0)
        ms = (median(t2) - median(t1)) / steps * 1e3
        res[label] = dict(ops=ops, top_ops=top, launches=launches, syncs=syncs,
                          cpu_ms=ms if ms > 0 else float("nan"))
        print(f"[decode] {label:10s}: {ops:7.1f} aten ops ({top:6.1f} called from Python), {launches:6.1f} kernel "
              f"launches, {syncs:5.2f} host syncs per step; {ms:.2f} CPU ms per step", flush=True)

    # the model step alone (what a CUDA graph replays): profile one static decode step
    with torch.no_grad():
        cache, logits, pos = sample._prefill(m, prompts, G, 8, 0, torch.device("cpu"))  # (B, V), (B,)
        cache.to_static()
        tok = logits.argmax(-1)  # (B,)
        sample._decode_step(m, cache, tok, pos)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            sample._decode_step(m, cache, tok, pos + 1)
    cfg.mla_absorb = False  # _prefill switched the model to absorbed decode; generate() switches it back, so do we
    ev = gpu_visible_ops(prof)
    step_ops, step_top, step_launches = len(ev), sum(1 for e in ev if e.cpu_parent is None), count_launches(ev)
    res["model_step"] = dict(ops=step_ops, top_ops=step_top, launches=step_launches)
    print(f"[decode] model step alone: {step_ops} aten ops ({step_top} called from Python), {step_launches} kernel "
          f"launches")

    # projection at zero-small's rollout shape: prompts_per_step x group_size rows, max_new_tokens steps
    B, T_new, T_prompt = preset["prompts_per_step"] * preset["group_size"], preset["max_new_tokens"], 64
    b_dyn, fl = decode_bytes_flops(cfg, B, T_prompt + T_new / 2, T_prompt + T_new / 2)
    b_static, _ = decode_bytes_flops(cfg, B, T_prompt + T_new / 2, T_prompt + T_new)
    st, bf = res["static"], res["before"]
    proj = {"before": project_decode_step(bf["top_ops"], bf["launches"], 0, b_dyn, fl, bf["syncs"]),
            "static": project_decode_step(st["top_ops"], st["launches"], 0, b_static, fl, st["syncs"]),
            "static + CUDA graph": project_decode_step(st["top_ops"] - step_top + 1, st["launches"] - step_launches,
                                                       step_launches, b_static, fl, st["syncs"])}
    res["projection"] = dict(rows=B, prompt=T_prompt, new_tokens=T_new, bytes_dynamic=b_dyn, bytes_static=b_static,
                             flops=fl, step_ms={k: v * 1e3 for k, v in proj.items()})
    print(f"[decode] PROJECTION (not a measurement) of one zero-small decode step on an H200 at the rollout shape "
          f"({B} rows, prompt {T_prompt} (assumed) + {T_new} new tokens, bf16): bytes read {b_dyn / 1e6:.0f} MB "
          f"dynamic cache / {b_static / 1e6:.0f} MB static (all slots), {fl / 1e9:.1f} GFLOP; assumptions: "
          f"{HOST_S_PER_OP * 1e6:.0f} us host per eager op, {KERNEL_MIN_S * 1e6:.1f} us per eager kernel, "
          f"{KERNEL_MIN_GRAPH_S * 1e6:.1f} us per graph kernel, {HBM_EFFICIENCY:.0%} of "
          f"{H200_HBM_BYTES_S / 1e12:.1f} TB/s, {H200_BF16_FLOPS / 1e12:.0f} TFLOP/s")
    for k, v in proj.items():
        print(f"[decode]   {k:20s}: {v * 1e3:6.2f} ms/step -> {v * T_new:5.2f} s per rollout batch of {T_new} steps")

    for label in ("eager twin", "static"):
        r = res[label]
        rows += [row("decode", f"aten ops/step, {label}", r["ops"], "ops", "before", bf["ops"], device, False),
                 row("decode", f"kernel launches/step, {label}", r["launches"], "launches", "before",
                     bf["launches"], device, False),
                 row("decode", f"host syncs/step, {label}", r["syncs"], "syncs", "before", bf["syncs"], device,
                     False),
                 row("decode", f"CPU ms/step, {label}", r["cpu_ms"], "ms", "before", bf["cpu_ms"], device, False)]
    for k in ("static", "static + CUDA graph"):
        rows.append(row("decode", f"PROJECTED H200 ms/step, {k}", proj[k] * 1e3, "ms", "before (projected)",
                        proj["before"] * 1e3, "H200 (projection)", False))
    res["rows"] = rows
    return res
