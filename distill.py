"""
distill.py: distil a reasoning teacher into a smaller student, and compare that with running GRPO on the student
directly. This is the R1 paper's last finding (section 4 of arXiv 2501.12948): plain SFT of a small model on a
strong reasoner's outputs beats large-scale RL on the same small model.

The pipeline, all in main():
  1. teacher: one of our checkpoints or a Hugging Face model dir (--teacher=DIR), or, by default, trained here by
     train.py with the recipe --teacher_preset into OUT/teacher (zero-tiny for distill-tiny, ...), or
     --teacher=oracle: the task's reference solutions (an upper bound that needs no training; distill-smoke's).
  2. student base: a smaller model preset pretrained from scratch with the same recipe and the teacher's tokenizer
     (train.stage_pretrain with --student_model), or --student=DIR.
  3. rejection sampling: k samples per training problem from the teacher at --temperature; keep those that are
     correct and well formatted (rewards.score) and readable (not truncated, within length limits, no looping
     n-grams, one language by rewards.language_consistency); deduplicate; write OUT/traces.jsonl. The rules are
     TraceFilter + judge + rejection_sample, importable on their own.
  4. (a) distilled: the student base fine-tuned on the kept traces (train.sft, loss on completion tokens only).
  5. (b) GRPO: the same student base trained with GRPO (the stage_rl loop: rollouts, grpo.rl_step) until it
     has spent the compute of the distillation (counted in tokens and FLOPs, teacher sampling included by default).
  6. evaluation of teacher, student base, (a) and (b) on the same held-out problems (pass@1 over k samples at
     temperature 0.6, cons@k, length, per difficulty bucket; train.evaluate): OUT/results.md and OUT/results.json.

Simplifications relative to the paper:
 1. ~800k traces from DeepSeek-R1 become a few hundred to a few thousand traces from our own small RL'd teacher
    on the recipe's synthetic task (letter counting, multiplication, ...); no non-reasoning data is mixed in.
 2. Readability filters are rules on text (truncation, length, repeated word n-grams, language share) instead of
    the paper's filters plus human post-processing.
 3. The students are pretrained here on the same synthetic corpus (not Qwen2.5/Llama checkpoints), unless a
    Hugging Face checkpoint is given.
 4. Compute is counted as 2 * active params FLOPs per forward token and 6 * active params per trained token
    (attention FLOPs ignored); the teacher's own training is not charged to distillation (it is amortised over
    every student, as in the paper).
 5. SFT runs a fixed number of steps on randomly drawn batches (train.sft) rather than 2 epochs.

Use:
    python distill.py --preset distill-smoke                   # every stage in seconds (tests, CI)
    python distill.py --preset distill-tiny                    # 2 CPU cores; trains a zero-tiny teacher first
    python distill.py --preset distill-small                   # one GPU; trains a zero-small teacher first
    python distill.py --preset distill-tiny --teacher=runs/zero-tiny/rl/step_000060   # reuse a trained teacher
    python distill.py --preset distill-tiny --dataset=runs/distill-tiny/traces.jsonl  # reuse kept traces
    python distill.py --preset distill-tiny --teacher=oracle   # reference solutions as the teacher (no training)
    python distill.py --help                                   # presets and every field

Outputs under --out_dir (default runs/<preset>): teacher/ (if trained here), student/base/, traces.jsonl,
student/distilled/, student/grpo/, results.md, results.json, log.txt.

Shapes: P problems in a sampling call, G samples per problem, B = P*G rows (problem-major), T generated tokens:
a Generation's tokens are (B, T). Few tensors live in this file; the work is done by train.py, sample.py and grpo.py.
k is the paper's samples per problem for rejection sampling and evaluation (a count, not a shape).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field

import torch

import cli
import checkpoint
import evaluate
import grpo
import rewards
import runlog
import sample
import tasks
import train

# -----------------------------------------------------------------------------
# Config: one dataclass, presets as dicts of overrides, every field a --flag (as in train.py).

@dataclass
class DistillConfig:
    out_dir: str = ""                  # default runs/<preset>
    seed: int = 0
    device: str = "auto"               # auto | cpu | cuda
    threads: int = 0                   # CPU threads for torch (0: torch's default)
    # teacher
    teacher: str = ""                  # checkpoint dir (ours or HF); "" -> train one with teacher_preset; "oracle"
    teacher_preset: str = "zero-tiny"  # train.py preset: the teacher's recipe, and the student's pretraining recipe
    teacher_args: dict = field(default_factory=dict)  # train.py field overrides for the teacher run and recipe
    # student
    student: str = ""                  # checkpoint dir (ours or Hugging Face); "" -> pretrain student_model here
    student_model: str = "tiny-mla"    # model.py preset for the student, pretrained with the teacher's recipe
    student_overrides: dict = field(default_factory=dict)  # ModelConfig overrides for the student
    # rejection sampling
    task: str = ""                     # "" -> the recipe's task (train.py preset --teacher_preset)
    buckets: str = ""                  # "" -> the recipe's buckets
    dataset: str = ""                  # an existing traces JSONL to reuse instead of sampling the teacher
    n_problems: int = 256              # training problems shown to the teacher
    k: int = 8                         # samples per problem
    temperature: float = 0.8           # teacher sampling temperature (paper range 0.6-1.0)
    top_p: float = 0.95
    max_new_tokens: int = 0            # response cap for sampling, GRPO and evaluation; 0 -> the recipe's
    batch_size: int = 64               # sequences per generate() call
    min_tokens: int = 4                # kept completions have between min_tokens and max_tokens tokens
    max_tokens: int = 0                # 0 -> max_new_tokens, none for the oracle (truncated ones always dropped)
    repeat_ngram: int = 4              # word n-gram size of the repetition filter
    max_repeat: float = 0.5            # drop if more than this fraction of the reasoning's n-grams are repeats
    min_language: float = 0.9          # drop if rewards.language_consistency of the reasoning is lower
    max_per_problem: int = 4           # distinct traces kept per problem
    # (a) student SFT
    sft_steps: int = 200
    sft_batch_size: int = 16
    sft_lr: float = 1e-3
    # (b) student GRPO with a comparable budget (hyperparameters: the recipe's rl_* fields)
    rl_budget: float = 1.0             # GRPO may spend this multiple of the distillation's compute
    budget_includes_teacher: bool = True   # count the teacher's sampling in the distillation's compute
    rl_max_steps: int = 200            # hard cap on GRPO steps (reported if hit before the budget)
    # evaluation
    eval_problems: int = 32            # held-out problems per bucket
    eval_k: int = 4                    # samples per problem (pass@1 over k, cons@k)


DISTILL_PRESETS = {
    # smoke: the oracle teacher (no teacher training; its traces are kept, so SFT runs) and a smoke-sized student
    "distill-smoke": dict(teacher="oracle", teacher_preset="smoke", student_model="tiny-mla",
                          student_overrides={"dim": 32},
                          n_problems=4, k=4, batch_size=16, min_tokens=1, sft_steps=4,
                          sft_batch_size=4, rl_max_steps=2, eval_problems=2, eval_k=2),
    "distill-tiny": dict(teacher_preset="zero-tiny", student_model="tiny-mla", n_problems=256, k=8,
                         sft_steps=150, sft_batch_size=16, rl_max_steps=100, eval_problems=32, eval_k=4),
    "distill-small": dict(teacher_preset="zero-small", student_model="zero-tiny",  # dense, like the paper's students
                          student_overrides={"n_routed_experts": 0, "inter_dim": 512}, n_problems=2048, k=8,
                          batch_size=512, sft_steps=600, sft_batch_size=64, sft_lr=5e-4,
                          rl_max_steps=400, eval_problems=64, eval_k=8),
}


def parse_args(argv: list[str]) -> tuple[str, DistillConfig]:
    """--preset NAME, --help and --FIELD=value (or --FIELD value); unknown fields are errors."""
    preset, cfg = cli.parse_preset_args(argv, __doc__, DISTILL_PRESETS, DistillConfig, default="distill-tiny")
    validate(cfg)
    return preset, cfg


def validate(cfg: DistillConfig) -> None:
    def need(cond, msg):
        if not cond:
            raise SystemExit(f"error: {msg}")
    need(cfg.teacher_preset in train.TRAIN_PRESETS,
         f"--teacher_preset={cfg.teacher_preset!r} unknown; valid: {', '.join(train.TRAIN_PRESETS)}")
    train_fields = {f.name for f in dataclasses.fields(train.TrainConfig)}
    bad = sorted(set(cfg.teacher_args) - train_fields)
    need(not bad, f"--teacher_args has unknown train.py fields {bad}; valid: {', '.join(sorted(train_fields))}")
    need(cfg.student or cfg.student_model in train.MODEL_PRESETS,
         f"--student_model={cfg.student_model!r} is not a model preset; valid: {', '.join(train.MODEL_PRESETS)}")
    for name in ("teacher", "student", "dataset"):
        path = getattr(cfg, name)
        need(not path or os.path.exists(path) or (name, path) == ("teacher", "oracle"),
             f"--{name}={path!r} does not exist")
    for name in ("n_problems", "k", "batch_size", "repeat_ngram", "max_per_problem",
                 "sft_batch_size", "eval_problems", "eval_k"):
        need(getattr(cfg, name) >= 1, f"--{name} must be >= 1 (got {getattr(cfg, name)})")
    for name in ("max_new_tokens", "min_tokens", "max_tokens", "sft_steps", "rl_max_steps", "threads"):
        need(getattr(cfg, name) >= 0, f"--{name} must be >= 0 (got {getattr(cfg, name)})")
    need(cfg.temperature > 0 and 0 < cfg.top_p <= 1, "--temperature must be > 0 and --top_p in (0, 1]")
    need(0 <= cfg.max_repeat <= 1 and 0 <= cfg.min_language <= 1, "--max_repeat and --min_language are in [0, 1]")
    need(cfg.sft_lr > 0 and cfg.rl_budget >= 0, "--sft_lr must be > 0 and --rl_budget >= 0")
    need(cfg.device in ("auto", "cpu", "cuda"), f"--device must be auto, cpu or cuda (got {cfg.device!r})")
    # the files, read now: a bad line is reported before any teacher is trained or loaded
    try:
        if cfg.dataset:
            read_jsonl(cfg.dataset)
        problems = cfg.teacher_args.get("problems")
        if problems:
            need(os.path.exists(problems), f"--teacher_args problems file {problems!r} does not exist")
            kind = cfg.teacher_args.get("problems_kind", train.TrainConfig.problems_kind)
            need(tasks.load_jsonl(problems, kind=kind), f"{problems}: no problems (an empty file)")
    except (ValueError, UnicodeDecodeError) as e:
        raise SystemExit(f"error: {e}") from None


def recipe(cfg: DistillConfig) -> train.TrainConfig:
    """The teacher's train.py config: the recipe the student is pretrained with and GRPO'd with."""
    rc = train.TrainConfig(**copy.deepcopy(train.TRAIN_PRESETS[cfg.teacher_preset]))
    rc = dataclasses.replace(rc, **cfg.teacher_args)
    return dataclasses.replace(rc, seed=cfg.seed, task=cfg.task or rc.task, buckets=cfg.buckets or rc.buckets,
                               max_new_tokens=cfg.max_new_tokens or rc.max_new_tokens, eval_k=cfg.eval_k,
                               eval_problems=cfg.eval_problems)


def resolve(cfg: DistillConfig) -> DistillConfig:
    """Fill the fields left to the recipe (task, buckets, max_new_tokens) from it."""
    rc = recipe(cfg)
    return dataclasses.replace(cfg, task=rc.task, buckets=rc.buckets, max_new_tokens=rc.max_new_tokens)

# -----------------------------------------------------------------------------
# Rejection sampling: keep the correct, well-formatted, readable and new traces.

def reasoning_text(completion: str) -> str:
    """The <think> part of a completion (the whole text if it does not parse)."""
    parsed = rewards.parse_response(completion)
    return parsed[0] if parsed else completion


def repeat_fraction(text: str, n: int) -> float:
    """Fraction of the word n-grams of text that repeat an earlier one (0: none, -> 1: a loop)."""
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def language_share(text: str) -> float:
    """rewards.language_consistency of text, or 1.0 if text has no words at all (digits and symbols only)."""
    return rewards.language_consistency(text, "en") if re.search(r"[^\W\d_]", text) else 1.0


@dataclass
class TraceFilter:
    """The rejection-sampling rules, on their own so other pipelines (R1's SFT data) can reuse them."""
    min_tokens: int = 4        # kept completions have between min_tokens and max_tokens tokens
    max_tokens: int = 0        # 0: no upper limit
    repeat_ngram: int = 4      # word n-gram size of the repetition filter
    max_repeat: float = 0.5    # drop if more than this fraction of the reasoning's n-grams are repeats
    min_language: float = 0.9  # drop if rewards.language_consistency of the reasoning is lower
    max_per_problem: int = 4   # distinct traces kept per problem


def trace_filter(cfg: DistillConfig, oracle: bool = False) -> TraceFilter:
    """The filter of a distill run. A sampled teacher's traces are capped at the response cap (--max_tokens,
    else --max_new_tokens); the oracle's reference solutions are never cut by the student's length limit."""
    cap = cfg.max_tokens or (0 if oracle else cfg.max_new_tokens)
    return TraceFilter(cfg.min_tokens, cap, cfg.repeat_ngram, cfg.max_repeat, cfg.min_language, cfg.max_per_problem)


def judge(sample_: dict, problem, f: TraceFilter) -> tuple[str, dict]:
    """One teacher sample {"completion", "length", "truncated"} -> (reason it is dropped or "keep", score)."""
    text = sample_["completion"]
    score = rewards.score(text, problem)
    think = reasoning_text(text)
    if sample_.get("truncated"):
        return "truncated", score
    if score["format"] < 1:
        return "format", score
    if score["accuracy"] < 1:
        return "wrong", score
    if sample_["length"] < f.min_tokens or (f.max_tokens and sample_["length"] > f.max_tokens):
        return "length", score
    if repeat_fraction(think, f.repeat_ngram) > f.max_repeat:
        return "repetitive", score
    if language_share(think) < f.min_language:
        return "mixed_language", score
    return "keep", score


def rejection_sample(problems, sampler, k: int, seed: int, f: TraceFilter) -> tuple[list[dict], dict]:
    """sampler(problems, k, seed) -> k sample dicts per problem, problem-major. Returns the kept records
    (one JSON-able dict per trace) and counts: samples, kept, teacher accuracy/format, drops by reason."""
    samples = sampler(problems, k, seed)
    if len(samples) != len(problems) * k:
        raise ValueError(f"sampler returned {len(samples)} samples for {len(problems)} problems x k={k}")
    records, seen, per_problem = [], set(), {}
    drops = dict.fromkeys(["truncated", "format", "wrong", "length", "repetitive", "mixed_language",
                           "duplicate", "over_cap"], 0)
    acc = fmt = 0.0  # sums over all samples of the accuracy and format rewards
    for j, s in enumerate(samples):
        p = problems[j // k]
        reason, score = judge(s, p, f)
        acc, fmt = acc + score["accuracy"], fmt + score["format"]
        key = (p.question, " ".join(s["completion"].split()))
        if reason == "keep" and key in seen:
            reason = "duplicate"
        if reason == "keep" and per_problem.get(p.question, 0) >= f.max_per_problem:
            reason = "over_cap"
        if reason != "keep":
            drops[reason] += 1
            continue
        seen.add(key)
        per_problem[p.question] = per_problem.get(p.question, 0) + 1
        records.append({"prompt": tasks.r1_zero_prompt(p.question), "completion": s["completion"],
                        "question": p.question, "answer": p.answer, "task": p.task, "bucket": p.bucket,
                        "meta": p.meta, "length": int(s["length"]), "sample": j % k,
                        "teacher_score": {name: v for name, v in score.items() if isinstance(v, (int, float, str))}})
    n_samples = max(1, len(samples))
    stats = {"problems": len(problems), "samples": len(samples), "kept": len(records), "problems_with_trace":
             len(per_problem), "teacher_accuracy": acc / n_samples, "teacher_format": fmt / n_samples,
             "generated_tokens": sum(int(s["length"]) for s in samples), "dropped": drops}
    return records, stats


def sample_responses(model, tok, problems, group_size: int, temperature: float, top_p: float, max_new_tokens: int,
                     seed: int):
    """group_size (G) responses per problem on the R1-Zero template (rows problem-major), stopping at end-of-text or
    "</answer>" (a special token in our vocabularies, a stop string in Hugging Face ones). This is train.rollout
    with stop strings, so Hugging Face teachers and students work too. Returns prompt ids, Generation, texts."""
    prompts = train.prompt_ids(tok, problems)
    stops = [tok.eos_id] + [tok.special_tokens[s] for s in ["</answer>"] if s in tok.special_tokens]
    gen = sample.generate(model, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                          n=group_size, stop_tokens=stops, stop_strings=["</answer>"], tokenizer=tok,
                          pad_id=tok.pad_id, seed=seed)  # gen.tokens (B, T), B = P*G
    texts = [tok.decode([t for t in gen.tokens[r, :gen.lengths[r]].tolist() if t != tok.eos_id])  # B strings
             for r in range(gen.tokens.shape[0])]
    return prompts, gen, texts


def teacher_sampler(model, tok, cfg: DistillConfig):
    """A sampler over a real model, in chunks of about cfg.batch_size sequences (whole problems: at least one)."""
    @torch.no_grad()
    def sampler(problems, k, seed):
        out, per_call = [], max(1, cfg.batch_size // k)
        for c in range(0, len(problems), per_call):
            _, gen, texts = sample_responses(model, tok, problems[c:c + per_call], k, cfg.temperature, cfg.top_p,
                                             cfg.max_new_tokens, seed=seed + c)
            out += [{"completion": t, "length": int(gen.lengths[r]), "truncated": bool(gen.truncated[r])}
                    for r, t in enumerate(texts)]
        return out
    return sampler


def oracle_sampler(tok):
    """--teacher=oracle: the task's reference solutions (tasks.render_response in the long modes, with and without
    a verification step that catches an injected slip) stand in for a teacher. An upper bound for distillation,
    and a teacher that needs no training (CPU demonstrations). Never truncated: the student's response cap
    (max_new_tokens) limits the student, not the reference."""
    def sampler(problems, k, seed):
        rng = random.Random(seed)
        out = []
        for p in problems:
            for _ in range(k):
                text = tasks.render_response(p, rng.choice(["L", "LV"]), rng)
                out.append({"completion": text, "length": len(tok.encode(text)), "truncated": False})
        return out
    return sampler


def oracle_eval(problems, tok, cfg: DistillConfig, k: int) -> dict:
    """The metrics of train.evaluate for the reference solutions (what --teacher=oracle would score)."""
    samples = []
    for p, s in zip([p for p in problems for _ in range(k)], oracle_sampler(tok)(problems, k, cfg.seed)):
        sc = rewards.score(s["completion"], p)
        samples.append({"bucket": p.bucket, "correct": sc["accuracy"] > 0, "pred": sc["answer"],
                        "format": sc["format"], "length": s["length"], "truncated": s["truncated"]})
    res = evaluate.summarize(samples, k)
    out = {m: res[m] for m in ("pass@1", "cons@k", "pass@k", "format", "length", "truncated")}
    out.update({f"{m}/{b}": r[m] for b, r in res["by_bucket"].items() for m in ("pass@1", "cons@k", "length")})
    return out


def write_jsonl(path: str, records: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: str) -> list[dict]:
    """The traces of a JSONL file; ValueError "PATH:LINE: what is wrong" on the first bad line or an empty file."""
    records = []
    for where, r in tasks.jsonl_records(path, "traces"):
        if not (isinstance(r.get("prompt"), str) and isinstance(r.get("completion"), str)):
            raise ValueError(f"{where}: a trace needs string fields 'prompt' and 'completion'; got {sorted(r)}")
        records.append(r)
    return records


def record_problem(r: dict) -> tasks.Problem:
    """The problem a trace came from, rebuilt from its record (for re-scoring a dataset)."""
    return tasks.Problem(question=r["question"], answer=r["answer"], task=r["task"], bucket=r["bucket"],
                         meta=r.get("meta") or {})


def to_examples(records: list[dict], tok) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids + eos) pairs for train.sft, encoded with the student's tokenizer."""
    return [(tok.encode(r["prompt"]), tok.encode(r["completion"]) + [tok.eos_id]) for r in records]

# -----------------------------------------------------------------------------
# Compute accounting: tokens through each model, and FLOPs = 2 x active params per forward token, 6 x active params
# per trained token.

def active_params(model) -> int:
    """Parameters one token passes through (model.py's count: of the routed experts only the K it is sent to);
    every parameter for a model without num_params; 0 for the oracle teacher."""
    if model is None:  # the oracle teacher
        return 0
    return model.num_params(active=True) if hasattr(model, "num_params") else sum(p.numel() for p in model.parameters())


def compute(model, sampled: float = 0, trained: float = 0, forward: float = 0) -> dict:
    """Tokens sampled (forward only), trained (forward + backward) and forwarded without sampling, and their FLOPs."""
    n_params = active_params(model)
    return {"sampled_tokens": sampled, "trained_tokens": trained, "forward_tokens": forward,
            "flops": 2 * n_params * (sampled + forward) + 6 * n_params * trained}


def add(a: dict, b: dict) -> dict:
    """Two compute dicts summed key by key."""
    return {k: a.get(k, 0) + b.get(k, 0) for k in set(a) | set(b)}

# -----------------------------------------------------------------------------
# Teacher and student models.

def get_teacher(cfg: DistillConfig, device, log):
    """(model, tokenizer, source): --teacher, or a run of train.py with the recipe into OUT/teacher (cached)."""
    path = cfg.teacher
    if path == "oracle":
        rc = dataclasses.replace(recipe(cfg), out_dir=os.path.join(cfg.out_dir, "student"))
        os.makedirs(rc.out_dir, exist_ok=True)
        return None, train.stage_tokenizer(rc, log), "oracle"
    if not path:
        tdir = os.path.join(cfg.out_dir, "teacher")
        argv = ["--preset", cfg.teacher_preset, "--out_dir", tdir, f"--seed={cfg.seed}", f"--device={cfg.device}"]
        argv += [f"--{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in cfg.teacher_args.items()]
        stamp = os.path.join(tdir, "distill_teacher.json")
        tc = train.TrainConfig(**copy.deepcopy(train.TRAIN_PRESETS[cfg.teacher_preset]))  # presets may change
        key = {"argv": argv, "config": dataclasses.asdict(dataclasses.replace(tc, **cfg.teacher_args))}
        if not (os.path.exists(stamp) and json.load(open(stamp)) == json.loads(json.dumps(key))):
            if runlog.existing_run(tdir):  # a teacher of another config: train.py moves it aside, deletes nothing
                argv.append("--overwrite")
            log(f"[teacher] training with train.py {' '.join(argv)}")
            train.main(argv)
            json.dump(key, open(stamp, "w"))
        path = train.latest_rl_checkpoint(tdir) or os.path.join(tdir, "base")  # the base if rl_steps=0
        log(f"[teacher] {path}")
    model, tok, _ = checkpoint.load(path, device=device)
    return model, tok, path


def get_student_base(cfg: DistillConfig, rc: train.TrainConfig, tok, device, log):
    """(model, tokenizer): --student, or student_model pretrained with the teacher's recipe and tokenizer."""
    if cfg.student:
        return checkpoint.load(cfg.student, device=device)[:2]
    sc = dataclasses.replace(rc, out_dir=os.path.join(cfg.out_dir, "student"), model=cfg.student_model,
                             model_overrides=dict(cfg.student_overrides))
    os.makedirs(sc.out_dir, exist_ok=True)
    return train.stage_pretrain(sc, tok, device, log), tok

# -----------------------------------------------------------------------------
# (b) GRPO on the student from its own base, until it has spent the budget (the stage_rl loop, counted).

def grpo_baseline(model, tok, rc: train.TrainConfig, budget: float, cfg: DistillConfig, device, log):
    """Returns (model, compute dict, per-step rewards)."""
    opt = torch.optim.AdamW(model.parameters(), lr=rc.rl_lr, betas=(0.9, 0.99), weight_decay=0.0)
    gcfg = train.grpo_config(rc)
    ref_model = copy.deepcopy(model).requires_grad_(False).eval() if rc.beta > 0 else None  # frozen base for KL
    pool = tasks.make_problems(cfg.task, max(cfg.n_problems, rc.prompts_per_step * max(1, cfg.rl_max_steps)),
                               split="train", seed=cfg.seed, buckets=rc.buckets.split(","))
    spent, step, history = compute(model), 0, []
    while step < cfg.rl_max_steps and spent["flops"] < budget:
        problems = random.Random(cfg.seed * 1_000_003 + step).sample(pool, min(len(pool), rc.prompts_per_step))
        model.eval()
        with torch.no_grad():
            prompts, gen, texts = sample_responses(model, tok, problems, rc.group_size, rc.rollout_temperature, 1.0,
                                                   cfg.max_new_tokens, seed=cfg.seed * 7919 + step)
        scores = [rewards.score(t, problems[r // rc.group_size]) for r, t in enumerate(texts)]
        model.train()
        batch = train.build_rollouts(prompts, gen, scores, rc.group_size, tok.pad_id)
        diag = grpo.rl_step(model, opt, {k: v.to(device) for k, v in batch.items()}, gcfg, ref_model=ref_model)
        prompt_tokens = sum(len(p) for p in prompts)
        generated = float(gen.lengths.sum())
        batch_tokens = prompt_tokens * rc.group_size + generated  # non-pad tokens of the training batch
        spent = add(spent, compute(model, sampled=prompt_tokens + generated, trained=batch_tokens * rc.mu,
                                   forward=batch_tokens * ((rc.mu > 1) + (rc.beta > 0))))  # pi_old and reference
        step += 1
        history.append(float(diag["reward_mean"]))
        log(f"[grpo] step {step:4d} reward {diag['reward_mean']:.3f} len {diag['response_len']:.1f} "
            f"spent {spent['flops'] / max(budget, 1):.2f} of budget", file_only=step % 10 != 0)
    spent["steps"] = step
    spent["budget_hit"] = spent["flops"] >= budget
    return model, spent, history

# -----------------------------------------------------------------------------
# Results: one table overall, one per bucket, in markdown and JSON.

def fmt(x, nd=3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def results_markdown(rows: dict, stats: dict, cfg: DistillConfig, k: int) -> str:
    buckets = sorted({key.split("/")[1] for r in rows.values() for key in r["eval"] if key.startswith("pass@1/")})
    out = [f"# distillation vs GRPO on the student ({cfg.task}, held-out, {cfg.eval_problems} problems per bucket, "
           f"k={k}, temperature 0.6)", "",
           f"Teacher traces: {stats['kept']} kept of {stats['samples']} samples on {stats['problems']} problems "
           f"({stats['problems_with_trace']} problems with a trace; teacher sample accuracy "
           f"{stats['teacher_accuracy']:.3f}); dropped: " +
           (", ".join(f"{k} {v}" for k, v in stats["dropped"].items()) or f"n/a (traces from {cfg.dataset})"),
           "", f"| model | active params | pass@1 | cons@{k} | length | format | steps | trained tokens "
           "| sampled tokens | student FLOPs | total FLOPs |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        e, c = r["eval"], r.get("compute", {})
        out.append(f"| {name} | {r['params'] / 1e6:.2f}M | {fmt(e.get('pass@1'))} | {fmt(e.get('cons@k'))} | "
                   f"{fmt(e.get('length'), 1)} | {fmt(e.get('format'))} | {c.get('steps', '-')} | "
                   f"{c.get('trained_tokens', 0):,.0f} | "
                   f"{c.get('sampled_tokens', 0):,.0f} | {c.get('student_flops', 0):.3g} | {c.get('flops', 0):.3g} |")
    out += ["", f"Compute: FLOPs = 2 x active params per sampled token + 6 x active params per trained token. "
            f"The distilled row counts the student's SFT (trained tokens, student FLOPs) plus the teacher's sampling "
            f"(sampled tokens, in total FLOPs); GRPO was allowed {cfg.rl_budget:g} x the distillation's "
            f"{'total' if cfg.budget_includes_teacher else 'student'} FLOPs (at most {cfg.rl_max_steps} steps).",
            "", "Per bucket: pass@1 / cons@k / length", "",
            "| model | " + " | ".join(buckets) + " |", "|---|" + "---|" * len(buckets)]
    for name, r in rows.items():
        e = r["eval"]
        cells = [f"{fmt(e.get(f'pass@1/{b}'))} / {fmt(e.get(f'cons@k/{b}'))} / {fmt(e.get(f'length/{b}'), 1)}"
                 for b in buckets]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"

# -----------------------------------------------------------------------------

def make_dataset(cfg: DistillConfig, rc: train.TrainConfig, teacher, ttok, log) -> tuple[list[dict], dict, dict]:
    """Rejection-sample the teacher on cfg.n_problems training problems (or read --dataset).
    Returns the kept records, their statistics and the teacher's sampling compute."""
    if cfg.dataset:
        records = read_jsonl(cfg.dataset)
        questions = {r.get("question", r["prompt"]) for r in records}
        stats = {"problems": len(questions), "samples": len(records), "kept": len(records),
                 "problems_with_trace": len(questions), "teacher_accuracy": float("nan"),
                 "teacher_format": float("nan"), "generated_tokens": 0, "dropped": {}, "source": cfg.dataset}
        log(f"[data] {len(records)} traces from {cfg.dataset} (teacher sampling cost not counted)")
        return records, stats, compute(teacher)
    t = time.time()
    problems = tasks.make_problems(cfg.task, cfg.n_problems, split="train", seed=cfg.seed + 1,
                                   buckets=rc.buckets.split(","))
    sampler = oracle_sampler(ttok) if teacher is None else teacher_sampler(teacher.eval(), ttok, cfg)
    records, stats = rejection_sample(problems, sampler, cfg.k, cfg.seed, trace_filter(cfg, oracle=teacher is None))
    prompt_tokens = sum(len(ids) for ids in train.prompt_ids(ttok, problems))  # prefilled once per problem
    log(f"[data] kept {stats['kept']} of {stats['samples']} teacher samples ({time.time() - t:.0f}s); "
        f"dropped {stats['dropped']}")
    return records, stats, compute(teacher, sampled=prompt_tokens + stats["generated_tokens"])


def main(argv: list[str] | None = None) -> dict:
    preset, cfg = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = resolve(cfg)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          (cfg.device if cfg.device != "auto" else "cpu"))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    os.makedirs(cfg.out_dir, exist_ok=True)
    json.dump({"preset": preset, **dataclasses.asdict(cfg)}, open(os.path.join(cfg.out_dir, "distill_config.json"),
                                                                 "w"), indent=1)
    log = runlog.console_log(cfg.out_dir)  # every line goes to log.txt; file_only ones skip the console

    t0 = time.time()
    log(f"== {preset} on {device} -> {cfg.out_dir}")
    rc = recipe(cfg)
    teacher, ttok, teacher_src = get_teacher(cfg, device, log)
    base, stok = get_student_base(cfg, rc, ttok, device, log)
    eval_set = tasks.make_problems(cfg.task, cfg.eval_problems * len(rc.buckets.split(",")), split="test",
                                   seed=cfg.seed, buckets=rc.buckets.split(","))

    def eval_model(model, tok, name):
        t = time.time()
        model.eval()
        ev = train.evaluate(model, tok, eval_set, rc, seed=cfg.seed)
        log(f"[eval] {name}: pass@1 {ev['pass@1']:.3f} cons@k {ev['cons@k']:.3f} length {ev['length']:.1f} "
            f"({time.time() - t:.0f}s)")
        return ev

    rows = {"teacher": {"params": active_params(teacher), "eval": oracle_eval(eval_set, ttok, cfg, rc.eval_k)
                        if teacher is None else eval_model(teacher, ttok, "teacher")},
            "student base": {"params": active_params(base), "eval": eval_model(base, stok, "student base")}}

    records, stats, teacher_cost = make_dataset(cfg, rc, teacher, ttok, log)
    traces = os.path.join(cfg.out_dir, "traces.jsonl")
    write_jsonl(traces, records)

    # (a) distillation: SFT of the student base on the kept traces
    distilled = copy.deepcopy(base)  # base itself stays untouched for (b)
    examples = to_examples(records, stok)
    sft_losses = []
    if examples and cfg.sft_steps:
        sft_losses = train.sft(distilled, examples, cfg.sft_steps, cfg.sft_batch_size, cfg.sft_lr, stok.pad_id,
                               seed=cfg.seed, log=log)
    else:
        log("[sft] no traces kept: the distilled student is the base (raise --n_problems/--k or train the teacher "
            "longer)")
    mean_len = sum(len(p) + len(c) for p, c in examples) / max(1, len(examples))
    sft_cost = compute(distilled, trained=len(sft_losses) * cfg.sft_batch_size * mean_len)
    distill_cost = {**add(sft_cost, teacher_cost), "student_flops": sft_cost["flops"],
                    "teacher_flops": teacher_cost["flops"], "steps": len(sft_losses)}
    train.save_checkpoint(os.path.join(cfg.out_dir, "student", "distilled"), distilled, None,
                          {"sft_steps": len(sft_losses), "traces": traces}, stok)
    rows["distilled (SFT)"] = {"params": active_params(distilled), "eval": eval_model(distilled, stok, "distilled"),
                               "compute": distill_cost, "sft_losses": sft_losses}

    # (b) GRPO on the same student base with a comparable budget
    budget = cfg.rl_budget * (distill_cost["flops"] if cfg.budget_includes_teacher else sft_cost["flops"])
    rl_model, rl_cost, rl_rewards = grpo_baseline(base, stok, rc, budget, cfg, device, log)
    rl_cost["student_flops"] = rl_cost["flops"]
    train.save_checkpoint(os.path.join(cfg.out_dir, "student", "grpo"), rl_model, None, {"rl_steps": rl_cost["steps"]},
                          stok)
    rows["GRPO on student"] = {"params": active_params(rl_model), "eval": eval_model(rl_model, stok, "GRPO"),
                               "compute": rl_cost, "rewards": rl_rewards}
    if not rl_cost["budget_hit"]:
        log(f"[grpo] stopped at --rl_max_steps={cfg.rl_max_steps} with {rl_cost['flops'] / max(budget, 1):.2f} "
            f"of the budget spent")

    for r in rows.values():
        r["eval"] = {k: v for k, v in r["eval"].items() if isinstance(v, (int, float))}
    result = {"preset": preset, "config": dataclasses.asdict(cfg), "teacher": teacher_src, "dataset": traces,
              "data": stats, "budget_flops": budget, "rows": rows, "seconds": time.time() - t0}
    with open(os.path.join(cfg.out_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    md = results_markdown(rows, stats, cfg, rc.eval_k)
    with open(os.path.join(cfg.out_dir, "results.md"), "w") as f:
        f.write(md)
    log(md)
    log(f"== done in {time.time() - t0:.0f}s; {cfg.out_dir}/results.md, {traces}")
    return result


if __name__ == "__main__":
    main()
