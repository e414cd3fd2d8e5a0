"""bench_fsdp.py: peak memory and step time of distributed.py's FSDP2 path beside plain training (bench.py's fsdp section).

    python bench.py fsdp                   # GPU: 1-rank FSDP2 vs plain; CPU: 2 gloo ranks' peak memory per phase
    python bench.py fsdp --quick           # tiny shapes

In its own file because it is self-contained: it spawns its own rank processes (_fsdp_memory_rank) and shares
nothing with the other sections.

Simplifications:
 1. One rank on a GPU (FSDP shards nothing: the comparison shows its overhead; savings scale with the world size).
 2. CPU memory is the peak resident set per phase (Linux VmHWM), not an allocator trace.

Shapes: B batch rows, T positions (a training batch is (B, T+1) token ids: T inputs and the next-token targets).
"""
import os

# bench_fsdp(args): peak memory and step time of one training step through distributed.py's FSDP2 path (fully_shard per
# block, bf16 compute, fp32 reduction; a 1-rank process group) vs plain single-GPU training (fp32 weights + bf16
# autocast) for a ~1B-parameter model (llama-3.2-1b shape, random weights), AdamW, batch 4 x 1024 tokens.
# With one rank FSDP shards nothing: the comparison shows its overhead; memory savings scale with the world size
# (see the README's table). On CPU: peak resident memory per phase of 2 gloo ranks (_bench_fsdp_cpu).

def _fsdp_memory_rank(rank: int, mode: str, preset: str, over: dict, out: str, port: int, seq: int) -> None:
    """One of 2 CPU ranks (gloo) of bench_fsdp's memory measurement; writes OUT/{mode}_rank{rank}.json with the
    peak resident memory (GiB, ru_maxrss: the peak so far) after each phase. mode "streamed": this code
    (sharded before allocation, sampling copy refreshed one gathered parameter at a time, streamed save);
    "gathered": the earlier code, kept here as the baseline (full model before sharding, a full fp32 state
    dict gathered for every refresh into a randomly initialised copy, full model + optimizer dicts to save).
    Each phase reports its own peak (Linux VmHWM, reset between phases)."""
    import json
    import time

    import torch

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import checkpoint
    import distributed
    import train
    from model import ModelConfig, Transformer
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    distributed.dist_init("cpu")

    def peak():  # GiB: the peak resident memory since the last reset (VmHWM), then reset it
        with open("/proc/self/status") as f:
            hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 2**20  # KiB -> GiB
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: reset the peak to the current resident size
        return hwm

    cfg, rows, t0 = ModelConfig.from_preset(preset, **over), [], time.time()
    peak()

    def phase(name):
        distributed.barrier()
        rows.append((name, peak(), time.time() - t0))

    torch.manual_seed(0)
    if mode == "streamed":
        model = checkpoint.empty_model(cfg, shard=distributed.shard)  # each rank allocates its slice only
        with torch.no_grad():
            for p in model.parameters():
                p.to_local().normal_(0.0, 0.02)  # random weights at the real shape
    else:
        model = distributed.shard(Transformer(cfg))
    phase("model (fp32 shards)")

    full = StateDictOptions(full_state_dict=True)
    if mode == "streamed":
        replica = distributed.Replica(model)
        sampler = replica.get
    else:
        copy = {}

        def sampler():
            sd = get_model_state_dict(model, options=full)
            if not copy:
                copy["m"] = Transformer(cfg)
            copy["m"].load_state_dict(sd, strict=False)
            return copy["m"]
    sampler()
    phase("+ sampling copy (fp32 on CPU)")
    opt = train.make_optimizer(model, 1e-5, 0.0) if mode == "streamed" else \
        torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    batch = torch.randint(0, cfg.vocab_size, (1, seq + 1))  # (1, T+1) per rank
    train.pretrain_step(model, opt, batch, 1e-5)
    phase("+ 1 training step (grads, AdamW state)")
    sampler()
    phase("+ refresh of the sampling copy")
    path = os.path.join(out, f"ckpt_{mode}")
    if mode == "streamed":
        train.save_checkpoint(path, model, opt)
    else:
        from safetensors.torch import save_file
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        osd = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if distributed.RANK == 0:
            save_file({k: v.contiguous() for k, v in sd.items() if k != "lm_head.weight"},
                      os.path.join(out, "old.safetensors"))
        del sd, osd  # both were alive at once on rank 0, as in the earlier save
    phase("+ final checkpoint (weights + optimizer)")
    with open(os.path.join(out, f"{mode}_rank{rank}.json"), "w") as f:
        json.dump(rows, f)
    torch.distributed.destroy_process_group()


def bench_fsdp(args):
    """GPU: step time and peak memory of the FSDP2 path vs plain training (1 rank). CPU: peak resident memory per
    rank of 2 FSDP ranks (gloo) at Qwen2.5-0.5B shape (--quick: tiny-gqa) through model, sampling copy, a
    training step, a refresh and the final checkpoint, this code vs the earlier gathered-state-dict code; then
    fused vs unfused AdamW step time and checkpoint load time (meta-device init vs random init + copy)."""
    import time

    import torch

    if not torch.cuda.is_available():
        return _bench_fsdp_cpu(args)
    import torch.distributed as dist

    import train
    from model import ModelConfig, Transformer

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dev = torch.device("cuda")
    shape = "tiny-gqa" if args.quick else "llama-3.2-1b"
    B, T = (2, 128) if args.quick else (4, 1024)
    out = {}
    for mode in ("plain", "fsdp"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch.manual_seed(0)
        model = Transformer(ModelConfig.from_preset(shape)).to(dev)
        if mode == "fsdp":
            if not dist.is_initialized():
                dist.init_process_group("nccl", rank=0, world_size=1)
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # distributed.shard() skips world 1
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            for block in model.layers:
                fully_shard(block, mp_policy=mp)
            fully_shard(model, mp_policy=mp)
        opt = train.make_optimizer(model, 1e-4, 0.1)
        batch = torch.randint(0, model.cfg.vocab_size, (B, T + 1), device=dev)  # (B, T+1)
        times = []
        for i in range(6):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            train.pretrain_step(model, opt, batch, 1e-4)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        ms = sorted(times[2:])[len(times[2:]) // 2] * 1e3
        peak = torch.cuda.max_memory_allocated() / 2**30
        params = sum(p.numel() for p in model.parameters())
        print(f"fsdp: {mode:5s} {shape} ({params / 1e9:.2f}B params) step {ms:.1f} ms, peak memory {peak:.2f} GiB "
              f"on {torch.cuda.get_device_name()}")
        out[mode] = {"ms": ms, "peak_gib": peak}
        del model, opt
    if dist.is_initialized():
        dist.destroy_process_group()
    print(f"fsdp: step time fsdp/plain {out['fsdp']['ms'] / out['plain']['ms']:.2f}x, "
          f"peak memory fsdp/plain {out['fsdp']['peak_gib'] / out['plain']['peak_gib']:.2f}x (1 rank)")
    return out


def _bench_fsdp_cpu(args):
    """bench_fsdp on CPU: peak memory per phase of 2 gloo ranks (this code vs the earlier one), AdamW fused vs
    foreach step time, and checkpoint load time (meta-device init vs random init + copy)."""
    import json
    import shutil
    import tempfile
    import time

    import torch
    import torch.multiprocessing as mp

    import checkpoint
    from model import ModelConfig, Transformer, count_params

    quick = bool(getattr(args, "quick", False))
    preset = "tiny-gqa" if quick else "qwen2.5-0.5b"
    cfg = ModelConfig.from_preset(preset)
    n_params = count_params(cfg)
    out = {"device": "CPU", "preset": preset, "params": n_params}
    # The earlier code would need ~10 GiB per rank at the full shape: on a shared 24 GiB machine both codes are
    # compared at the real width and vocabulary with 6 of the 24 layers, and this code also runs at full size.
    runs = [({}, ["streamed", "gathered"])] if quick else [({"n_layers": 6}, ["streamed", "gathered"]),
                                                          ({}, ["streamed"])]
    for over, modes in runs:
        n_run = count_params(ModelConfig.from_preset(preset, **over))  # parameters of this run's model
        print(f"fsdp: CPU, 2 ranks (gloo, 1 thread each), {preset} {over or ''} ({n_run / 1e6:.1f}M params, vocab "
              f"{cfg.vocab_size}), random weights, 32 tokens per rank; peak resident memory per rank (GiB) "
              f"during each phase; 4N = one fp32 copy = {4 * n_run / 2**30:.2f} GiB")
        tmp = tempfile.mkdtemp(prefix="bench_fsdp_")
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)  # ranks: freed buffers >= 1 MiB leave the RSS at once
        try:
            for i, mode in enumerate(modes):
                mp.spawn(_fsdp_memory_rank, args=(mode, preset, over, tmp, 29600 + i + os.getpid() % 200, 32),
                         nprocs=2)
            res = {m: [json.load(open(os.path.join(tmp, f"{m}_rank{r}.json"))) for r in range(2)] for m in modes}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        head = {"streamed": "this code", "gathered": "earlier code"}
        print("| phase | " + " | ".join(f"{head[m]} rank {r}" for m in modes for r in range(2)) + " |\n|---|"
              + "---|" * (2 * len(modes)))
        for j, (name, _, _) in enumerate(res[modes[0]][0]):
            print(f"| {name} | " + " | ".join(f"{res[m][r][j][1]:.2f}" for m in modes for r in range(2)) + " |")
        print("fsdp: wall time " + ", ".join(f"{head[m]} {res[m][0][-1][2]:.0f}s" for m in modes))
        out[f"memory{over or ''}"] = res

    # AdamW on the model's parameter shapes: fused (one kernel over all tensors) vs the default (foreach)
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in _param_shapes(cfg)]  # one per parameter shape
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3  # p.shape
    times = {}
    for fused in (False, True):
        opt = torch.optim.AdamW(params, lr=1e-5, fused=fused)
        ts = []
        for _ in range(4):
            t0 = time.perf_counter()
            opt.step()
            ts.append(time.perf_counter() - t0)
        times[fused] = (ts[0], sorted(ts[1:])[1])
        del opt
    del params
    print(f"| AdamW step ({n_params / 1e6:.0f}M params, {torch.get_num_threads()} threads) | first step | median |\n"
          f"|---|---|---|\n| default (foreach) | {times[False][0]:.2f}s | {times[False][1]:.2f}s |\n"
          f"| fused=True | {times[True][0]:.2f}s | {times[True][1]:.2f}s |")
    out["adamw_s"] = {"foreach": times[False], "fused": times[True]}

    # checkpoint load: meta-device init + per-tensor copy vs random init of the whole model, then copy
    lcfg = ModelConfig(attn="gqa", vocab_size=32768, dim=768, n_layers=2 if quick else 12, n_heads=12, n_kv_heads=4,
                       head_dim=64, inter_dim=2048, qkv_bias=True, rope_interleave=False, max_seq_len=2048)
    tmp = tempfile.mkdtemp(prefix="bench_load_")
    try:
        from safetensors.torch import load_file
        from tokenizer import Tokenizer
        tok = Tokenizer.train(["a b c 1 2 3"], 270)
        checkpoint.save(tmp, Transformer(lcfg), tok)
        ours = {k: v.contiguous() for k, v in Transformer(lcfg).state_dict().items()}
        from safetensors.torch import save_file
        save_file(ours, os.path.join(tmp, "ours.safetensors"))
        del ours

        def random_init_then_copy():
            m = Transformer(lcfg)
            m.load_state_dict(load_file(os.path.join(tmp, "ours.safetensors")))

        def meta_init():
            checkpoint.load(tmp)

        res = {}
        for name, fn in (("random init + load_state_dict (before)", random_init_then_copy),
                         ("checkpoint.load: meta init, per-tensor copy", meta_init)):
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            res[name] = sorted(ts)[1]
        print(f"| load {count_params(lcfg) / 1e6:.0f}M-param checkpoint (median of 3) | seconds |\n|---|---|")
        for k, v in res.items():
            print(f"| {k} | {v:.2f} |")
        out["load_s"] = res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _param_shapes(cfg):
    """The parameter shapes of a model config, without building it."""
    import torch
    from model import Transformer
    with torch.device("meta"):
        return [p.shape for p in Transformer(cfg).parameters()]
