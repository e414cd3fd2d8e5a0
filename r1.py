"""
r1.py: DeepSeek-R1's pipeline after R1-Zero, end to end at a size a laptop runs (arXiv 2501.12948, section 2.3).
R1-Zero reasons well but reads badly and mixes languages, and it can do nothing but reason. R1 fixes both in four
stages, and this file runs them in order, then compares every stage with R1-Zero in one table:

  0. base       the from-scratch base model (train.py's tokenizer and pretraining stages) on a corpus with a
                second language and general tasks (general.py); R1-Zero = GRPO from it, rule rewards only.
  1. cold start a few hundred long chains of thought in one readable format (reasoning in <think>, the summary in
                <answer>): R1-Zero's own outputs that are correct and readable, plus templated demonstrations;
                SFT of the base on them.
  2. reasoning  GRPO from the cold-start model, as R1-Zero, with a language-consistency term added to the reward
     RL         (the share of target-language words in the reasoning).
  3. rejection  k samples per reasoning prompt from the stage-2 model; keep the correct and readable ones (the same
     sampling   filters distill.py uses); add general-task examples; fine-tune the BASE for 2 epochs on the mix.
     + SFT
  4. all-       GRPO on reasoning and general prompts: rule rewards for reasoning, and for general prompts a learned
     scenario   reward model (reward_model.py) trained Bradley-Terry on preference pairs labelled by a hidden rule
     RL         (helpfulness on the summary, harmlessness on the whole response). The hidden rule is logged beside
                the reward model during RL: where they part, the policy is over-optimising the learned reward.

    python r1.py --preset r1-smoke      # all four stages in seconds (tests, CI)
    python r1.py --preset r1-tiny       # 2 CPU cores
    python r1.py --preset r1-small      # one GPU (a design: not yet run)
    python r1.py --preset r1-tiny-mixed # r1-tiny in a world where R1-Zero's mixing survives its RL
    python r1.py --help                 # presets and every field

r1-full runs stages 1-4 from a real checkpoint (a Hugging Face directory: config.json, *.safetensors,
tokenizer.json) on your data, under torchrun with FSDP2 (one process per GPU; gloo on CPU):

    torchrun --nproc_per_node 8 r1.py --preset r1-full --init PATH --cold_start cold.jsonl \\
        --problems gsm8k.jsonl --general_prompts general.jsonl --preferences prefs.jsonl

Its four JSONL files, one JSON object per line (blank lines skipped; every line is checked before any model
loads, and a bad one stops the run with "error: FILE:LINE: what is wrong"):
  --cold_start       {"question": str, "response": str}: the readable long chains of thought of stage 1; the
                     response must be "<think> reasoning </think> <answer> summary </answer>".
  --problems         reasoning problems for stages 2-4 with rule-checked answers, in tasks.load_jsonl's formats
                     (--problems_kind gsm8k: {"question", "answer": "... #### 72"}; math: {"problem", "solution"
                     with \\boxed{}}; generic: {"question", "answer"}); the first --eval_problems are held out.
  --general_prompts  {"prompt": str, "response": str (optional, in the cold-start format)}: every prompt is a
                     general prompt of stage 4's RL (scored by the reward model); the ones with a response join
                     stage 3's SFT mix.
  --preferences      {"prompt": str, "chosen": str, "rejected": str} (chosen != rejected, at least 2 lines): the
                     reward model's Bradley-Terry pairs; every 10th pair is held out for its accuracy.
Prompts are wrapped in the R1-Zero template (tasks.r1_zero_prompt) as everywhere else. There is no R1-Zero row
(R1-Zero is train.py --preset zero-full) and no hidden rule for real prompts, so the general columns stay empty.

Outputs under --out_dir (default runs/<preset>): the recipe's tokenizer/ and base/, r1-zero/, stage1/, stage2/,
stage3/, stage4/ (RL stages hold train.py's metrics.jsonl, plots.png, transcripts.md), results.md, results.json.
Every stage is cached by a hash of its config and the source files it runs; a rerun reuses what is done and resumes
an interrupted RL stage.

Simplifications relative to the paper:
 1. The world is synthetic (general.py): the recipe's reasoning task (letter counting for r1-tiny), a word list for
    the second language, and a fact table for the general tasks; the paper has ~800k real samples.
 2. The cold-start data are filtered R1-Zero outputs and templated demonstrations; no human post-processing.
 3. One reward model for general prompts, trained on pairs a rule labels (so the rule can be shown beside it);
    the paper trains helpfulness and harmlessness reward models on human preferences.
 4. Stage 2 adds the language term to every reasoning reward with one weight; the paper tunes it per task.
 5. r1-full's cold-start data come from a file (the paper's come from R1-Zero and human annotators); its reward
    model is the base with a scalar head, trained here on the preference file, one model for both criteria.

Shape letters: B batch rows, T positions; the tensor work is in train.py, sample.py, grpo.py and reward_model.py.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field

import torch

import checkpoint
import cli
import distill
import distributed
import general
import rewards
import runlog
import sample
import tasks
import train
from reward_model import RewardModel, pair_accuracy, train_reward_model

# -----------------------------------------------------------------------------
# Config: one dataclass, presets as dicts of overrides, every field a --flag (as in train.py).


@dataclass
class R1Config:
    # run
    out_dir: str = ""                  # default runs/<preset>
    seed: int = 0
    device: str = "auto"               # auto | cpu | cuda
    recipe: str = "zero-tiny"          # train.py preset: task, model, pretraining and R1-Zero's RL settings
    recipe_args: dict = field(default_factory=dict)  # train.py field overrides for the recipe
    # r1-full: a real checkpoint and four JSONL files (schemas in the docstring) instead of the synthetic world
    init: str = ""                     # a Hugging Face checkpoint dir (config.json, *.safetensors, tokenizer.json)
    cold_start: str = ""               # cold-start SFT pairs {"question", "response"}
    problems: str = ""                 # reasoning problems (tasks.load_jsonl's formats)
    problems_kind: str = "gsm8k"       # gsm8k | math | generic
    general_prompts: str = ""          # general prompts {"prompt", "response" (optional)}
    preferences: str = ""              # preference pairs {"prompt", "chosen", "rejected"}
    # the corpus: a second language and general tasks beside the recipe's task
    general_share: float = 0.1         # share of corpus documents from general.py
    drift_rate: float = 0.3            # share of corpus dialogues whose reasoning drifts into Japanese
    ja_open_rate: float = 0.0          # share whose reasoning is mixed from its first word (r1-tiny-mixed: 0.5)
    # stage 1: cold start
    cold_start_n: int = 300            # long-CoT examples
    demo_share: float = 0.5            # of them, templated demonstrations (the rest: readable R1-Zero outputs)
    demo_modes: str = "L,LV"           # response modes of the demonstrations (tasks.py: D, S, L, LV)
    cold_start_steps: int = 150        # SFT steps
    sft_batch_size: int = 16
    sft_lr: float = 1e-3
    # stage 2: reasoning RL
    stage2_steps: int = 20             # GRPO steps
    language_weight: float = 0.5       # weight of language consistency in the reasoning reward (stages 2, 4)
    # stage 3: rejection sampling + SFT of the base
    rs_problems: int = 256             # reasoning prompts sampled from the stage-2 model
    rs_k: int = 4                      # samples per prompt
    general_n: int = 200               # general-task examples added to the SFT mix
    sft_epochs: int = 2                # epochs over the mix (the paper's 2)
    # stage 4: all-scenario RL
    rm_pairs: int = 400                # preference pairs for the reward model
    rm_steps: int = 150
    rm_lr: float = 3e-4
    stage4_steps: int = 20             # GRPO steps
    general_prompt_share: float = 0.5  # share of each step's prompts that are general
    # evaluation
    eval_problems: int = 32            # held-out reasoning problems per bucket
    eval_general: int = 64             # held-out general prompts
    eval_k: int = 4                    # samples per reasoning problem (pass@1 over k)


R1_PRESETS = {
    # plumbing in seconds: letter counting with short direct answers, so that the cold start teaches the format
    # and stage 3 has correct samples to keep even from a 0.1M-parameter model
    "r1-smoke": dict(recipe="smoke", recipe_args={"rl_steps": 2, "task": "count", "max_new_tokens": 32,
                                                  "probe": False, "corpus_mix": {"tasks": {"count": 1.0}}},
                     general_share=0.2, cold_start_n=16, demo_share=1.0, demo_modes="D", cold_start_steps=150,
                     sft_batch_size=8, sft_lr=1e-2, stage2_steps=2, rs_problems=8, rs_k=8, general_n=8, rm_pairs=16,
                     rm_steps=4, stage4_steps=2, eval_problems=2, eval_general=4, eval_k=2),
    "r1-tiny": dict(recipe="zero-tiny", recipe_args={"pretrain_steps": 900, "rl_steps": 40}),
    # r1-tiny where R1-Zero's mixing survives RL: half the dialogues open their reasoning mixed, a choice made at
    # the first word and independent of the problem, so sharpening on accuracy has no reason to remove it
    # (mid-thought drift, drift_rate, was gone after R1-Zero's RL at 0.3 and 0.7). Measured once
    # (docs/r1-tiny-mixed-results.md): the mixing survives R1-Zero (language 0.63 -> 0.62), which does not take off
    # (pass@1 0.35 -> 0.39); the cold start makes the reasoning one-language (1.00) and stage 2 reaches pass@1 1.00
    "r1-tiny-mixed": dict(recipe="zero-tiny", recipe_args={"pretrain_steps": 900, "rl_steps": 40}, ja_open_rate=0.5),
    # a real checkpoint on real data under torchrun (FSDP2), with the paper's RL settings (zero-full's); a design
    # until it is run: sizes are the paper's proportions scaled to a few GPU-hours, not measured
    "r1-full": dict(recipe="zero-full", init="REQUIRED", cold_start_steps=500, sft_batch_size=32, sft_lr=1e-5,
                    stage2_steps=300, rs_problems=4096, rs_k=8, rm_steps=1000, rm_lr=1e-6, stage4_steps=300,
                    eval_problems=256, eval_general=256, eval_k=8),
    "r1-small": dict(recipe="zero-small", cold_start_n=2000, cold_start_steps=600, sft_batch_size=64,
                     stage2_steps=60, rs_problems=2048, rs_k=8, general_n=1500, rm_pairs=4000, rm_steps=600,
                     stage4_steps=60, eval_problems=64, eval_general=256, eval_k=8),
}


def parse_args(argv: list[str]) -> tuple[str, R1Config]:
    """--preset NAME, --help and --FIELD=value (or --FIELD value); unknown fields are errors. (Finished stages
    are reused and an interrupted RL stage resumes by itself: rerunning the same command continues a run.)"""
    preset, cfg = cli.parse_preset_args(argv, __doc__, R1_PRESETS, R1Config, default="r1-tiny")
    validate(cfg)
    return preset, cfg


def validate(cfg: R1Config) -> None:
    def need(cond, msg):
        if not cond:
            raise SystemExit(f"error: {msg}")
    need(cfg.recipe in train.TRAIN_PRESETS, f"--recipe={cfg.recipe!r} unknown; valid: {', '.join(train.TRAIN_PRESETS)}")
    need(cfg.init != "REQUIRED", "r1-full starts from a real checkpoint: give --init PATH (a Hugging Face directory) "
         "and the data files --cold_start, --problems, --general_prompts, --preferences (JSONL; see --help)")
    from_ckpt = bool(train.TRAIN_PRESETS[cfg.recipe].get("init"))
    need(from_ckpt == bool(cfg.init), f"--recipe={cfg.recipe} starts from a checkpoint: use it with --init (r1-full)"
         if from_ckpt else f"--init is for recipes that start from a checkpoint (zero-full); --recipe={cfg.recipe} "
         "pretrains its own base")
    if cfg.init:
        need(os.path.exists(os.path.join(cfg.init, "config.json")),
             f"--init={cfg.init!r} is not a Hugging Face checkpoint directory (no config.json)")
        for name in ("cold_start", "problems", "general_prompts", "preferences"):
            need(getattr(cfg, name), f"r1-full needs --{name}=FILE (JSONL; see --help for its fields)")
            need(os.path.isfile(getattr(cfg, name)), f"--{name}={getattr(cfg, name)!r} does not exist")
        need(cfg.problems_kind in ("gsm8k", "math", "generic"),
             f"--problems_kind={cfg.problems_kind!r}; valid: gsm8k, math, generic")
    train_fields = {f.name for f in dataclasses.fields(train.TrainConfig)}
    bad = sorted(set(cfg.recipe_args) - train_fields)
    need(not bad, f"--recipe_args has unknown train.py fields {bad}; valid: {', '.join(sorted(train_fields))}")
    for name in ("general_share", "drift_rate", "ja_open_rate", "demo_share", "general_prompt_share"):
        need(0 <= getattr(cfg, name) <= 1, f"--{name} must be in [0, 1] (got {getattr(cfg, name)})")
    for name in ("cold_start_n", "sft_batch_size", "rs_problems", "rs_k", "rm_pairs", "eval_problems",
                 "eval_general", "eval_k", "sft_epochs"):
        need(getattr(cfg, name) >= 1, f"--{name} must be >= 1 (got {getattr(cfg, name)})")
    for name in ("cold_start_steps", "stage2_steps", "general_n", "rm_steps", "stage4_steps"):
        need(getattr(cfg, name) >= 0, f"--{name} must be >= 0 (got {getattr(cfg, name)})")
    need(cfg.sft_lr > 0 and cfg.rm_lr > 0, "--sft_lr and --rm_lr must be > 0")
    need(cfg.language_weight >= 0, f"--language_weight must be >= 0 (got {cfg.language_weight})")
    need(cfg.device in ("auto", "cpu", "cuda"), f"--device must be auto, cpu or cuda (got {cfg.device!r})")


def recipe(cfg: R1Config, stage: str = "", **over) -> train.TrainConfig:
    """The recipe's train.py config; its corpus gains general documents and drifting dialogues. Cached stages
    (tokenizer, base) live at the top of out_dir, each RL stage in out_dir/<stage>."""
    rc = train.TrainConfig(**copy.deepcopy(train.TRAIN_PRESETS[cfg.recipe]))
    rc = dataclasses.replace(rc, preset=cfg.recipe, **cfg.recipe_args)
    mix = copy.deepcopy(rc.corpus_mix)
    kinds = mix.get("kinds") or dict(tasks.DEFAULT_MIX["kinds"])
    scale = (1 - cfg.general_share) / max(1e-9, sum(v for k, v in kinds.items() if k != "general"))
    mix["kinds"] = {**{k: v * scale for k, v in kinds.items() if k != "general"}, "general": cfg.general_share}
    mix["drift_rate"] = cfg.drift_rate
    if cfg.ja_open_rate:  # only when set, so that the corpus of a run without it stays the same
        mix["ja_open_rate"] = cfg.ja_open_rate
    if cfg.init:  # r1-full: the checkpoint and the problem file replace the pretraining and the synthetic task
        over = {"init": cfg.init, "problems": cfg.problems, "problems_kind": cfg.problems_kind, **over}
    return dataclasses.replace(rc, corpus_mix=mix, seed=cfg.seed, device=cfg.device, eval_k=cfg.eval_k,
                               eval_problems=cfg.eval_problems, out_dir=os.path.join(cfg.out_dir, stage), **over)

# -----------------------------------------------------------------------------
# r1-full's data: four JSONL files, every line checked before any model loads (one-line errors naming file:line).


def read_records(path: str, what: str, required: tuple, optional: tuple = ()) -> list[tuple[str, dict]]:
    """(where "FILE:LINE", record) for each non-blank line of a JSONL file whose fields `required` (and
    `optional`, when present) are non-empty strings. A bad line or an empty file: SystemExit naming FILE:LINE."""
    def fail(msg):
        raise SystemExit(f"error: {msg}")
    try:
        records = tasks.jsonl_records(path, f"{what} lines")
    except ValueError as e:
        fail(str(e))
    for where, r in records:
        missing = [f for f in required if f not in r]
        if missing:
            fail(f"{where}: a {what} line needs fields {list(required)}" + (f" (optional: {list(optional)})"
                 if optional else "") + f"; missing {missing}, got {sorted(r)}")
        for f in [*required, *(f for f in optional if f in r)]:
            if not isinstance(r[f], str) or not r[f].strip():
                fail(f"{where}: field {f!r} must be a non-empty string, got {json.dumps(r[f])[:60]}")
    return records


def response_text(where: str, field_: str, text: str) -> str:
    """A response from a data file as the model writes it after "Assistant:": one leading space, then
    <think> reasoning </think> <answer> summary </answer> (R1's readable format; anything else is an error)."""
    text = " " + text.strip()
    if rewards.format_reward(text) != 1:
        raise SystemExit(f"error: {where}: field {field_!r} must be '<think> reasoning </think> <answer> summary "
                         f"</answer>' (R1's readable format), got {text.strip()[:60]!r}")
    return text


def load_cold_start(path: str) -> list[dict]:
    """{"question", "response"} per line -> SFT records {"prompt" (the R1 template), "completion"}."""
    return [{"prompt": tasks.r1_zero_prompt(r["question"]), "completion": response_text(w, "response", r["response"])}
            for w, r in read_records(path, "cold-start", ("question", "response"))]


def load_general_prompts(path: str) -> list[tasks.Problem]:
    """{"prompt", "response" (optional)} per line -> general Problems (task "general", no rule-checkable
    answer; the response, if any, in meta["response"]: stage 3 fine-tunes on it)."""
    out = []
    for w, r in read_records(path, "general-prompt", ("prompt",), ("response",)):
        meta = {"source": w, **({"response": response_text(w, "response", r["response"])} if "response" in r else {})}
        out.append(tasks.Problem(r["prompt"], "", "general", "general", meta))
    return out


def load_preferences(path: str) -> list[tuple[str, str, str]]:
    """{"prompt", "chosen", "rejected"} per line -> (prompt, chosen response, rejected response); the two
    responses must differ (a tie teaches nothing) and at least 2 pairs are needed (some are held out)."""
    out = []
    for w, r in read_records(path, "preference", ("prompt", "chosen", "rejected")):
        if r["chosen"].strip() == r["rejected"].strip():
            raise SystemExit(f"error: {w}: 'chosen' and 'rejected' are the same response")
        out.append((r["prompt"], " " + r["chosen"].strip(), " " + r["rejected"].strip()))
    if len(out) < 2:
        raise SystemExit(f"error: {path}: {len(out)} preference pair; need at least 2 (every 10th is held out)")
    return out


def load_files(cfg: R1Config, rc: train.TrainConfig) -> dict:
    """Every r1-full data file, read and checked (in the order of the stages), and the checkpoint's tokenizer."""
    try:
        data = {"tok": train.Tokenizer.from_pretrained(cfg.init)}
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: --init={cfg.init}: its tokenizer does not load: {e}") from None
    data["cold_start"] = load_cold_start(cfg.cold_start)
    data["pool"], data["held"] = train.load_problems(rc)  # tasks.load_jsonl via train.read_problems
    data["general"] = load_general_prompts(cfg.general_prompts)
    data["preferences"] = load_preferences(cfg.preferences)
    n_general = round(rc.prompts_per_step * cfg.general_prompt_share)
    if len(data["general"]) < n_general:
        raise SystemExit(f"error: {cfg.general_prompts} has {len(data['general'])} general prompts; stage 4 draws "
                         f"{n_general} distinct ones per step (--general_prompt_share x prompts_per_step): give more "
                         f"prompts or lower --general_prompt_share")
    return data

# -----------------------------------------------------------------------------
# Rewards of the RL stages: (texts, problems) -> one dict per response, as train.stage_rl takes them.


def reasoning_score(weight: float):
    """Stage 2: the rule reward plus weight x language consistency of the reasoning (rewards.score's term)."""
    def score(texts, problems):
        return [rewards.score(t, p, weights={"language": weight}) for t, p in zip(texts, problems)]
    return score


def all_scenario_score(rm: RewardModel, tok, weight: float, hidden=general.hidden_score):
    """Stage 4: reasoning prompts get stage 2's rule reward; general prompts get the reward model's score.
    Every row carries the same keys: "rm" and "hidden" (the hidden rule, never optimised; NaN without one, as
    with real data) are NaN on reasoning rows, "accuracy" and "language" NaN on general ones, so step means are
    over the rows that have them. rm must not be FSDP-sharded (ranks score different rows)."""
    nan = float("nan")

    def score(texts, problems):
        general_rows = [i for i, p in enumerate(problems) if p.task == "general"]
        seqs = [tok.encode(tasks.r1_zero_prompt(problems[i].question) + texts[i]) for i in general_rows]
        rm_scores = rm.score(seqs, tok.pad_id).tolist() if seqs else []
        out = []
        for t, p in zip(texts, problems):
            s = rewards.score(t, p, weights={"language": weight}) if p.task != "general" else None
            out.append({"reward": s["reward"], "accuracy": s["accuracy"], "format": s["format"],
                        "language": s["language"], "rm": nan, "hidden": nan} if s else
                       {"reward": 0.0, "accuracy": nan, "format": float(rewards.format_reward(t)), "language": nan,
                        "rm": 0.0, "hidden": hidden(p, t)["score"] if hidden else nan})
        for i, r in zip(general_rows, rm_scores):
            out[i]["reward"] = out[i]["rm"] = r
        return out
    return score


def mixed_prompts(reasoning_pool: list, general_pool: list, per_step: int, share: float, seed: int):
    """Stage 4's prompt source: step -> per_step problems in a shuffled order (ranks take consecutive slices),
    round(per_step * share) of them general."""
    n_general = round(per_step * share)

    def prompts(step):
        rng = random.Random(seed * 1_000_003 + step)
        batch = rng.sample(reasoning_pool, per_step - n_general) + rng.sample(general_pool, n_general)
        rng.shuffle(batch)
        return batch
    return prompts

# -----------------------------------------------------------------------------
# Under torchrun (r1-full) the models are FSDP-sharded: sampling and scoring use gathered full copies.


def full_copy(model):
    """The model itself in one process; under FSDP a full copy gathered one parameter at a time (every rank
    calls it: a collective), so a rank can sample or score alone."""
    return distributed.Replica(model).get()


def shard_reward_model(rm: RewardModel) -> RewardModel:
    """Under FSDP the backbone comes sharded (checkpoint.load with distributed.shard); this shards the head too, so its
    gradients are reduced across ranks like every other parameter's. A no-op in one process."""
    if distributed.WORLD > 1:
        from torch.distributed.fsdp import fully_shard
        fully_shard(rm)
    return rm


def full_reward_model(rm: RewardModel) -> RewardModel:
    """rm itself in one process; under FSDP an unsharded copy (bf16 on GPU) gathered tensor by tensor (a
    collective: every rank calls it)."""
    if distributed.WORLD == 1:
        return rm
    unsharded = [n for n, p in rm.named_parameters() if not checkpoint.is_sharded(p)]
    assert not unsharded, f"parameters {unsharded} are not sharded: their gradients were never reduced across ranks"
    device = rm.head.weight.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # as distributed.Replica; the head stays fp32
    out = RewardModel(checkpoint.empty_model(rm.backbone.cfg, dtype, device)).to(device)
    mine = out.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, t in rm.state_dict(keep_vars=True).items():
            if name == "backbone.lm_head.weight" and rm.backbone.cfg.tie_embeddings:
                continue  # the embedding, already copied
            mine[name].copy_(checkpoint.full(t, mine[name].dtype))
    return out.eval()

# -----------------------------------------------------------------------------
# Data of the SFT stages.


def filters(cfg: R1Config, rc: train.TrainConfig) -> tuple[distill.DistillConfig, distill.TraceFilter]:
    """distill.py's sampler settings (temperature 1.0, top-p 0.95, the recipe's response cap) and its rejection-sampling
    filters (correct, well formed, not truncated, no loops), with one language required in the reasoning."""
    dc = distill.DistillConfig(temperature=1.0, max_new_tokens=rc.max_new_tokens, seed=cfg.seed, batch_size=256)
    return dc, dataclasses.replace(distill.trace_filter(dc), min_language=0.99, max_per_problem=2)


def rejection_sample(model, tok, problems, k: int, cfg: R1Config, rc) -> tuple[list[dict], dict]:
    """distill.rejection_sample with R1's filters; under FSDP each rank samples its share of the problems from a
    gathered copy and every rank gets all the kept records."""
    dc, f = filters(cfg, rc)
    sampler = distill.teacher_sampler(full_copy(model), tok, dc)
    kept, stats = distill.rejection_sample(problems[distributed.RANK::distributed.WORLD], sampler, k, cfg.seed + distributed.RANK, f)
    parts = distributed.all_gather((kept, stats))
    kept = [r for part, _ in parts for r in part]
    dropped = {reason: sum(s["dropped"][reason] for _, s in parts) for reason in stats["dropped"]}
    return kept, {"samples": sum(s["samples"] for _, s in parts), "dropped": dropped}


def cold_start_data(cfg: R1Config, rc, zero, tok, log) -> list[dict]:
    """Readable R1-Zero outputs on training problems, plus templated demonstrations (tasks.render_response in the
    long modes, all in English), cold_start_n in all: records with "prompt" and "completion"."""
    n_demo = round(cfg.cold_start_n * cfg.demo_share)
    pool = tasks.make_problems(rc.task, cfg.cold_start_n, split="train", seed=cfg.seed + 1,
                               buckets=rc.buckets.split(","))
    kept, stats = rejection_sample(zero, tok, pool, 2, cfg, rc)
    kept = kept[:cfg.cold_start_n - n_demo]
    rng = random.Random(cfg.seed)
    modes = cfg.demo_modes.split(",")
    demos = [{"prompt": tasks.r1_zero_prompt(p.question), "completion": tasks.render_response(p, mode, rng)}
             for p, mode in zip(pool, [rng.choice(modes) for _ in pool])][:cfg.cold_start_n - len(kept)]
    log(f"[stage 1] cold start: {len(kept)} readable R1-Zero outputs (of {stats['samples']} samples; dropped "
        f"{stats['dropped']}) + {len(demos)} demonstrations")
    return kept + demos


def general_records(n: int, seed: int) -> list[dict]:
    """General-task SFT examples (general.good_response) on the training split."""
    return [{"prompt": tasks.r1_zero_prompt(p.question), "completion": general.good_response(p)}
            for p in general.make_general(n, "train", seed)]

# -----------------------------------------------------------------------------
# The two worlds the stages run in: the synthetic one (r1-smoke, r1-tiny, r1-small: a base pretrained here and
# R1-Zero from it) and the files of r1-full (a real checkpoint). A world is a dict of what the stages need.


def synthetic_world(cfg: R1Config, rc, device, log, rows: dict, extra: dict) -> dict:
    """Stage 0: the recipe's tokenizer and base (cached), then R1-Zero from it; both rows of the table."""
    t0 = time.time()
    pool, held = train.load_problems(rc)
    general_held = general.make_general(cfg.eval_general, "test", cfg.seed)
    tok = train.stage_tokenizer(rc, log)
    base = train.stage_pretrain(rc, tok, device, log)
    w = {"tok": tok, "base": lambda: copy.deepcopy(base), "pool": pool, "held": held, "buckets": rc.buckets.split(","),
         "general_pool": general.make_general(2000, "train", cfg.seed), "general_held": general_held,
         "hidden": general.hidden_score, "general_sft": lambda: general_records(cfg.general_n, cfg.seed), "key": []}
    rows["base"] = evaluate_row(base, tok, held, general_held, cfg, rc)
    zero, extra["r1-zero"] = rl_stage("r1-zero", recipe(cfg, "r1-zero"), tok, copy.deepcopy(base), device, log,
                                      key="r1-zero")
    rows["R1-Zero"] = evaluate_row(zero, tok, held, general_held, cfg, rc)
    log(f"[r1-zero] language consistency of its reasoning {rows['R1-Zero']['language']:.3f}, readable "
        f"{rows['R1-Zero']['readable']:.3f}")
    extra["seconds"]["r1-zero"] = time.time() - t0
    w["cold_start"] = lambda: cold_start_data(cfg, rc, zero, tok, log)

    def pairs(split, n, seed):
        ps = general.preference_pairs(general.make_general(n, split, seed), random.Random(seed))
        return [(p.question, c, r) for p, c, r in ps]
    w["pairs"] = lambda: (pairs("train", cfg.rm_pairs, cfg.seed), pairs("test", max(64, cfg.eval_general),
                                                                         cfg.seed + 1))
    return w


def file_world(cfg: R1Config, rc, data: dict, device, log, rows: dict) -> dict:
    """r1-full: the checkpoint (its tokenizer; the base reloaded, sharded, whenever a stage starts from it) and
    the data files. No hidden rule exists for real prompts: the general columns stay empty."""
    tok, prefs = data["tok"], data["preferences"]
    w = {"tok": tok, "base": lambda: checkpoint.load(cfg.init, device, shard=distributed.shard)[0].train(),
         "pool": data["pool"], "held": data["held"], "buckets": sorted({p.bucket for p in data["held"]}),
         "general_pool": data["general"], "general_held": [], "hidden": None,
         "cold_start": lambda: data["cold_start"],
         "general_sft": lambda: [{"prompt": tasks.r1_zero_prompt(p.question), "completion": p.meta["response"]}
                                 for p in data["general"] if "response" in p.meta],
         "pairs": lambda: ([x for i, x in enumerate(prefs) if i % 10], prefs[::10]),  # every 10th held out
         "key": [file_digest(f) for f in (cfg.init, cfg.cold_start, cfg.problems, cfg.general_prompts,
                                          cfg.preferences)]}
    log(f"[data] {len(data['cold_start'])} cold-start pairs, {len(data['pool'])} + {len(data['held'])} held-out "
        f"problems, {len(data['general'])} general prompts ({len(w['general_sft']())} with a response), "
        f"{len(prefs)} preference pairs")
    rows["base"] = evaluate_row(w["base"](), tok, w["held"], [], cfg, rc, None)
    return w


def file_digest(path: str) -> str:
    """A hash of a data file's bytes (of config.json for a checkpoint dir): cached stages follow the data."""
    import hashlib
    p = os.path.join(path, "config.json") if os.path.isdir(path) else path
    return hashlib.sha256(open(p, "rb").read()).hexdigest()[:12]

# -----------------------------------------------------------------------------
# Evaluation: one row of the results table.


def readable(sample_: dict, max_repeat: float = 0.5, n: int = 4, min_language: float = 0.99) -> bool:
    """R1's readability filters, whatever the answer: well formed, not truncated, no loops, one language."""
    think = distill.reasoning_text(sample_["completion"])
    return (sample_["format"] == 1 and not sample_["truncated"] and distill.repeat_fraction(think, n) <= max_repeat
            and distill.language_share(think) >= min_language)


@torch.no_grad()
def evaluate_row(model, tok, held, general_held, cfg: R1Config, rc: train.TrainConfig,
                 hidden=general.hidden_score) -> dict:
    """Held-out pass@1 per bucket, length, format, language consistency, readable share (reasoning prompts,
    k samples at temperature 0.6, top-p 0.95) and the hidden rule's score on general prompts (one sample each),
    where there is one (hidden=None: real prompts). Under FSDP rank 0 evaluates a gathered copy; the other ranks return {}."""
    sampler = full_copy(model)
    row = {}
    if distributed.RANK == 0:
        sampler.eval()
        with train.autocast(next(sampler.parameters()).device):
            res = sample.evaluate(sampler, tok, held, k=cfg.eval_k, temperature=0.6, top_p=0.95,
                                  max_new_tokens=rc.max_new_tokens, batch_size=256, seed=cfg.seed)
        s = res["samples"]
        row = {"pass@1": res["pass@1"], **{f"pass@1/{b}": r["pass@1"] for b, r in res["by_bucket"].items()},
               "length": res["length"], "format": res["format"],
               "language": sum(distill.language_share(distill.reasoning_text(x["completion"])) for x in s) / len(s),
               "readable": sum(readable(x) for x in s) / len(s)}
        if hidden and general_held:
            _, _, texts = distill.sample_responses(sampler, tok, general_held, 1, 0.6, 0.95, rc.max_new_tokens,
                                                   cfg.seed)
            hidden = [hidden(p, t) for p, t in zip(general_held, texts)]
            for key in ("score", "helpful", "harmless"):
                row[f"general_{key}"] = sum(h[key] for h in hidden) / len(hidden)
    distributed.barrier()
    return row

# -----------------------------------------------------------------------------
# Stage caching: an SFT stage's model is saved with the hash of what made it; an RL stage resumes in its dir.
# Under torchrun every rank takes part in saving and loading (tensors are gathered); rank 0 writes the stamps.


def cached_sft(name: str, key, build, tok, cfg: R1Config, device, log):
    path = os.path.join(cfg.out_dir, name)
    stamp = os.path.join(path, "r1_stage.json")
    h = train.config_hash(key, code=("r1.py", "train.py", "tasks.py", "general.py", "distill.py", "sample.py"))
    if os.path.exists(stamp) and json.load(open(stamp)).get("hash") == h:
        log(f"[{name}] cached at {path}")
        return checkpoint.load(path, device, shard=distributed.shard)[0].train()
    model = build()
    train.save_checkpoint(path, model, None, {"stage": name}, tok)
    if distributed.RANK == 0:
        json.dump({"hash": h}, open(stamp, "w"))
    distributed.barrier()
    return model


def rl_stage(name: str, rc: train.TrainConfig, tok, model, device, log, key, **kw):
    """train.stage_rl in out_dir/<name>: reused when finished with the same hash, resumed when interrupted,
    moved aside (never deleted) when its config changed."""
    stamp = os.path.join(rc.out_dir, "r1_stage.json")
    h = train.config_hash(key, dataclasses.asdict(rc), code=("r1.py", "train.py", "grpo.py", "rewards.py",
                                                             "general.py", "reward_model.py"))
    done = os.path.join(rc.out_dir, "rl", f"step_{rc.rl_steps:06d}")
    same = os.path.exists(stamp) and json.load(open(stamp)).get("hash") == h
    if same and os.path.isdir(done):
        log(f"[{name}] cached at {done}")
        return checkpoint.load(done, device, shard=distributed.shard)[0].train(), json.load(open(stamp)).get("summary", {})
    distributed.barrier()  # every rank has read the stamp before rank 0 moves or rewrites it
    if distributed.RANK == 0:
        if os.path.isdir(rc.out_dir) and not same:
            old = f"{rc.out_dir}.old_{time.strftime('%Y%m%d_%H%M%S')}"
            shutil.move(rc.out_dir, old)
            log(f"[{name}] its config changed: the previous run moved to {old}")
        os.makedirs(rc.out_dir, exist_ok=True)
        json.dump({"hash": h}, open(stamp, "w"))
    distributed.barrier()
    resume = train.latest_rl_checkpoint(rc.out_dir) is not None
    summary = train.stage_rl(rc, tok, model, device, resume, log, **kw)
    if distributed.RANK == 0:
        json.dump({"hash": h, "summary": summary}, open(stamp, "w"), default=str)
    return model, summary

# -----------------------------------------------------------------------------
# The pipeline.

COLUMNS = ["pass@1", "length", "format", "language", "readable", "general_score", "general_helpful",
           "general_harmless", "rm_accuracy"]


def results_markdown(rows: dict, buckets: list[str], cfg: R1Config, extra: dict) -> str:
    cols = ["pass@1"] + [f"pass@1/{b}" for b in buckets] + COLUMNS[1:]
    general_note = (f"general: {cfg.eval_general} held-out prompts, hidden-rule score (helpful on the summary, "
                    f"harmless on the whole response)" if not cfg.init else
                    "general: no hidden rule for real prompts (empty columns); rm_accuracy on held-out pairs")
    title = "R1's stages from " + cfg.init if cfg.init else "R1's stages against R1-Zero"
    lines = [f"# {os.path.basename(cfg.out_dir)}: {title}", "",
             f"Held-out reasoning: {cfg.eval_problems} problems per bucket x k={cfg.eval_k} at temperature 0.6, "
             f"top-p 0.95; {general_note}. language = share of English words in the reasoning; readable = R1's filters.",
             "", "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join("" if r.get(c) is None else f"{r[c]:.3f}" for c in cols) + " |")
    lines += ["", "```json", json.dumps(extra, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def stages(cfg: R1Config, rc, w: dict, device, log, rows: dict, extra: dict) -> None:
    """Stages 1 to 4 in world w, each adding its row to the table."""
    tok, key = w["tok"], [dataclasses.asdict(cfg), w["key"]]
    row = lambda model: evaluate_row(model, tok, w["held"], w["general_held"], cfg, rc, w["hidden"])  # noqa: E731

    # 1. cold start: SFT of the base on readable long CoT
    def stage1():
        data = w["cold_start"]()
        extra["cold_start_examples"] = len(data)
        model = w["base"]()
        train.sft(model, distill.to_examples(data, tok), cfg.cold_start_steps, cfg.sft_batch_size, cfg.sft_lr,
                  tok.pad_id, seed=cfg.seed, log=log)
        return model
    cold = cached_sft("stage1", [key, "stage1"], stage1, tok, cfg, device, log)
    rows["1 cold start"] = row(cold)

    # 2. reasoning RL with language consistency
    rc2 = recipe(cfg, "stage2", rl_steps=cfg.stage2_steps)
    rl2, extra["stage2"] = rl_stage("stage2", rc2, tok, cold, device, log, key=key,
                                    score=reasoning_score(cfg.language_weight), problems=(w["pool"], w["held"]))
    rows["2 reasoning RL"] = row(rl2)

    # 3. rejection sampling from stage 2 + general data; SFT of the base for sft_epochs epochs
    def stage3():
        if cfg.init:  # r1-full: rs_problems of the training problems
            problems = random.Random(cfg.seed + 3).sample(w["pool"], min(cfg.rs_problems, len(w["pool"])))
        else:
            problems = tasks.make_problems(rc.task, cfg.rs_problems, split="train", seed=cfg.seed + 3,
                                           buckets=w["buckets"])
        kept, stats = rejection_sample(rl2, tok, problems, cfg.rs_k, cfg, rc)
        general_sft = w["general_sft"]()
        mix = kept + general_sft
        if not mix:
            raise SystemExit("error: stage 3 kept no reasoning sample and has no general example to fine-tune on")
        steps = max(1, -(-cfg.sft_epochs * len(mix) // cfg.sft_batch_size))
        log(f"[stage 3] kept {len(kept)} of {stats['samples']} samples (dropped {stats['dropped']}) + "
            f"{len(general_sft)} general examples; {steps} SFT steps ({cfg.sft_epochs} epochs)")
        extra["stage3"] = {"kept": len(kept), "samples": stats["samples"], "general": len(general_sft),
                           "sft_steps": steps}
        model = w["base"]()
        train.sft(model, distill.to_examples(mix, tok), steps, cfg.sft_batch_size, cfg.sft_lr, tok.pad_id,
                  seed=cfg.seed, log=log)
        return model
    s3 = cached_sft("stage3", [key, "stage3"], stage3, tok, cfg, device, log)
    rows["3 rejection sampling + SFT"] = row(s3)

    # 4. all-scenario RL: rule rewards for reasoning, a learned reward model for general prompts
    enc = lambda q, t: tok.encode(tasks.r1_zero_prompt(q) + t)  # noqa: E731
    train_pairs, held_pairs = ([(enc(q, c), enc(q, r)) for q, c, r in ps] for ps in w["pairs"]())
    rm = shard_reward_model(RewardModel(w["base"]()).to(device))
    train_reward_model(rm, train_pairs, cfg.rm_steps, cfg.sft_batch_size, cfg.rm_lr, tok.pad_id, seed=cfg.seed,
                       log=log, rank=distributed.RANK, world=distributed.WORLD)
    rm = full_reward_model(rm)  # ranks score their own rows during RL
    rm_acc = pair_accuracy(rm, held_pairs, tok.pad_id)
    log(f"[stage 4] reward model held-out pair accuracy {rm_acc:.3f} ({len(held_pairs)} pairs)")
    rc4 = recipe(cfg, "stage4", rl_steps=cfg.stage4_steps)
    rl4, extra["stage4"] = rl_stage(
        "stage4", rc4, tok, s3, device, log, key=key, problems=(w["pool"], w["held"]),
        score=all_scenario_score(rm, tok, cfg.language_weight, w["hidden"]),
        prompts=mixed_prompts(w["pool"], w["general_pool"], rc4.prompts_per_step, cfg.general_prompt_share, cfg.seed))
    rows["4 all-scenario RL"] = {**row(rl4), "rm_accuracy": rm_acc}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    preset, cfg = parse_args(argv)
    rc = recipe(cfg)
    data = load_files(cfg, rc) if cfg.init else None  # every line of every data file checked before any model
    device = distributed.dist_init(cfg.device)
    if distributed.WORLD > 1 and not cfg.init:
        raise SystemExit(f"error: torchrun runs r1-full (a real checkpoint); run --preset {preset} in one process")
    train.validate_world(rc)
    if cfg.sft_batch_size % distributed.WORLD:
        raise SystemExit(f"error: --sft_batch_size ({cfg.sft_batch_size}) must be divisible by the number of "
                         f"processes ({distributed.WORLD})")
    if distributed.RANK == 0:
        os.makedirs(cfg.out_dir, exist_ok=True)
    distributed.barrier()
    log = runlog.console_log(cfg.out_dir, distributed.RANK)

    t0 = time.time()
    if rc.threads:
        torch.set_num_threads(rc.threads)
    log(f"== {preset} on {device}" + (f" x {distributed.WORLD} ranks (FSDP)" if distributed.WORLD > 1 else "") +
        f" -> {cfg.out_dir} (" + (f"from {cfg.init}" if cfg.init else f"recipe {cfg.recipe}") + ")")
    rows, extra = {}, {"seconds": {}}
    try:
        w = file_world(cfg, rc, data, device, log, rows) if cfg.init else \
            synthetic_world(cfg, rc, device, log, rows, extra)
        stages(cfg, rc, w, device, log, rows, extra)
    except KeyboardInterrupt:
        log(f"\n== interrupted (Ctrl-C); finished stages are cached: rerun the same command to continue:\n"
            f"   {'torchrun ... ' if distributed.WORLD > 1 else 'python '}r1.py {' '.join(argv)}")
        raise SystemExit(130) from None
    extra["seconds"]["total"] = time.time() - t0
    if distributed.RANK == 0:
        md = results_markdown(rows, w["buckets"], cfg, extra)
        open(os.path.join(cfg.out_dir, "results.md"), "w").write(md)
        json.dump({"rows": rows, **extra}, open(os.path.join(cfg.out_dir, "results.json"), "w"), indent=1,
                  default=str)
        log(md)
        log(f"== done in {time.time() - t0:.0f}s: {os.path.join(cfg.out_dir, 'results.md')}")
    if distributed.WORLD > 1:
        torch.distributed.destroy_process_group()
    return {"rows": rows, **extra}


if __name__ == "__main__":
    main()
