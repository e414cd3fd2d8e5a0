"""Tests for the fast decode path: the static-cache loop of sample.generate equals its eager twin (tokens and
log-probs under one seed, with ragged prompts, n samples, stop tokens, stop strings and compaction), takes no host
sync between checks, never proposes ids beyond the tokenizer, and works under bf16 autocast and with bf16 weights;
model.py's sync-free MoE paths equal the per-expert loop, and MoE load counts skip padding."""
import pytest
import torch

import model as model_mod
from model import ModelConfig, Transformer
from sample import generate

PROMPTS = [[5, 17, 3, 99, 42, 7, 8], [11, 2], [250, 251, 252, 9], [300]]


def tiny(name, **kw):
    torch.manual_seed(0)
    return Transformer(ModelConfig.from_preset(name, **kw)).eval()


class LetterTokenizer:
    """Token i <-> the letter chr(97 + i % 4) ('a'-'d'); ids >= vocab_size do not exist (decode raises)."""
    eos_id, pad_id, special_tokens = 1, 0, {}

    def __init__(self, vocab_size=512):
        self.vocab_size = vocab_size

    def decode(self, ids):
        if any(i >= self.vocab_size for i in ids):
            raise KeyError("Invalid token for decoding")
        return "".join(chr(97 + i % 4) for i in ids)


def assert_same(a, b):
    assert torch.equal(a.lengths, b.lengths) and torch.equal(a.truncated, b.truncated)
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- static loop == eager twin

@pytest.mark.parametrize("name", ["tiny-mla", "tiny-gqa", "tiny-moe"])
def test_static_loop_equals_eager_twin(name):
    m = tiny(name)
    kw = dict(max_new_tokens=20, temperature=1.0, top_p=0.9, n=3, stop_tokens=(3, 4, 5, 6, 7), seed=1)
    eager = generate(m, PROMPTS, static=False, **kw)
    fast = generate(m, PROMPTS, static=True, check_every=8, **kw)
    assert_same(eager, fast)
    assert 0 < int(eager.truncated.sum()) < 12  # some rows stopped early (compaction ran), some did not
    greedy = [generate(m, PROMPTS, max_new_tokens=12, temperature=0, n=2, static=s) for s in (False, True)]
    assert_same(*greedy)


def test_stop_strings_cut_back_to_where_they_complete():
    """Rows that complete a stop string between host checks ran on; the check cuts them back to the same place
    the eager twin stopped them, with pads and zero log-probs after it."""
    m, tok = tiny("tiny-gqa"), LetterTokenizer()
    kw = dict(max_new_tokens=24, temperature=1.0, n=4, stop_strings=["dab"], tokenizer=tok, seed=2)
    eager = generate(m, PROMPTS, static=False, **kw)
    fast = generate(m, PROMPTS, static=True, check_every=10, **kw)
    assert_same(eager, fast)
    stopped = ~eager.truncated
    assert stopped.sum() >= 3 and (eager.lengths[stopped] % 10 != 0).any()  # some stopped between checks
    for r in stopped.nonzero()[:, 0].tolist():
        text = tok.decode(fast.tokens[r, :fast.lengths[r]].tolist())
        assert text.endswith("dab") and text.count("dab") == 1


def test_callback_sees_the_same_stream():
    m, tok = tiny("tiny-mla"), LetterTokenizer()
    seen = {False: [], True: []}
    for static in (False, True):
        generate(m, PROMPTS[:2], max_new_tokens=15, n=2, stop_tokens=(3, 4), stop_strings=["ca"], tokenizer=tok,
                 seed=0, static=static, check_every=8, callback=lambda r, t, s=static: seen[s].append((r, t)))
    assert seen[False] == seen[True] and len(seen[True]) >= 3


def test_static_loop_takes_no_host_sync_between_checks():
    """Count the ops that block on a GPU (.item()/int()/bool() -> _local_scalar_dense, boolean indexing and
    nonzero -> nonzero) while decoding: the eager twin takes one or more per step, the static loop a few per check."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountSyncs(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten._local_scalar_dense, torch.ops.aten.nonzero):
                CountSyncs.n += 1
            return func(*args, **(kwargs or {}))

    m = tiny("tiny-moe")
    counts = {}
    for static in (False, True):
        CountSyncs.n = 0
        with CountSyncs():
            g = generate(m, PROMPTS, max_new_tokens=33, temperature=1.0, n=2, seed=0, static=static, check_every=16)
        counts[static] = CountSyncs.n
    assert bool(g.truncated.all())  # no stop tokens: all 33 steps ran
    assert counts[False] >= 33 and counts[True] <= 3 * 3 + 2, counts  # 3 checks (steps 16, 32, 33)


def test_static_loop_with_compile_plumbing(monkeypatch):
    import sample
    monkeypatch.setattr(sample, "COMPILE_BACKEND", "eager")  # CPU: dynamo tracing of the static step, no inductor
    m = tiny("tiny-moe")
    kw = dict(max_new_tokens=6, temperature=1.0, n=2, stop_tokens=(4, 5), seed=3)
    assert_same(generate(m, PROMPTS[:2], static=False, **kw), generate(m, PROMPTS[:2], compile=True, static=True, **kw))


def test_cuda_graph_needs_cuda():
    with pytest.raises(ValueError, match="cuda_graph"):
        generate(tiny("tiny-gqa"), PROMPTS, max_new_tokens=4, cuda_graph=True)
    with pytest.raises(ValueError, match="check_every"):
        generate(tiny("tiny-gqa"), PROMPTS, max_new_tokens=4, check_every=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "autocast"])
def test_cuda_graph_step_equals_static_loop_on_gpu(dtype):
    """The replayed graph runs the same kernels as the plain static loop at the same batch sizes (compact_frac 0.5
    for both, as the graph uses): identical samples; and the static loop equals the eager twin in fp32."""
    m = tiny("tiny-moe").cuda().to(torch.bfloat16 if dtype == "bf16" else torch.float32)
    kw = dict(max_new_tokens=40, temperature=1.0, n=4, stop_tokens=(3, 4, 5), seed=0, compact_frac=0.5, check_every=8)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "autocast"):
        plain = generate(m, PROMPTS, static=True, **kw)
        graph = generate(m, PROMPTS, static=True, cuda_graph=True, **kw)
        assert_same(plain, graph)
        assert 0 < int(graph.truncated.sum()) < 16
        if dtype == "fp32":
            assert_same(generate(m, PROMPTS, static=False, **kw), plain)


# ----------------------------------------------------------------------------- vocabulary limit

@pytest.mark.parametrize("static", [False, True])
def test_sampler_never_proposes_ids_beyond_the_tokenizer(static):
    """The embedding has 512 rows, the tokenizer 40 ids: without the limit ids >= 40 come out (and would crash
    decode); with it (explicit, or taken from tokenizer.vocab_size) none does, greedy included."""
    m = tiny("tiny-mla")
    kw = dict(max_new_tokens=16, temperature=1.0, n=4, seed=0, static=static)
    free = generate(m, PROMPTS, **kw)
    assert (free.tokens[free.mask] >= 40).any()
    for gen in (generate(m, PROMPTS, vocab_limit=40, **kw),
                generate(m, PROMPTS, tokenizer=LetterTokenizer(40), stop_strings=["ab"], **kw),
                generate(m, PROMPTS, vocab_limit=40, **dict(kw, temperature=0))):
        assert (gen.tokens[gen.mask] < 40).all() and gen.logprobs[gen.mask].isfinite().all()


# ----------------------------------------------------------------------------- bf16

@pytest.mark.parametrize("static", [False, True])
def test_generate_under_bf16_autocast_and_bf16_weights(static):
    m = tiny("tiny-moe")
    ref = generate(m, PROMPTS, max_new_tokens=6, temperature=1.0, n=2, seed=0, static=static)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = generate(m, PROMPTS, max_new_tokens=6, temperature=1.0, n=2, seed=0, static=static)
        assert m.make_cache(1, 4).kv[0][0].dtype == torch.bfloat16  # the cache follows autocast
    bf16 = generate(tiny("tiny-moe").to(torch.bfloat16), PROMPTS, max_new_tokens=6, n=2, seed=0, static=static)
    for g in (amp, bf16):
        assert g.logprobs[g.mask].isfinite().all() and (g.logprobs[g.mask] <= 0).all()
        torch.testing.assert_close(g.logprobs[:, 0], ref.logprobs[:, 0], atol=0.1, rtol=0)  # first token: same draw


# ----------------------------------------------------------------------------- MoE paths and load counts

@pytest.mark.parametrize("kernel", ["grouped", "dense", "split"])
def test_moe_fast_kernels_equal_loop(monkeypatch, kernel):
    """Each formulation of MoE.experts_fast equals the per-expert loop (the GPU picks grouped or dense)."""
    m = tiny("tiny-moe")
    moe = m.layers[1].ffn
    x = torch.randn(3, 11, 64)
    with torch.no_grad():
        m.cfg.moe_impl = "loop"
        want = moe(x)
        m.cfg.moe_impl = "fast"
        monkeypatch.setattr(model_mod, "moe_kernel", lambda device, dtype: kernel)
        got = moe(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_moe_grouped_kernel_with_grads_equals_loop(monkeypatch):
    """With grad enabled the grouped path starts each expert's slice at a multiple of 8 rows (the bf16 weight
    gradient needs it on GPU): forward and gradients equal the loop's."""
    m = tiny("tiny-moe").train()
    moe = m.layers[1].ffn
    x = torch.randn(4, 16, 64)
    out = {}
    for impl in ("loop", "fast"):
        m.cfg.moe_impl = impl
        moe.zero_grad()
        monkeypatch.setattr(model_mod, "moe_kernel", lambda device, dtype: "grouped")
        y = moe(x)
        y.square().sum().backward()
        out[impl] = (y.detach(), moe.w1.grad.clone(), moe.w2.grad.clone(), moe.gate.weight.grad.clone())
    assert (moe.load > 0).all()  # every expert has tokens (CPU's _grouped_mm backward rejects empty groups)
    for a, b in zip(out["loop"], out["fast"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_moe_load_counts_only_masked_tokens():
    """Padding must not count as expert load: a right-padded batch with load_mask counts exactly what the
    unpadded rows count alone (without the mask the padding adds its own routes)."""
    m = tiny("tiny-moe").train()
    a, b = torch.randint(0, 512, (1, 9)), torch.randint(0, 512, (1, 4))
    padded = torch.cat([a, torch.cat([b, torch.zeros(1, 5, dtype=torch.long)], 1)])  # (2, 9)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 4:] = False

    def loads(fn):
        for l in m.layers[1:]:
            l.ffn.load.zero_()
        fn()
        return torch.stack([l.ffn.load.clone() for l in m.layers[1:]])  # (L, E)

    want = loads(lambda: (m(a), m(b)))
    assert torch.equal(loads(lambda: m(padded, load_mask=mask)), want)
    assert loads(lambda: m(padded)).sum() == want.sum() + 5 * 2 * 2  # 5 pads x K=2 x 2 MoE layers


# ----------------------------------------------------------------------------- bench.py plumbing

def test_bench_guards_flags_and_independent_sections(monkeypatch, capsys, tmp_path):
    import math

    import bench
    assert math.isnan(bench.per_s(100, 0.0)) and math.isnan(bench.ratio(1.0, 0.0)) and bench.ratio(6.0, 3.0) == 2
    args = bench.parse_args(["decode", "--out-dir", str(tmp_path), "--quick"])
    assert args.sections == ["decode"] and args.quick and args.out_dir == str(tmp_path)
    for bad, says in ((["--nope"], "unknown flag '--nope'; valid: --quick"), (["nope"], "unknown section 'nope'")):
        with pytest.raises(SystemExit) as e:
            bench.parse_args(bad)
        assert e.value.code == 2 and says in capsys.readouterr().err

    def broken(args):
        raise RuntimeError("no namespaces here")
    monkeypatch.setattr(bench, "SECTIONS", {"first": broken, "second": lambda args: {
        "rows": [bench.row("second", "speed", 30.0, "tok/s", "baseline", 10.0, "CPU")]}})
    bench.main(["--quick", f"--out_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert "[first] FAILED: RuntimeError: no namespaces here" in out
    assert "| second | speed | 30 tok/s | baseline | 10 tok/s | 3.00x (higher is better) | CPU |" in out
    assert "| first | ERROR |" in (tmp_path / "bench_first-second.md").read_text()


def test_bench_sections_in_their_own_files_are_reached_by_name(monkeypatch, capsys):
    """bench.py decode and bench.py fsdp run bench_decode.py's and bench_fsdp.py's functions (split for length)."""
    import bench
    import bench_decode
    import bench_fsdp
    for module, name in ((bench_decode, "decode"), (bench_fsdp, "fsdp")):
        monkeypatch.setattr(module, f"bench_{name}", lambda args, name=name: {
            "rows": [bench.row(name, "reached", 1.0, "x", "baseline", 2.0, "CPU")]})
    bench.main(["decode", "fsdp", "--quick"])
    out = capsys.readouterr().out
    assert "| decode | reached |" in out and "| fsdp | reached |" in out and "FAILED" not in out
