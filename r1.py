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
    python r1.py --help                 # presets and every field

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

import cli
import distill
import general
import rewards
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
    # (mid-thought drift, drift_rate, was gone after R1-Zero's RL at 0.3 and 0.7)
    "r1-tiny-mixed": dict(recipe="zero-tiny", recipe_args={"pretrain_steps": 900, "rl_steps": 40}, ja_open_rate=0.5),
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
    need(not train.TRAIN_PRESETS[cfg.recipe].get("init"), f"--recipe={cfg.recipe} starts from a checkpoint; "
         "r1.py pretrains its own base (valid: smoke, zero-tiny, zero-small, ...)")
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
    return dataclasses.replace(rc, corpus_mix=mix, seed=cfg.seed, device=cfg.device, eval_k=cfg.eval_k,
                               eval_problems=cfg.eval_problems, out_dir=os.path.join(cfg.out_dir, stage), **over)

# -----------------------------------------------------------------------------
# Rewards of the RL stages: (texts, problems) -> one dict per response, as train.stage_rl takes them.


def reasoning_score(weight: float):
    """Stage 2: the rule reward plus weight x language consistency of the reasoning (rewards.score's term)."""
    def score(texts, problems):
        return [rewards.score(t, p, weights={"language": weight}) for t, p in zip(texts, problems)]
    return score


def all_scenario_score(rm: RewardModel, tok, weight: float):
    """Stage 4: reasoning prompts get stage 2's rule reward; general prompts get the reward model's score.
    Every row carries the same keys: "rm" and "hidden" (the hidden rule, never optimised) are NaN on reasoning
    rows, "accuracy" and "language" NaN on general ones, so step means are over the rows that have them."""
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
                        "rm": 0.0, "hidden": general.hidden_score(p, t)["score"]})
        for i, r in zip(general_rows, rm_scores):
            out[i]["reward"] = out[i]["rm"] = r
        return out
    return score


def mixed_prompts(reasoning_pool: list, general_pool: list, per_step: int, share: float, seed: int):
    """Stage 4's prompt source: step -> per_step problems, round(per_step * share) of them general."""
    n_general = round(per_step * share)

    def prompts(step):
        rng = random.Random(seed * 1_000_003 + step)
        return rng.sample(reasoning_pool, per_step - n_general) + rng.sample(general_pool, n_general)
    return prompts

# -----------------------------------------------------------------------------
# Data of the SFT stages.


def filters(cfg: R1Config, rc: train.TrainConfig) -> tuple[distill.DistillConfig, distill.TraceFilter]:
    """distill.py's sampler settings (T=1.0, top-p 0.95, the recipe's response cap) and its rejection-sampling
    filters (correct, well formed, not truncated, no loops), with one language required in the reasoning."""
    dc = distill.DistillConfig(temperature=1.0, max_new_tokens=rc.max_new_tokens, seed=cfg.seed, batch_size=256)
    return dc, dataclasses.replace(distill.trace_filter(dc), min_language=0.99, max_per_problem=2)


def cold_start_data(cfg: R1Config, rc, zero, tok, log) -> list[dict]:
    """Readable R1-Zero outputs on training problems, plus templated demonstrations (tasks.render_response in the
    long modes, all in English), cold_start_n in all: records with "prompt" and "completion"."""
    n_demo = round(cfg.cold_start_n * cfg.demo_share)
    pool = tasks.make_problems(rc.task, cfg.cold_start_n, split="train", seed=cfg.seed + 1,
                               buckets=rc.buckets.split(","))
    dc, f = filters(cfg, rc)
    kept, stats = distill.rejection_sample(pool, distill.teacher_sampler(zero, tok, dc), 2, cfg.seed, f)
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
# Evaluation: one row of the results table.


def readable(sample_: dict, max_repeat: float = 0.5, n: int = 4, min_language: float = 0.99) -> bool:
    """R1's readability filters, whatever the answer: well formed, not truncated, no loops, one language."""
    think = distill.reasoning_text(sample_["completion"])
    return (sample_["format"] == 1 and not sample_["truncated"] and distill.repeat_fraction(think, n) <= max_repeat
            and distill.language_share(think) >= min_language)


@torch.no_grad()
def evaluate_row(model, tok, held, general_held, cfg: R1Config, rc: train.TrainConfig) -> dict:
    """Held-out pass@1 per bucket, length, format, language consistency, readable share (reasoning prompts,
    k samples at T=0.6, top-p 0.95) and the hidden rule's score on general prompts (one sample each)."""
    model.eval()
    res = sample.evaluate(model, tok, held, k=cfg.eval_k, temperature=0.6, top_p=0.95,
                          max_new_tokens=rc.max_new_tokens, batch_size=256, seed=cfg.seed)
    s = res["samples"]
    row = {"pass@1": res["pass@1"], **{f"pass@1/{b}": r["pass@1"] for b, r in res["by_bucket"].items()},
           "length": res["length"], "format": res["format"],
           "language": sum(distill.language_share(distill.reasoning_text(x["completion"])) for x in s) / len(s),
           "readable": sum(readable(x) for x in s) / len(s)}
    _, _, texts = distill.sample_responses(model, tok, general_held, 1, 0.6, 0.95, rc.max_new_tokens, cfg.seed)
    hidden = [general.hidden_score(p, t) for p, t in zip(general_held, texts)]
    for key in ("score", "helpful", "harmless"):
        row[f"general_{key}"] = sum(h[key] for h in hidden) / len(hidden)
    return row

# -----------------------------------------------------------------------------
# Stage caching: an SFT stage's model is saved with the hash of what made it; an RL stage resumes in its dir.


def cached_sft(name: str, key, build, tok, cfg: R1Config, device, log):
    path = os.path.join(cfg.out_dir, name)
    stamp = os.path.join(path, "r1_stage.json")
    h = train.config_hash(key, code=("r1.py", "train.py", "tasks.py", "general.py", "distill.py", "sample.py"))
    if os.path.exists(stamp) and json.load(open(stamp)).get("hash") == h:
        log(f"[{name}] cached at {path}")
        return sample.load_checkpoint(path, device=device)[0].train()
    model = build()
    train.save_checkpoint(path, model, None, {"stage": name}, tok)
    json.dump({"hash": h}, open(stamp, "w"))
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
        return sample.load_checkpoint(done, device=device)[0].train(), json.load(open(stamp)).get("summary", {})
    if os.path.isdir(rc.out_dir) and not same:
        old = f"{rc.out_dir}.old_{time.strftime('%Y%m%d_%H%M%S')}"
        shutil.move(rc.out_dir, old)
        log(f"[{name}] its config changed: the previous run moved to {old}")
    os.makedirs(rc.out_dir, exist_ok=True)
    json.dump({"hash": h}, open(stamp, "w"))
    resume = train.latest_rl_checkpoint(rc.out_dir) is not None
    summary = train.stage_rl(rc, tok, model, device, resume, log, **kw)
    json.dump({"hash": h, "summary": summary}, open(stamp, "w"), default=str)
    return model, summary

# -----------------------------------------------------------------------------
# The pipeline.

COLUMNS = ["pass@1", "length", "format", "language", "readable", "general_score", "general_helpful",
           "general_harmless", "rm_accuracy"]


def results_markdown(rows: dict, buckets: list[str], cfg: R1Config, extra: dict) -> str:
    cols = ["pass@1"] + [f"pass@1/{b}" for b in buckets] + COLUMNS[1:]
    lines = [f"# {os.path.basename(cfg.out_dir)}: R1's stages against R1-Zero", "",
             f"Held-out reasoning: {cfg.eval_problems} problems per bucket x k={cfg.eval_k} at T=0.6, top-p 0.95; "
             f"general: {cfg.eval_general} held-out prompts, hidden-rule score (helpful on the summary, harmless on "
             f"the whole response). language = share of English words in the reasoning; readable = R1's filters.",
             "", "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join("" if r.get(c) is None else f"{r[c]:.3f}" for c in cols) + " |")
    lines += ["", "```json", json.dumps(extra, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    preset, cfg = parse_args(argv)
    device = train.dist_init(cfg.device)
    os.makedirs(cfg.out_dir, exist_ok=True)
    log_file = open(os.path.join(cfg.out_dir, "log.txt"), "a")

    def log(msg: str):
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    t0 = time.time()
    rc = recipe(cfg)
    if rc.threads:
        torch.set_num_threads(rc.threads)
    log(f"== {preset} on {device} -> {cfg.out_dir} (recipe {cfg.recipe})")
    buckets = rc.buckets.split(",")
    pool, held = train.load_problems(rc)
    general_pool = general.make_general(2000, "train", cfg.seed)
    general_held = general.make_general(cfg.eval_general, "test", cfg.seed)
    rows, extra = {}, {"seconds": {}}
    try:
        # 0. the base and R1-Zero
        tok = train.stage_tokenizer(rc, log)
        base = train.stage_pretrain(rc, tok, device, log)
        rows["base"] = evaluate_row(base, tok, held, general_held, cfg, rc)
        zero, extra["r1-zero"] = rl_stage("r1-zero", recipe(cfg, "r1-zero"), tok, copy.deepcopy(base), device, log,
                                          key="r1-zero")
        rows["R1-Zero"] = evaluate_row(zero, tok, held, general_held, cfg, rc)
        log(f"[r1-zero] language consistency of its reasoning {rows['R1-Zero']['language']:.3f}, readable "
            f"{rows['R1-Zero']['readable']:.3f}")
        extra["seconds"]["r1-zero"] = time.time() - t0

        # 1. cold start: SFT of the base on readable long CoT
        def stage1():
            data = cold_start_data(cfg, rc, zero, tok, log)
            extra["cold_start_examples"] = len(data)
            model = copy.deepcopy(base)
            train.sft(model, distill.to_examples(data, tok), cfg.cold_start_steps, cfg.sft_batch_size, cfg.sft_lr,
                      tok.pad_id, seed=cfg.seed, log=log)
            return model
        cold = cached_sft("stage1", [dataclasses.asdict(cfg), "stage1"], stage1, tok, cfg, device, log)
        rows["1 cold start"] = evaluate_row(cold, tok, held, general_held, cfg, rc)

        # 2. reasoning RL with language consistency
        rc2 = recipe(cfg, "stage2", rl_steps=cfg.stage2_steps)
        rl2, extra["stage2"] = rl_stage("stage2", rc2, tok, cold, device, log, key=dataclasses.asdict(cfg),
                                        score=reasoning_score(cfg.language_weight), problems=(pool, held))
        rows["2 reasoning RL"] = evaluate_row(rl2, tok, held, general_held, cfg, rc)

        # 3. rejection sampling from stage 2 + general data; SFT of the base for sft_epochs epochs
        def stage3():
            dc, f = filters(cfg, rc)
            problems = tasks.make_problems(rc.task, cfg.rs_problems, split="train", seed=cfg.seed + 3,
                                           buckets=buckets)
            kept, stats = distill.rejection_sample(problems, distill.teacher_sampler(rl2, tok, dc), cfg.rs_k,
                                                   cfg.seed, f)
            mix = kept + general_records(cfg.general_n, cfg.seed)
            steps = max(1, -(-cfg.sft_epochs * len(mix) // cfg.sft_batch_size))
            log(f"[stage 3] kept {len(kept)} of {stats['samples']} samples (dropped {stats['dropped']}) + "
                f"{cfg.general_n} general examples; {steps} SFT steps ({cfg.sft_epochs} epochs)")
            extra["stage3"] = {"kept": len(kept), "samples": stats["samples"], "general": cfg.general_n,
                               "sft_steps": steps}
            model = copy.deepcopy(base)
            train.sft(model, distill.to_examples(mix, tok), steps, cfg.sft_batch_size, cfg.sft_lr, tok.pad_id,
                      seed=cfg.seed, log=log)
            return model
        s3 = cached_sft("stage3", [dataclasses.asdict(cfg), "stage3"], stage3, tok, cfg, device, log)
        rows["3 rejection sampling + SFT"] = evaluate_row(s3, tok, held, general_held, cfg, rc)

        # 4. all-scenario RL: rule rewards for reasoning, a learned reward model for general prompts
        def pairs(split, n, seed):
            ps = general.preference_pairs(general.make_general(n, split, seed), random.Random(seed))
            enc = lambda p, t: tok.encode(tasks.r1_zero_prompt(p.question) + t)  # noqa: E731
            return [(enc(p, c), enc(p, r)) for p, c, r in ps]
        rm = RewardModel(copy.deepcopy(base)).to(device)
        train_reward_model(rm, pairs("train", cfg.rm_pairs, cfg.seed), cfg.rm_steps, cfg.sft_batch_size,
                           cfg.rm_lr, tok.pad_id, seed=cfg.seed, log=log)
        rm_acc = pair_accuracy(rm, pairs("test", max(64, cfg.eval_general), cfg.seed + 1), tok.pad_id)
        log(f"[stage 4] reward model held-out pair accuracy {rm_acc:.3f}")
        rc4 = recipe(cfg, "stage4", rl_steps=cfg.stage4_steps)
        rl4, extra["stage4"] = rl_stage(
            "stage4", rc4, tok, s3, device, log, key=dataclasses.asdict(cfg), problems=(pool, held),
            score=all_scenario_score(rm, tok, cfg.language_weight),
            prompts=mixed_prompts(pool, general_pool, rc4.prompts_per_step, cfg.general_prompt_share, cfg.seed))
        rows["4 all-scenario RL"] = {**evaluate_row(rl4, tok, held, general_held, cfg, rc), "rm_accuracy": rm_acc}
    except KeyboardInterrupt:
        log(f"\n== interrupted (Ctrl-C); finished stages are cached: rerun the same command to continue:\n"
            f"   python r1.py {' '.join(argv)}")
        raise SystemExit(130) from None
    extra["seconds"]["total"] = time.time() - t0
    md = results_markdown(rows, buckets, cfg, extra)
    open(os.path.join(cfg.out_dir, "results.md"), "w").write(md)
    json.dump({"rows": rows, **extra}, open(os.path.join(cfg.out_dir, "results.json"), "w"), indent=1, default=str)
    log(md)
    log(f"== done in {time.time() - t0:.0f}s: {os.path.join(cfg.out_dir, 'results.md')}")
    return {"rows": rows, **extra}


if __name__ == "__main__":
    main()
