"""Evaluating a checkpoint with DeepSeek-R1's protocol: metrics with bootstrap intervals, grading, and a CLI.

What it is
    evaluate(): k samples per problem at the paper's temperature 0.6, top-p 0.95 (sample.generate samples):
    pass@1, cons@k (majority vote), unbiased pass@k, format compliance, response length and truncation, each
    with a 95% bootstrap interval over problems, per difficulty bucket; prompts in the R1-Zero template or the
    checkpoint's own chat template; batched by a KV-cache token budget; per-problem results to a JSONL file that
    a stopped run resumes from. The CLI evaluates on a benchmark file (GSM8K, MATH or AIME-style JSONL) or on the
    synthetic task the checkpoint was trained on, reproducing its training log's held-out numbers.

Simplifications
    1. cons@k votes on answers' text (stripped), not on mathematical equivalence.
    2. The intervals are percentile bootstraps over problems (a problem's k samples are kept together, not
       resampled), the same resamples for every metric.
    3. Static batching by plan_calls: whole problems per generate() call, in file order; no scheduler refills a
       finished row with the next problem.

Use
    python evaluate.py --ckpt DIR                                  # the task the checkpoint recorded
    python evaluate.py --ckpt DIR --problems aime24.jsonl --template chat --k 64   # a real benchmark
    python evaluate.py --help                                      # every flag, grouped
    python sample.py --ckpt DIR --eval ...                         # the same CLI, the older spelling
    from evaluate import evaluate
    res = evaluate(model, tok, problems, k=8)                      # res["pass@1"], res["ci"]["pass@1"], ...

Shapes: one tensor here, sample.generate's gen.tokens (B, T): B = P*G rows (problem-major), P the call's problems,
G the samples of each in that call (k, or a share of k when one problem's samples are split over calls), T generated
tokens. bootstrap_ci works on (P,) per-problem values. k is the paper's samples per problem (pass@k), never a shape.
"""
import argparse
import json
import math
import os
import shlex
import sys
import time
from collections import Counter

import torch

from sample import (FlagParser, UsageError, cli_model, cli_prompt, device_flags, generate, make_prompt,
                    new_token_budget, resolve_run, sampling_flags, stops_for, underscored)


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


def bootstrap_ci(values, n_boot=1000, seed=0, level=0.95):
    """Percentile bootstrap interval for the mean of per-problem values: resample the problems with
    replacement n_boot times (seeded), take the (1-level)/2 and (1+level)/2 quantiles of the means.
    values: (P,) one number per problem. Returns (low, high); (nan, nan) without problems."""
    import numpy as np
    x = np.asarray(values, dtype=np.float64)  # (P,)
    if x.size == 0 or n_boot < 1:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))  # (n_boot, P)
    low, high = np.quantile(x[idx].mean(axis=1), [(1 - level) / 2, (1 + level) / 2])  # over the n_boot means
    return float(low), float(high)


def _pass_ks(k):
    """The j of the pass@j columns: powers of two below k, then k itself."""
    return [j for j in (2 ** i for i in range(1, 20)) if j < k] + [k]


def per_problem_scores(group, k):
    """One problem's samples (dicts with correct, pred, format, length, truncated) -> its per-problem values:
    pass@1 (mean correctness), cons@k (majority vote correct), pass@j (unbiased, j in _pass_ks), format,
    length and truncated (means). Every overall metric is the mean of these over problems."""
    mean = lambda xs: sum(xs) / len(xs)
    c = sum(bool(s["correct"]) for s in group)
    out = {"pass@1": c / len(group),
           "cons@k": float(majority_vote([s["pred"] for s in group], [s["correct"] for s in group])[1])}
    for j in _pass_ks(k):
        out[f"pass@{j}"] = pass_at_k(len(group), c, min(j, len(group)))
    out["pass@k"] = out[f"pass@{k}"]
    out.update(format=mean([s["format"] for s in group]), length=mean([s["length"] for s in group]),
               truncated=mean([float(s["truncated"]) for s in group]))
    return out


def _metrics(per_problem, k, n_boot=0, seed=0):
    """per_problem: list of lists of sample dicts (k each) -> metric dict; with n_boot, "ci" holds each
    metric's 95% bootstrap interval over problems (the same resamples for every metric)."""
    if not per_problem:
        return {"n": 0}
    scores = [per_problem_scores(g, k) for g in per_problem]
    samples = [s for group in per_problem for s in group]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
    out = {"n": len(per_problem)}
    out.update({m: mean([sc[m] for sc in scores]) for m in scores[0]})
    out["length_correct"] = mean([s["length"] for s in samples if s["correct"]])
    out["length_wrong"] = mean([s["length"] for s in samples if not s["correct"]])
    if n_boot:
        out["ci"] = {m: bootstrap_ci([sc[m] for sc in scores], n_boot, seed) for m in scores[0]}
    return out


def summarize(samples, k, n_boot=1000, seed=0):
    """samples: flat list of sample dicts in problem-major order (k per problem), each with keys
    bucket, correct, pred, format, length, truncated -> overall metrics (+ "ci", 95% bootstrap intervals
    over problems, seeded) + "by_bucket"."""
    groups = [samples[i:i + k] for i in range(0, len(samples), k)]
    result = _metrics(groups, k, n_boot, seed)
    buckets = sorted({g[0]["bucket"] for g in groups})
    result["by_bucket"] = {b: _metrics([g for g in groups if g[0]["bucket"] == b], k) for b in buckets}
    return result


# ----------------------------------------------------------------------------- grading

def grade(completion, problem, template="r1-zero", thinks=False):
    """(predicted answer or None, correct, format) of one completion.
    r1-zero: the training reward's rule (rewards.score): the answer is the <answer> block of a completion of the
    exact format; format 1.0 for that format. chat / none: the answer is the last \\boxed{} (or <answer> block,
    or GSM8K's #### N) after the reasoning (text after the last </think> when the model thinks: thinks, or a
    <think> in the completion); format 1.0 when such an answer exists. Correctness: rewards.check_answer
    (rewards.math_equal for math/gsm8k problems, the task's checker for synthetic ones)."""
    import rewards
    if template == "r1-zero":
        s = rewards.score(completion, problem)
        return s["answer"], s["accuracy"] > 0, float(s["format"])
    final = completion
    if thinks or "<think>" in completion:
        if "</think>" not in completion:
            return None, False, 0.0  # still thinking: no final answer yet
        final = completion.rsplit("</think>", 1)[1]
    pred = rewards.extract_answer(final)
    correct = pred is not None and bool(rewards.check_answer(pred, problem))
    return pred, correct, float(pred is not None)


# ----------------------------------------------------------------------------- evaluation

def plan_calls(prompt_lens, k, max_new_tokens, max_rows, max_tokens=0):
    """Split an evaluation into generate() calls: a list of (problem indices, samples per problem), in problem
    order. A call holds at most max_rows sequences and, if max_tokens > 0, at most max_tokens KV-cache slots,
    counted as the cache allocates them: rows x (longest prompt in the call + max_new_tokens). A problem whose k
    samples alone exceed a limit has its samples split over several calls."""
    def fits(rows, longest):
        return rows <= max_rows and (not max_tokens or rows * (longest + max_new_tokens) <= max_tokens)

    calls, group, longest = [], [], 0  # group: the problems of the call being filled; longest: its longest prompt
    for i, prompt_len in enumerate(prompt_lens):
        if group and fits((len(group) + 1) * k, max(longest, prompt_len)):
            group.append(i)
            longest = max(longest, prompt_len)
            continue
        if group:
            calls.append((group, k))
        group, longest = [i], prompt_len
        if not fits(k, prompt_len):  # alone too big: its samples in calls of `rows` rows
            rows = max(1, min(max_rows, max_tokens // (prompt_len + max_new_tokens) if max_tokens else max_rows))
            calls += [([i], min(rows, k - start)) for start in range(0, k, rows)]
            group = []
    if group:
        calls.append((group, k))
    return calls


def memory_budget(model, device, frac=0.5):
    """(max KV-cache tokens, max rows) that fit in frac of the free memory of device (CUDA: free GPU memory;
    CPU: available RAM). A token costs its KV cache in every layer; a row also holds ~8 float32 vocab-sized
    vectors while sampling (logits, filtered, softmax, cumsum, ...), and the rows are sized to half that share.
    (0, 0) = unknown (a model without cfg), no limit."""
    from model import cache_bytes_per_token
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        return 0, 0
    dtype_bytes = next(model.parameters()).element_size()
    per_token = cache_bytes_per_token(cfg, dtype_bytes) * cfg.n_layers
    if torch.device(device).type == "cuda":
        free = torch.cuda.mem_get_info(torch.device(device))[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(free * frac / per_token), max(1, int(free * frac / 2 / (cfg.vocab_size * 4 * 8)))


class ResultsFile:
    """Per-problem results as JSONL: a header line {"settings": ...}, then one record per finished problem,
    appended and flushed as problems finish, so a stopped evaluation resumes where it stopped. A partial last
    line (a kill mid-write) is cut off on reopening; a header with other settings is an error."""

    def __init__(self, path, settings):
        self.path, self.settings, self.records = path, settings, {}
        if os.path.exists(path) and os.path.getsize(path) > 0:
            self._read()
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                f.write(json.dumps({"settings": settings}) + "\n")

    def _read(self):
        with open(self.path, "rb") as f:
            data = f.read()
        good = data[:data.rfind(b"\n") + 1]  # complete lines only
        lines = good.decode("utf-8").splitlines()
        try:
            header = json.loads(lines[0])["settings"] if lines else None
        except (json.JSONDecodeError, KeyError, TypeError):
            header = None
        if header is None:
            raise ValueError(f"{self.path}: not a results file of evaluate.py (no settings header); give another --out")
        if header != self.settings:
            diff = ", ".join(f"{k}={header.get(k)!r} there, {v!r} here" for k, v in self.settings.items()
                             if header.get(k) != v)
            raise ValueError(f"{self.path} holds results with other settings ({diff}); resume with the same "
                             f"settings or give another --out")
        for lineno, line in enumerate(lines[1:], 2):
            try:
                r = json.loads(line)
                self.records[int(r["index"])] = r
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise ValueError(f"{self.path}:{lineno}: not a result record; give another --out") from None
        if len(good) < len(data):  # drop the partial line so appends start on a fresh line
            with open(self.path, "r+b") as f:
                f.truncate(len(good))

    def check(self, problems):
        """The records (index -> record), which must be of these problems (more is fine: an earlier, larger --n)."""
        for i, r in self.records.items():
            if i < len(problems) and r.get("problem") != problems[i].question:
                raise ValueError(f"{self.path} holds problem {i} {r.get('problem', '')[:40]!r}, which is not "
                                 f"problem {i} of this problem set; give another --out")
        return self.records

    def add(self, records):
        with open(self.path, "a") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
                self.records[r["index"]] = r
            f.flush()
            os.fsync(f.fileno())


def evaluate(model, tokenizer, problems, k=8, temperature=0.6, top_p=0.95, max_new_tokens=256,
             batch_size=64, prompt_fn=None, seed=0, progress=False, template="r1-zero", token_budget=0,
             stop_ids=(), results=None, n_boot=1000, top_k=0):
    """k samples per problem at the paper's temperature 0.6 / top-p 0.95 (top_k 0 = off); graded by grade(template).
    batch_size: most sequences per generate() call; token_budget: most KV-cache slots per call (0 = no limit),
    see plan_calls. prompt_fn(question) -> text overrides make_prompt(template). stop_ids: extra stop tokens.
    results: a ResultsFile; problems it already holds are skipped (resume) and new ones appended as they finish.
    Seeds: call c of the plan samples with seed + c, so a resumed run draws what an uninterrupted one would.
    Returns {"pass@1", "cons@k", "pass@k", "pass@j"..., "format", "length", "truncated", "ci", "n", "k",
    "by_bucket", "samples", "records"}."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not problems:
        raise ValueError("problems is empty")
    prompt_fn = prompt_fn or (lambda q: make_prompt(template, tokenizer, q))
    texts = [prompt_fn(p.question) for p in problems]
    prompts = [tokenizer.encode(t) for t in texts]
    stop_tokens, stop_strings = stops_for(tokenizer, template, stop_ids)
    end_ids = set(stop_tokens) - {(getattr(tokenizer, "special_tokens", {}) or {}).get("</answer>")}
    calls = plan_calls([len(p) for p in prompts], k, max_new_tokens, batch_size, token_budget)
    records = {} if results is None else dict(results.check(problems))
    tokens, t0, last = [0], time.perf_counter(), [0.0]  # tokens generated, start time, time of the last redraw

    def show_speed(rows, toks):  # generate() callback: live tokens/s while a long call runs, at most 1 redraw/s
        tokens[0] += len(toks)
        if time.perf_counter() - last[0] > 1.0:
            last[0] = time.perf_counter()
            bar.set_postfix_str(f"{tokens[0] / (last[0] - t0):.0f} tok/s", refresh=True)
    bar, callback = None, None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(problems), initial=sum(i < len(problems) for i in records), unit="problem",
                   desc="eval", dynamic_ncols=True)
        callback = show_speed
    pending = {}  # problem index -> sample dicts so far (a problem split over several calls)
    try:
        for c, (idx, per_problem) in enumerate(calls):  # per_problem: samples of each problem in this call
            idx = [i for i in idx if i not in records]
            if not idx:
                continue
            gen = generate(model, [prompts[i] for i in idx], max_new_tokens=max_new_tokens, temperature=temperature,
                           top_p=top_p, top_k=top_k, n=per_problem, stop_tokens=stop_tokens, stop_strings=stop_strings,
                           tokenizer=tokenizer, pad_id=tokenizer.pad_id, seed=seed + c, callback=callback)
            # gen.tokens (B, T), B = len(idx) * per_problem
            finished = []
            for r in range(len(idx) * per_problem):  # rows are problem-major (sample.generate)
                i = idx[r // per_problem]
                ids = gen.tokens[r, :gen.lengths[r]].tolist()
                completion = tokenizer.decode(ids[:-1] if ids and ids[-1] in end_ids else ids)
                thinks = texts[i].rstrip().endswith("<think>")
                pred, ok, fmt = grade(completion, problems[i], template, thinks)
                pending.setdefault(i, []).append((completion, pred, ok, fmt, int(gen.lengths[r]),
                                                  bool(gen.truncated[r])))
                if len(pending[i]) == k:  # all k samples of problem i are in: one record
                    got = pending.pop(i)
                    p = problems[i]
                    finished.append({"index": i, "problem": p.question, "answer": p.answer, "bucket": p.bucket,
                                     "task": p.task, "samples": [x[0] for x in got], "preds": [x[1] for x in got],
                                     "verdicts": [x[2] for x in got], "formats": [x[3] for x in got],
                                     "lengths": [x[4] for x in got], "truncated": [x[5] for x in got]})
            if results is not None:
                results.add(finished)
            records.update((r["index"], r) for r in finished)
            if bar is not None:
                bar.update(len(finished))
                bar.set_postfix_str(f"{tokens[0] / (time.perf_counter() - t0):.0f} tok/s", refresh=True)
    finally:
        if bar is not None:
            bar.close()
    done = [records[i] for i in range(len(problems))]
    samples = [{"question": r["problem"], "gold": r["answer"], "bucket": r["bucket"], "completion": text,
                "pred": pred, "correct": ok, "format": fm, "length": length, "truncated": tr} for r in done
               for text, pred, ok, fm, length, tr in zip(r["samples"], r["preds"], r["verdicts"], r["formats"],
                                                         r["lengths"], r["truncated"])]
    result = summarize(samples, k, n_boot, seed)
    result.update(k=k, samples=samples, records=done)
    return result


# ----------------------------------------------------------------------------- CLI

def build_parser(prog="evaluate.py"):
    """The CLI's argparse parser, flags grouped as --help shows them; defaults left None are resolved later."""
    import tasks
    ap = FlagParser(prog=prog, description="Evaluate a checkpoint with the paper's protocol: pass@1, cons@k, pass@k, "
                    "format, length, truncation, each with a 95%% bootstrap interval over problems. Flags use "
                    "underscores like train.py; dashes are accepted too.",
                    formatter_class=argparse.RawDescriptionHelpFormatter,
                    epilog="examples:\n  python evaluate.py --ckpt runs/zero-tiny/rl/step_000040\n"
                           "  python evaluate.py --ckpt DIR --problems aime24.jsonl --template chat --k 64\n")
    g = ap.add_argument_group("what to run")
    g.add_argument("--ckpt", metavar="DIR", help="a checkpoint dir of ours or a Hugging Face model dir (required)")
    g.add_argument("--eval", action="store_true", help=argparse.SUPPRESS)  # sample.py --eval passes its flags on
    g = ap.add_argument_group("problems")
    g.add_argument("--problems", metavar="FILE", help="a JSONL problem file: GSM8K (question, answer '#### N'), "
                   "MATH (problem, solution with \\boxed{}) or AIME-style (problem, answer)")
    g.add_argument("--format", default="auto", choices=tasks.PROBLEM_FORMATS,
                   help="format of --problems (default: auto, from the first record's fields)")
    g.add_argument("--task", choices=sorted(tasks.BUCKETS), help="a synthetic task instead of --problems "
                   "(default: the task the checkpoint recorded in nano_r1.json)")
    g.add_argument("--buckets", metavar="B,B", help="difficulty buckets of --task (default: recorded, else all)")
    g.add_argument("--n", type=int, metavar="N", help="number of problems (default: all of --problems; for the "
                   "recorded task, its training log's held-out set; 100 of another --task)")
    g = sampling_flags(ap, temperature="0.6, the paper's", top_p="0.95, the paper's", budget="generation budget per "
                       "sample (default: the checkpoint's training value, else 32768, the paper's; capped at the "
                       "model's context)", first=lambda g: g.add_argument(
                           "--k", type=int, help="samples per problem (default: the training log's eval_k for the "
                           "recorded task or file, else 8; the paper: 64 on AIME)"))
    g.add_argument("--seed", type=int, metavar="S", help="sampling seed, and the seed that draws --task problems "
                   "(default: the training run's seed for the recorded task or file, else 0)")
    g = ap.add_argument_group("batching and output")
    g.add_argument("--batch_size", type=int, metavar="ROWS", help="most sequences per generate() call (default: "
                   "the training log's eval_batch for the recorded task or file, else 64)")
    g.add_argument("--batch_tokens", type=int, default=0, metavar="SLOTS", help="most KV-cache slots (sequences x "
                   "(prompt + max_new_tokens)) per call (default: 0 = what fits in half the free device memory)")
    g.add_argument("--out", metavar="FILE", help="per-problem results JSONL, resumed when it exists; the summary "
                   "goes beside it as .summary.json (default: runs/eval/<ckpt>-<problems>-<template>-k<k>-<settings "
                   "hash>.jsonl)")
    device_flags(ap)
    return ap


def parse_args(argv=None, prog="evaluate.py"):
    """The parsed flags (dashes in flag names read as underscores)."""
    ap = build_parser(prog)
    argv = list(sys.argv[1:] if argv is None else argv)
    return ap.parse_args(underscored(argv, set(ap.flags())))


def resolve(args):
    """Every check of the command line that needs no model: returns what to run (run.problems, run.source), or
    raises UsageError."""
    import tasks
    run = resolve_run(args)  # --ckpt, number ranges, --device, --dtype, --template chat, nano_r1.json
    train, record = run.train, run.record
    if args.problems and args.task:
        raise UsageError(f"give --problems FILE or --task, not both (got {args.problems} and {args.task})")
    if args.problems or (train.get("problems") and not args.task):  # a problem file: given, or the one trained on
        path, fmt, limit = args.problems, args.format, args.n
        if not path:
            path = train.get("eval_path") or train["problems"]
            fmt, limit = train.get("problems_kind", "auto"), args.n or (None if train.get("eval_path")
                                                                      else train.get("eval_problems"))
            run.notes.append(f"problems: {path} ({'held-out ' if not train.get('eval_path') else ''}"
                             f"file recorded in {args.ckpt}/nano_r1.json)")
        try:
            problems = tasks.load_jsonl(path, kind=fmt)
        except FileNotFoundError:
            raise UsageError(f"--problems {path}: no such file" + ("" if args.problems else
                             " (recorded in nano_r1.json); give --problems FILE")) from None
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--problems {path}: cannot read ({e})") from None
        except ValueError as e:
            raise UsageError(str(e)) from None
        run.problems = problems[:limit] if limit else problems
        run.source = {"problems": os.path.abspath(path), "format": fmt}
        return _eval_defaults(args, train, not args.problems, run)
    task = args.task or record.get("task")
    if task is None:
        raise UsageError(f"--eval needs --problems FILE or --task (valid: {sorted(tasks.BUCKETS)}); {args.ckpt} "
                         "records no task (no nano_r1.json)")
    if task not in tasks.BUCKETS:
        raise UsageError(f"task {task!r} recorded in {args.ckpt}/nano_r1.json is not a synthetic task; give "
                         f"--problems FILE or --task (valid: {sorted(tasks.BUCKETS)})")
    if args.task and record.get("task") and args.task != record["task"]:
        run.notes.append(f"--task {args.task} overrides the task the checkpoint was trained on ({record['task']})")
    elif not args.task:
        run.notes.append(f"task: {task} (recorded in {args.ckpt}/nano_r1.json)")
    buckets = args.buckets or (train.get("buckets") if task == record.get("task") else None) \
        or ",".join(tasks.BUCKETS[task])
    buckets = buckets.split(",") if isinstance(buckets, str) else list(buckets)
    bad = [b for b in buckets if b not in tasks.BUCKETS[task]]
    if bad:
        raise UsageError(f"--buckets {','.join(buckets)}: {bad[0]!r} is not a bucket of {task}; "
                         f"valid: {','.join(tasks.BUCKETS[task])}")
    # the task it was trained on: by default the held-out problems of its training log (same count and seed)
    trained = task == record.get("task")
    n = args.n or (int(train.get("eval_problems", 25)) * len(buckets) if trained else 100)
    problem_seed = args.seed if args.seed is not None else int(train.get("seed", 0)) if trained else 0
    run.problems = tasks.make_problems(task, n, split="test", seed=problem_seed, buckets=buckets)
    run.source = {"task": task, "buckets": ",".join(buckets), "problem_seed": problem_seed}
    return _eval_defaults(args, train, trained, run)


def _eval_defaults(args, train, trained, run):
    """k, batch_size and seed not given: those of the training log's held-out evaluation when evaluating what the
    checkpoint was trained on (then its logged numbers are reproduced exactly), else 8, 64 and 0."""
    args.k = args.k or (int(train.get("eval_k", 8)) if trained else 8)
    args.batch_size = args.batch_size or (int(train.get("eval_batch", 64)) if trained else 64)
    args.seed = args.seed if args.seed is not None else int(train.get("seed", 0)) if trained else 0
    return run


def _report(res, k, header):
    """The evaluation table: each metric with its 95% bootstrap interval over problems; then per bucket."""
    names = ["pass@1", "cons@k"] + [f"pass@{j}" for j in _pass_ks(k)] + ["format", "length", "truncated"]
    lines = [header, f"{'metric':<10} {'value':>9}   95% CI (bootstrap over {res['n']} problems)"]
    for m in dict.fromkeys(names):
        lo, hi = res["ci"][m]
        label = f"cons@{k}" if m == "cons@k" else m
        fmt = ".1f" if m == "length" else ".3f"
        lines.append(f"{label:<10} {res[m]:>9{fmt}}   [{lo:{fmt}}, {hi:{fmt}}]")
    if len(res["by_bucket"]) > 1:
        lines += [f"  bucket {b:<4} pass@1 {r['pass@1']:.3f}  cons@{k} {r['cons@k']:.3f}  length {r['length']:.1f}  "
                  f"(n={r['n']})" for b, r in res["by_bucket"].items()]
    return "\n".join(lines)


def _default_out(args, settings):
    """runs/eval/<ckpt path tail>-<task or file>-<template>-k<k>-<hash of the settings>.jsonl"""
    import hashlib
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    ckpt = "-".join(os.path.abspath(args.ckpt).split(os.sep)[-3:])
    src = settings.get("task") or os.path.splitext(os.path.basename(settings["problems"]))[0]
    return os.path.join("runs", "eval", f"{ckpt}-{src}-{args.template}-k{args.k}-{digest}.jsonl")


def main(argv=None, prog="evaluate.py"):
    """The CLI; prog is the command named in --help and in the resume command (sample.py --eval passes its own)."""
    try:
        _main(argv, prog)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _main(argv, prog):
    args = parse_args(argv, prog)
    run = resolve(args)
    for note in run.notes:
        print(note, file=sys.stderr)
    model, tok, eos_ids = cli_model(args.ckpt, run)
    texts = [cli_prompt(args.template, tok, p.question) for p in run.problems]
    prompts = [tok.encode(t) for t in texts]
    max_new_tokens = new_token_budget(args, run.train, model, prompts, default=32768)
    temperature = 0.6 if args.temperature is None else args.temperature
    top_p = 0.95 if args.top_p is None else args.top_p
    settings = {"ckpt": os.path.abspath(args.ckpt), **run.source, "template": args.template, "k": args.k,
                "temperature": temperature, "top_p": top_p, "top_k": args.top_k, "max_new_tokens": max_new_tokens,
                "seed": args.seed}
    out = args.out or _default_out(args, settings)
    try:
        results = ResultsFile(out, settings)
        results.check(run.problems)
    except (ValueError, OSError) as e:
        raise UsageError(str(e)) from None
    budget, max_rows = (args.batch_tokens, 0) if args.batch_tokens else memory_budget(model, run.device)
    done = sum(i < len(run.problems) for i in results.records)
    print(f"eval: {len(run.problems)} problems x {args.k} samples, template {args.template}, temperature {temperature} "
          f"top_p={top_p}, max_new_tokens {max_new_tokens}, {run.device} {str(run.dtype).removeprefix('torch.')}"
          + (f"; resuming, {done} done" if done else ""), file=sys.stderr)
    try:
        res = evaluate(model, tok, run.problems, k=args.k, temperature=temperature, top_p=top_p, top_k=args.top_k,
                       max_new_tokens=max_new_tokens, batch_size=min(args.batch_size, max_rows or args.batch_size),
                       seed=args.seed, progress=True, template=args.template, token_budget=budget,
                       stop_ids=eos_ids, results=results)
    except KeyboardInterrupt:
        done = sum(i < len(run.problems) for i in results.records)
        print(f"\ninterrupted: {done}/{len(run.problems)} problems saved in {out}; resume with: python {prog} "
              + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
              + ("" if args.out else f" --out {shlex.quote(out)}"), file=sys.stderr)
        sys.exit(130)
    src = run.source.get("task") or run.source["problems"]
    print(_report(res, args.k, f"{src}: {res['n']} problems x {args.k} samples, template {args.template}, "
                               f"temperature {temperature} top_p={top_p}, max_new_tokens {max_new_tokens}"))
    summary = os.path.splitext(out)[0] + ".summary.json"
    tmp = summary + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"settings": settings, **{m: v for m, v in res.items() if m not in ("samples", "records")}},
                  f, indent=1)
    os.replace(tmp, summary)
    print(f"per-problem results: {out}\nsummary: {summary}", file=sys.stderr)


if __name__ == "__main__":
    main()
