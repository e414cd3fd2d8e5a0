"""Batched autoregressive sampling with the KV cache, evaluation metrics, and a CLI.

What it is
    generate(): many prompts of ragged length, n samples each, one token per step from the model's
    KV cache; temperature / top-k / top-p / greedy, stop tokens and stop strings; returns the sampled
    tokens and the log-prob of each one under the distribution it was actually drawn from (what the
    RL trainer needs for its importance ratio). evaluate(): pass@1 over k samples, cons@k (majority
    vote), unbiased pass@k, format compliance, response length and truncation, per difficulty bucket.

Simplifications vs production samplers (vLLM, SGLang, nanochat's Engine)
    1. Static batching: all prompts start together; a finished row is dropped from the batch (the
       cache is compacted once >= 25% of the rows are done) but no new prompt takes its place.
    2. The cache is one contiguous tensor per layer of size prompt+max_new_tokens (no paged blocks,
       no prefix sharing across different prompts; the n samples of one prompt share its prefill by
       copying the prompt's cache rows, not by pointing at them).
    3. Left padding: ragged prompts are padded on the left, their RoPE positions shifted so every
       prompt starts at position 0, and padded slots are masked out of attention.
    4. The fast path is torch.compile of the whole decode step (compile=True, dynamic shapes); no
       CUDA graphs (they need a static-shape cache: the model's cache returns a view that grows by one
       slot per step), no custom attention kernels, no speculative decoding.
    5. Stop strings are checked by decoding the tail of a row, and only for rows whose newest token
       could complete one (its text contains a stop string's last character, or an incomplete byte).
    6. MLA models prefill through the textbook attention path and decode through the absorbed one
       (model.cfg.mla_absorb is switched for the decode loop and restored): same numbers, no per-step
       expansion of the latent cache into per-head keys and values.

Log-probs: the log-prob of each sampled token under the distribution actually sampled from, i.e.
log_softmax(filter(logits / temperature)) where filter = top-k then top-p (removed tokens get -inf).
For temperature 1 and no filtering this equals the model's own log_softmax(logits), which is what a
trainer recomputes with one forward pass (tested). For greedy (temperature 0) the sampling
distribution is a point mass, so we report the model's log_softmax (temperature 1) at the argmax.

Use
    python sample.py --ckpt DIR --prompt "User: what is 12*34? Assistant:"      # streams tokens
    python sample.py --ckpt DIR --eval --task multiplication --k 8 --n 100       # pass@1, cons@k, ...
    from sample import generate, evaluate
    gen = generate(model, [tok.encode(p) for p in prompts], n=8, temperature=1.0, seed=0)

Shapes: B prompts, n samples per prompt, N = B*n rows being decoded (shrinks as rows finish),
P longest prompt, T generated tokens, V vocab.
"""
import argparse
import functools
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass

import torch

COMPILE_BACKEND = "inductor"  # backend used by generate(compile=True); tests swap in "eager"


@dataclass
class Generation:
    tokens: torch.Tensor     # (B*n, T) int64 generated tokens, right-padded with pad_id; stop token included
    mask: torch.Tensor       # (B*n, T) bool, True on generated tokens
    logprobs: torch.Tensor   # (B*n, T) float32 log-prob of each token under the sampling distribution, 0 on pads
    lengths: torch.Tensor    # (B*n,) int64 number of generated tokens
    truncated: torch.Tensor  # (B*n,) bool, hit max_new_tokens without a stop


# ----------------------------------------------------------------------------- sampling one step

def filter_logits(logits, top_k=0, top_p=1.0):
    """Set to -inf every logit outside the top-k and outside the top-p nucleus (top-k applied first).

    top_k: keep exactly the k largest (0 = off). top_p: keep the smallest set of most likely tokens
    whose total probability reaches top_p (the token that crosses the threshold is kept; 1.0 = off)."""
    if top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1)  # values/indices (N, k)
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, kth.indices, True)  # (N, V)
        logits = logits.masked_fill(~keep, float("-inf"))  # (N, V)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (N, V)
        probs = sorted_logits.softmax(-1)  # (N, V)
        mass_before = probs.cumsum(-1) - probs  # (N, V) probability of the strictly more likely tokens
        drop_sorted = mass_before >= top_p  # (N, V); the most likely token always has 0 before it
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)  # (N, V) back to vocab order
        logits = logits.masked_fill(drop, float("-inf"))  # (N, V)
    return logits


def sample_next(logits, temperature=1.0, top_k=0, top_p=1.0, uniform=None, generator=None):
    """logits (N, V) float -> (tokens (N,) int64, logprobs (N,) float32 under the sampling distribution).

    Sampling is by inverse CDF from one uniform number per row, uniform (N,) in [0, 1) (drawn from
    generator if not given), so a row's draw does not depend on which other rows are in the batch."""
    logits = logits.float()  # (N, V)
    if temperature == 0:  # greedy; report the model's own log-prob of the argmax
        tokens = logits.argmax(-1)  # (N,)
        logprobs = logits.log_softmax(-1).gather(-1, tokens[:, None])[:, 0]  # (N,)
        return tokens, logprobs
    logprobs_all = filter_logits(logits / temperature, top_k, top_p).log_softmax(-1)  # (N, V)
    if uniform is None:
        uniform = torch.rand(logits.size(0), device=logits.device, generator=generator)  # (N,)
    probs = logprobs_all.exp()  # (N, V)
    cdf = probs.cumsum(-1)  # (N, V); a removed token adds 0 so it is never picked
    target = uniform[:, None] * cdf[:, -1:]  # (N, 1)
    tokens = torch.searchsorted(cdf, target, right=True)[:, 0]  # (N,)
    last = logits.size(-1) - 1 - probs.flip(-1).gt(0).int().argmax(-1)  # (N,) last kept token
    tokens = torch.minimum(tokens, last)  # target can round up to cdf[-1]: take the last kept token
    return tokens, logprobs_all.gather(-1, tokens[:, None])[:, 0]  # (N,), (N,)


# ----------------------------------------------------------------------------- stop strings

class _StopStrings:
    """Checks whether a row's generated text contains a stop string, decoding only when it could."""

    def __init__(self, stop_strings, tokenizer):
        self.strings = [s for s in stop_strings if s]
        self.tokenizer = tokenizer
        self.last_chars = {s[-1] for s in self.strings}
        # a stop string of L chars lies within the last 4*L+4 tokens even if some tokens are single bytes
        self.window = 4 * max((len(s) for s in self.strings), default=0) + 4
        self.cache = {}  # token id -> could this token complete a stop string?

    def could_end(self, token):
        if token not in self.cache:
            text = self.tokenizer.decode([token])
            self.cache[token] = "\ufffd" in text or any(c in text for c in self.last_chars)
        return self.cache[token]

    def hit(self, generated):
        """generated: list[int], the row's generated tokens so far (newest last)."""
        if not self.strings or not self.could_end(generated[-1]):
            return False
        tail = self.tokenizer.decode(generated[-self.window:])
        return any(s in tail for s in self.strings)


# ----------------------------------------------------------------------------- generate

def _model_device(model):
    return next(model.parameters()).device


def _check_args(prompts, max_new_tokens, temperature, top_p, top_k, n, stop_strings, tokenizer):
    if not prompts or any(not isinstance(p, (list, tuple)) or len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty lists of token ids")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if n < 1:
        raise ValueError(f"n (samples per prompt) must be >= 1, got {n}")
    if any(stop_strings) and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer to decode the generated text")


def _left_pad(prompts, pad_id, device):
    """Left-pad prompts; positions shifted so each prompt starts at 0; valid marks real tokens."""
    P = max(len(p) for p in prompts)
    tokens = torch.tensor([[pad_id] * (P - len(p)) + list(p) for p in prompts], device=device)  # (B, P)
    lens = torch.tensor([len(p) for p in prompts], device=device)  # (B,)
    pos = torch.arange(P, device=device)[None, :] - (P - lens)[:, None]  # (B, P), negative on pads
    valid = pos >= 0  # (B, P)
    return tokens, pos.clamp(min=0), valid, lens


def generate(model, prompts, max_new_tokens=256, temperature=1.0, top_p=1.0, top_k=0, n=1,
             stop_tokens=(), stop_strings=(), tokenizer=None, pad_id=0, seed=None, compile=False,
             callback=None, compact_frac=0.25):
    """Sample n completions for each prompt (lists of token ids). Rows are prompt-major: sample j of
    prompt i is row i*n + j. callback(rows, tokens) (optional) is called after every step with the
    original row ids still decoding and their new tokens (two lists of ints; the CLI streams with it).
    compact_frac: compact the cache when this fraction of the rows being decoded has finished."""
    _check_args(prompts, max_new_tokens, temperature, top_p, top_k, n, stop_strings, tokenizer)
    device = _model_device(model)
    max_len = getattr(getattr(model, "cfg", None), "max_seq_len", None)
    longest = max(len(p) for p in prompts)
    if max_len is not None and longest + max_new_tokens > max_len:
        raise ValueError(f"longest prompt ({longest}) + max_new_tokens ({max_new_tokens}) exceeds the "
                         f"model's max_seq_len ({max_len}); shorten the prompt or lower max_new_tokens")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    stops = _StopStrings(stop_strings, tokenizer)
    stop_ids = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=device)  # (S,)
    step_fn = _compiled_decode_step(COMPILE_BACKEND) if compile else _decode_step

    was_training = model.training
    cfg = getattr(model, "cfg", None)
    was_absorbed = getattr(cfg, "mla_absorb", None)
    model.eval()
    try:
        with torch.no_grad():  # not inference_mode: the outputs may be used next to autograd in the trainer
            out = _sample_loop(model, prompts, max_new_tokens, temperature, top_p, top_k, n, stops, stop_ids,
                               pad_id, generator, step_fn, callback, compact_frac, device)
    finally:
        model.train(was_training)
        if was_absorbed is not None:
            cfg.mla_absorb = was_absorbed
    out_tokens, out_logprobs, lengths, stopped = out
    T = max(int(lengths.max()), 1)
    mask = torch.arange(T, device=device)[None, :] < lengths[:, None]  # (N, T)
    return Generation(tokens=out_tokens[:, :T], mask=mask, logprobs=out_logprobs[:, :T],
                      lengths=lengths, truncated=~stopped & (lengths == max_new_tokens))


def _sample_loop(model, prompts, max_new_tokens, temperature, top_p, top_k, n, stops, stop_ids, pad_id,
                 generator, step_fn, callback, compact_frac, device):
    """The decode loop of generate(); returns (tokens (N, T), logprobs (N, T), lengths (N,), stopped (N,))."""
    # prefill each distinct prompt once, then copy its cache rows to its n samples
    tokens, pos, valid, lens = _left_pad(prompts, pad_id, device)  # (B, P), (B, P), (B, P), (B,)
    B, P = tokens.shape
    cache = model.make_cache(B, P + max_new_tokens)
    hidden = model(tokens, cache=cache, pos=pos, valid=valid, return_hidden=True)[:, -1]  # (B, C)
    logits = model.lm_head(hidden).float()  # (B, V) only the last position: no (B, P, V) tensor
    if getattr(getattr(model, "cfg", None), "attn", None) == "mla":
        model.cfg.mla_absorb = True  # decode attends in latent space: no per-step expansion of the cache
    expand = torch.arange(B, device=device).repeat_interleave(n)  # (N,)
    cache.select(expand)
    logits = logits[expand]  # (N, V)
    next_pos = lens[expand]  # (N,) position of the next token of each row

    N = B * n
    out_tokens = torch.full((N, max_new_tokens), pad_id, dtype=torch.long, device=device)  # (N, T)
    out_logprobs = torch.zeros(N, max_new_tokens, device=device)  # (N, T)
    lengths = torch.zeros(N, dtype=torch.long, device=device)  # (N,)
    stopped = torch.zeros(N, dtype=torch.bool, device=device)  # (N,)
    rows = torch.arange(N, device=device)  # (M,) original row id of each row still in the batch
    done = torch.zeros(N, dtype=torch.bool, device=device)  # (M,) finished rows not yet compacted away
    history = [[] for _ in range(N)] if stops.strings else None  # generated ids, for stop strings

    for t in range(max_new_tokens):
        uniform = None
        if temperature > 0:  # one draw for every original row each step, then keep ours
            uniform = torch.rand(N, device=device, generator=generator)[rows]  # (M,)
        tok, lp = sample_next(logits, temperature, top_k, top_p, uniform)  # (M,), (M,)
        # finished rows still in the batch take a pad (no boolean indexing: no host sync)
        out_tokens[rows, t] = torch.where(done, pad_id, tok)
        out_logprobs[rows, t] = torch.where(done, 0.0, lp)
        lengths[rows] += (~done).long()
        hit = torch.isin(tok, stop_ids) & ~done  # (M,)
        if history is not None or callback is not None:
            live = (~done).nonzero()[:, 0].tolist()  # positions in the batch of unfinished rows
            row_ids, toks = rows.tolist(), tok.tolist()
            if callback is not None:
                callback([row_ids[i] for i in live], [toks[i] for i in live])
            if history is not None:
                hit = hit.cpu()
                for i in live:
                    history[row_ids[i]].append(toks[i])
                    if not hit[i] and stops.hit(history[row_ids[i]]):
                        hit[i] = True
                hit = hit.to(device)
        stopped[rows] |= hit
        done |= hit
        n_done = int(done.sum())  # the one host sync per step
        if n_done == len(done) or t == max_new_tokens - 1:
            break
        if n_done >= compact_frac * len(done):  # drop finished rows from the batch
            keep = (~done).nonzero()[:, 0]  # (M',)
            cache.select(keep)
            rows, tok, next_pos, done = rows[keep], tok[keep], next_pos[keep], done[keep]
        logits = step_fn(model, cache, tok, next_pos)  # (M, V)
        next_pos = next_pos + 1
    return out_tokens, out_logprobs, lengths, stopped


def _decode_step(model, cache, tok, pos):
    """One decode step: tok (M,) int64 at positions pos (M,) -> next-token logits (M, V)."""
    return model(tok[:, None], cache=cache, pos=pos[:, None])[:, -1]  # (M, V)


@functools.lru_cache(maxsize=None)
def _compiled_decode_step(backend):
    """torch.compile of the decode step, built once per backend. dynamic=True: the batch shrinks as rows
    finish and the cache grows by one slot per step, so shapes are symbolic rather than recompiled."""
    return torch.compile(_decode_step, dynamic=True, backend=backend)


# ----------------------------------------------------------------------------- evaluation metrics

def pass_at_k(n, c, k):
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), n samples of which c correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_vote(answers, correct):
    """Majority vote over extracted answers (None = no answer, never wins; ties -> first seen).
    Returns (voted answer or None, whether a sample with that answer was correct)."""
    keys = [a.strip() if isinstance(a, str) else None for a in answers]
    counts = Counter(a for a in keys if a is not None)
    if not counts:
        return None, False
    best = max(counts.values())
    winner = next(a for a in keys if a is not None and counts[a] == best)
    return winner, any(ok for a, ok in zip(keys, correct) if a == winner)


def _metrics(per_problem, k):
    """per_problem: list of lists of sample dicts (k each) -> metric dict."""
    if not per_problem:
        return {"n": 0}
    samples = [s for group in per_problem for s in group]
    mean = lambda xs: sum(xs) / len(xs)
    return {
        "n": len(per_problem),
        "pass@1": mean([s["correct"] for s in samples]),
        "cons@k": mean([majority_vote([s["pred"] for s in g], [s["correct"] for s in g])[1]
                        for g in per_problem]),
        "pass@k": mean([pass_at_k(len(g), sum(s["correct"] for s in g), k) for g in per_problem]),
        "format": mean([s["format"] for s in samples]),
        "length": mean([s["length"] for s in samples]),
        "length_correct": mean([s["length"] for s in samples if s["correct"]] or [float("nan")]),
        "length_wrong": mean([s["length"] for s in samples if not s["correct"]] or [float("nan")]),
        "truncated": mean([s["truncated"] for s in samples]),
    }


def summarize(samples, k):
    """samples: flat list of sample dicts in problem-major order (k per problem), each with keys
    bucket, correct, pred, format, length, truncated -> overall metrics + "by_bucket"."""
    groups = [samples[i:i + k] for i in range(0, len(samples), k)]
    result = _metrics(groups, k)
    buckets = sorted({g[0]["bucket"] for g in groups})
    result["by_bucket"] = {b: _metrics([g for g in groups if g[0]["bucket"] == b], k) for b in buckets}
    return result


def stops_for(tokenizer):
    stop_tokens = [tokenizer.eos_id]
    special = getattr(tokenizer, "special_tokens", {}) or {}
    if "</answer>" in special:
        stop_tokens.append(special["</answer>"])
    return stop_tokens, ["</answer>"]


def evaluate(model, tokenizer, problems, k=8, temperature=0.6, top_p=0.95, max_new_tokens=256,
             batch_size=64, prompt_fn=None, seed=0, progress=False):
    """k samples per problem; batch_size = sequences per generate() call (>= k). Returns
    {"pass@1", "cons@k", "pass@k", "format", "length", "truncated", "n", "k", "by_bucket", "samples"}."""
    import rewards
    if prompt_fn is None:
        import tasks
        prompt_fn = tasks.r1_zero_prompt
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not problems:
        raise ValueError("problems is empty")
    per_call = max(1, batch_size // k)  # problems per generate() call
    stop_tokens, stop_strings = stops_for(tokenizer)
    chunks = [problems[i:i + per_call] for i in range(0, len(problems), per_call)]
    if progress:
        from tqdm import tqdm
        chunks = tqdm(chunks, desc="eval", unit="batch")
    samples = []
    for c, chunk in enumerate(chunks):
        prompts = [tokenizer.encode(prompt_fn(p.question)) for p in chunk]
        gen = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                       top_p=top_p, n=k, stop_tokens=stop_tokens, stop_strings=stop_strings,
                       tokenizer=tokenizer, pad_id=tokenizer.pad_id, seed=seed + c)
        for r in range(len(prompts) * k):
            problem = chunk[r // k]
            ids = gen.tokens[r, :gen.lengths[r]].tolist()
            completion = tokenizer.decode(ids[:-1] if ids and ids[-1] == tokenizer.eos_id else ids)
            score = rewards.score(completion, problem)
            samples.append({"question": problem.question, "gold": problem.answer,
                            "bucket": problem.bucket, "completion": completion,
                            "pred": score.get("answer"), "correct": bool(score["accuracy"] > 0),
                            "format": float(score["format"]), "reward": float(score["reward"]),
                            "length": int(gen.lengths[r]), "truncated": bool(gen.truncated[r])})
    result = summarize(samples, k)
    result["k"] = k
    result["samples"] = samples
    return result


# ----------------------------------------------------------------------------- checkpoints + CLI

def load_checkpoint(path, device="cpu", dtype=torch.float32):
    """(model, tokenizer) from one of our checkpoints or a Hugging Face model dir (checkpoint.load; its
    nano_r1.json, {} for a foreign dir, is checkpoint.read_meta(path))."""
    import checkpoint
    model, tokenizer, _ = checkpoint.load(path, device=device, dtype=dtype)
    return model, tokenizer


def _stream(tokenizer):
    """(callback for generate() that prints row 0's text as it grows, flush() to print what is left).
    Text ending in an incomplete multi-byte character is held back until the character completes."""
    ids, printed = [], [0]

    def callback(rows, tokens):
        if rows and rows[0] == 0:
            ids.append(tokens[0])
            text = tokenizer.decode(ids)
            if not text.endswith("\ufffd"):
                print(text[printed[0]:], end="", flush=True)
                printed[0] = len(text)

    def flush():
        print(tokenizer.decode(ids)[printed[0]:], flush=True)
    return callback, flush


def main(argv=None):
    ap = argparse.ArgumentParser(description="Sample from or evaluate a checkpoint.")
    ap.add_argument("--ckpt", required=True, help="our checkpoint dir or a Hugging Face model dir")
    ap.add_argument("--prompt", help="text to continue (streams the completion)")
    ap.add_argument("--eval", action="store_true", help="evaluate on a task's test split")
    ap.add_argument("--task", default="multiplication", help="task name for --eval (tasks.make_problems)")
    ap.add_argument("--k", type=int, default=8, help="samples per problem for --eval")
    ap.add_argument("--n", type=int, default=100, help="number of problems for --eval")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="generation budget per sample")
    ap.add_argument("--temperature", type=float, default=None, help="default 1.0 (--prompt), 0.6 (--eval)")
    ap.add_argument("--top-p", type=float, default=None, help="default 1.0 (--prompt), 0.95 (--eval)")
    ap.add_argument("--top-k", type=int, default=0, help="0 = off (--prompt only)")
    ap.add_argument("--batch-size", type=int, default=64, help="sequences per generate call (--eval)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--out", help="write the eval result (with samples) to this JSON file")
    args = ap.parse_args(argv)
    if (args.prompt is None) == (not args.eval):
        ap.error("give exactly one of --prompt TEXT or --eval")
    model, tok = load_checkpoint(args.ckpt, args.device, getattr(torch, args.dtype))
    if args.prompt is not None:
        print(args.prompt, end="", flush=True)
        stop_tokens, _ = stops_for(tok)
        callback, flush = _stream(tok)
        generate(model, [tok.encode(args.prompt)], max_new_tokens=args.max_new_tokens,
                 temperature=1.0 if args.temperature is None else args.temperature,
                 top_p=1.0 if args.top_p is None else args.top_p, top_k=args.top_k,
                 stop_tokens=stop_tokens, tokenizer=tok, pad_id=tok.pad_id, seed=args.seed,
                 callback=callback)
        flush()
        return
    import tasks
    problems = tasks.make_problems(args.task, args.n, split="test", seed=args.seed)
    res = evaluate(model, tok, problems, k=args.k,
                   temperature=0.6 if args.temperature is None else args.temperature,
                   top_p=0.95 if args.top_p is None else args.top_p,
                   max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed,
                   progress=True)
    cols = ["n", "pass@1", "cons@k", "pass@k", "format", "length", "truncated"]
    print(f"{args.task} k={args.k}  " + "  ".join(f"{c}={res[c]:.3f}" if isinstance(res[c], float)
                                                 else f"{c}={res[c]}" for c in cols))
    for b, m in res["by_bucket"].items():
        print(f"  bucket {b:>4}: " + "  ".join(f"{c}={m[c]:.3f}" if isinstance(m[c], float)
                                              else f"{c}={m[c]}" for c in cols))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
