"""runlog.py: the bookkeeping of an RL run, kept out of the training loop's way. Everything a run writes under
its out_dir except the checkpoints themselves:

    log.txt          every console line (written by the caller's log callable, to which every line here goes)
    metrics.jsonl    one JSON line per RL step ("kind": "train") and per evaluation ("kind": "eval")
    transcripts.md   full sampled responses every --transcript_every steps (read the "aha" here)
    plots.png        the paper's figures in miniature: accuracy and length vs step, plus the diagnostics
    summary.json     the first and last evaluation
    old_run_N/       a previous run moved aside by --overwrite (which deletes nothing)

and the optional mirror of metrics.jsonl to Weights & Biases. The one deletion is prune_checkpoints: the loop
keeps the newest RL checkpoints only. Only rank 0 writes; on other ranks every method
is a no-op, so the loop calls them unconditionally.

Simplifications:
 1. Metrics are flat dicts of floats; a resumed run truncates metrics.jsonl to the checkpoint's step and logs
    the replayed steps again (they are identical: sampling is seeded by step).
 2. Plots are redrawn from the whole history at an evaluation (at most every 30 s) and at the end.
 3. Step metrics are means over the step's responses of whatever numbers the reward function returned, so a
    stage with another reward (a learned reward model, a language term) gets its columns without code here.

Use (what train.stage_rl does):
    run = RunLog(out_dir, log, rank)            # log: a callable printing and appending to log.txt
    run.open_metrics(resumed_step)              # 0 for a fresh run
    run.train_step(step, rows, diag, seconds, expert_imbalance(model))   # rows: one dict per response
    run.eval_step(step, metrics, seconds); run.transcripts(step, problems, texts, scores, group_size)
    summary = run.finish()

Shapes: E experts (expert_imbalance reads one (E,) load vector per MoE layer); no other tensors.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import time

import torch

import tasks

REFLECTIVE_WORDS = ["wait", "mistake", "however", "but", "retry", "error", "verify", "wrong", "evaluate", "check"]
RUN_FILES = ("rl", "metrics.jsonl", "transcripts.md", "plots.png", "summary.json", "train_config.json", "log.txt")


class RunLog:
    """metrics.jsonl, console lines, transcripts, plots, summary and wandb for one RL run (rank 0 writes)."""

    def __init__(self, out_dir: str, log=print, rank: int = 0, wandb_project: str = "", config: dict | None = None):
        self.out_dir, self.log, self.active = out_dir, log, rank == 0
        self.history: list[dict] = []
        self.plotted = (-1, 0.0)  # (len(history), time) when plots.png was last drawn
        self.metrics_path = os.path.join(out_dir, "metrics.jsonl")
        self.wandb = None
        if wandb_project and self.active:
            import wandb
            self.wandb = wandb.init(project=wandb_project, config=config or {}, resume="allow")

    def open_metrics(self, resumed_step: int) -> None:
        """A fresh run (resumed_step 0) starts empty files; a resumed one keeps what was logged up to its
        checkpoint and drops the rest (those steps run again, identically)."""
        if not self.active:
            return
        if resumed_step and os.path.exists(self.metrics_path):
            self.history = [json.loads(line) for line in open(self.metrics_path)]
            self.history = [h for h in self.history if h["step"] <= resumed_step]
        if not resumed_step:
            open(os.path.join(self.out_dir, "transcripts.md"), "w").close()
        with open(self.metrics_path, "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in self.history)

    def record(self, entry: dict) -> None:
        if not self.active:
            return
        self.history.append(entry)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        if self.wandb is not None:
            self.wandb.log({f"{entry['kind']}/{k}": v for k, v in entry.items() if isinstance(v, (int, float))},
                           step=entry["step"])

    def train_step(self, step: int, rows: list[dict], diag: dict, seconds: float,
                   imbalance: float = float("nan")) -> dict:
        """Record one RL step from per-response rows (one dict each: bucket, text, reward, ...), grpo.rl_step's
        diagnostics and the MoE load imbalance (expert_imbalance(model); nan for dense models); print its line."""
        if not self.active:
            return {}
        m = {"kind": "train", "step": step, **step_metrics(rows), **diag, "expert_imbalance": imbalance,
             "seconds": seconds}
        self.record(m)
        parts = [f"reward {m['reward']:.3f}"] + [f"{short} {m[k]:.3f}" for k, short in
                                                  (("accuracy", "acc"), ("format", "fmt")) if k in m]
        self.log(f"[rl] step {step:4d} " + " ".join(parts) + f" len {m['length']:.1f} refl {m['reflection']:.2f} "
                 f"ent {diag.get('entropy', float('nan')):.2f} ({seconds:.1f}s, "
                 f"sampling {diag.get('sample_seconds', 0):.1f}s)")
        return m

    def eval_step(self, step: int, metrics: dict, seconds: float) -> None:
        if not self.active:
            return
        self.record({"kind": "eval", "step": step, **metrics})
        self.log(f"[eval] step {step} " + fmt_metrics(metrics) + f" ({seconds:.0f}s)")
        self.plot(every_seconds=30)  # a few seconds per drawing: not more often than every 30 s

    def transcripts(self, step: int, problems, texts, scores, group_size: int, per_step: int = 3) -> None:
        """The first response of the first per_step groups, in full, appended to transcripts.md."""
        if not self.active:
            return
        with open(os.path.join(self.out_dir, "transcripts.md"), "a") as f:
            f.write(f"\n## step {step}\n")
            for i in range(0, min(len(texts), per_step * group_size), group_size):
                p = problems[i // group_size]
                f.write(f"\n**{p.question}** (bucket {p.bucket}, gold {p.answer}, reward {scores[i]['reward']:.2f})"
                        f"\n\n```\n{texts[i]}\n```\n")

    def plot(self, every_seconds: float = 0) -> None:
        """Redraw plots.png if there is something new and at least every_seconds passed since the last time."""
        if self.active and self.plotted[0] != len(self.history) and time.time() - self.plotted[1] >= every_seconds:
            plot(self.history, os.path.join(self.out_dir, "plots.png"))
            self.plotted = (len(self.history), time.time())

    def finish(self) -> dict:
        """Final plots and summary.json; returns {"first": first eval, "last": last eval} ({} on other ranks)."""
        if not self.active:
            return {}
        self.plot()
        evals = [h for h in self.history if h["kind"] == "eval"]
        summary = {"first": evals[0], "last": evals[-1]} if evals else {}
        with open(os.path.join(self.out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        if self.wandb is not None:
            self.wandb.finish()
        return summary

# -----------------------------------------------------------------------------
# Metrics of the sampled responses.

def reflection_rate(texts: list[str]) -> float:
    """Reflective words (the R1 paper's list) per 100 words of response, over the whole batch."""
    words = [w for t in texts for w in re.findall(r"[a-z]+", t.lower())]
    hits = sum(1 for w in words if w in REFLECTIVE_WORDS)
    return 100.0 * hits / max(1, len(words))


def step_metrics(rows: list[dict]) -> dict:
    """Training-rollout metrics from per-response records {bucket, text, length, truncated, long, reward, and
    any other numbers the reward function returned (accuracy, format, ...), long and lv (None without modes)}:
    their means overall, per bucket the means of length, accuracy and the long- and verify-mode shares, and the
    mean lengths of correct and wrong answers separately."""
    def mean(xs):  # over the rows where a number is defined (a reward may leave some NaN, e.g. R1's stage 4)
        xs = [x for x in xs if x == x]
        return sum(xs) / len(xs) if xs else float("nan")
    numbers = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
               and k not in ("long", "lv")] if rows else []
    m = {k: mean([r[k] for r in rows]) for k in numbers}
    if "accuracy" in m:
        m["length_correct"] = mean([r["length"] for r in rows if r["accuracy"] > 0])
        m["length_wrong"] = mean([r["length"] for r in rows if r["accuracy"] == 0])
    m["reflection"] = reflection_rate([r["text"] for r in rows])
    for b in sorted({r["bucket"] for r in rows}):
        in_bucket = [r for r in rows if r["bucket"] == b]
        m[f"length/{b}"] = mean([r["length"] for r in in_bucket])
        if "accuracy" in m:
            m[f"accuracy/{b}"] = mean([r["accuracy"] for r in in_bucket])
        m[f"long/{b}"] = mean([r["long"] for r in in_bucket if r.get("long") is not None])
        m[f"lv/{b}"] = mean([r["lv"] for r in in_bucket if r.get("lv") is not None])
    return m


def long_mode(problem, text: str) -> float | None:
    """1.0 if the response opens the long step-by-step mode of the corpus (L or LV, see tasks.response_mode),
    else 0.0; None for tasks without one (real problem files)."""
    mode = tasks.response_mode(problem, text)
    return None if mode is None else float(mode in ("L", "LV"))


def verify_mode(problem, text: str) -> float | None:
    """1.0 if the response is a long scratchpad that checks itself (mode LV), else 0.0; None without modes."""
    mode = tasks.response_mode(problem, text)
    return None if mode is None else float(mode == "LV")


def expert_imbalance(model) -> float:
    """Max over MoE layers of (max expert load / mean load); 1.0 is perfect balance, nan for dense models."""
    loads = model.expert_load() if hasattr(model, "expert_load") else None  # {layer: (E,)} load fractions
    if not loads:
        return float("nan")
    vals = loads.values() if isinstance(loads, dict) else [loads]
    worst = [float(v.max() / v.mean().clamp_min(1e-9))
             for v in vals if torch.is_tensor(v) and v.numel() and v.sum() > 0]
    return max(worst) if worst else float("nan")


def fmt_metrics(m: dict) -> str:
    """An evaluation's float metrics on one console line (per-bucket length and cons@k left to metrics.jsonl)."""
    keys = [k for k in m if not k.startswith(("length/", "cons@k/"))]
    return " ".join(f"{k} {m[k]:.3f}" for k in keys if isinstance(m[k], float))

# -----------------------------------------------------------------------------
# The run directory: what counts as an existing run, moving one aside, what to run after a stop, pruning.

def checkpoints(out_dir: str) -> list[str]:
    """The RL checkpoint directories under out_dir/rl, oldest first."""
    d = os.path.join(out_dir, "rl")
    steps = sorted(x for x in os.listdir(d) if re.fullmatch(r"step_\d+", x)) if os.path.isdir(d) else []
    return [os.path.join(d, s) for s in steps]


def existing_run(out_dir: str) -> str:
    """'' when out_dir holds no RL run; else a description of what it holds (for the error message)."""
    ckpts = checkpoints(out_dir)
    metrics = os.path.join(out_dir, "metrics.jsonl")
    lines = sum(1 for _ in open(metrics)) if os.path.exists(metrics) else 0
    if ckpts:
        return f"a run (last checkpoint {ckpts[-1]})"
    return f"a run with no checkpoint yet ({lines} lines in {metrics})" if lines else ""


def move_aside(out_dir: str) -> str:
    """Move a previous run's files (RUN_FILES) into out_dir/old_run_N and return that path; cached stages
    (tokenizer/, base/) stay where they are, to be reused. Nothing is deleted."""
    n = 1
    while os.path.exists(os.path.join(out_dir, f"old_run_{n}")):
        n += 1
    dest = os.path.join(out_dir, f"old_run_{n}")
    os.makedirs(dest)
    for name in RUN_FILES:
        if os.path.exists(os.path.join(out_dir, name)):
            os.replace(os.path.join(out_dir, name), os.path.join(dest, name))
    return dest


def check_out_dir(out_dir: str, resume: bool, overwrite: bool) -> bool:
    """Never lose a run: an existing RL run in out_dir needs --resume (continue it) or --overwrite (move it aside
    to out_dir/old_run_N; nothing is deleted), and --resume needs a checkpoint. One-line errors otherwise.
    Returns True when the caller should move_aside (cached stages are reused either way)."""
    held, ckpts = existing_run(out_dir), checkpoints(out_dir)
    if resume and not ckpts:
        raise SystemExit(f"error: --resume: no RL checkpoint under {out_dir}/rl to resume from; " +
                         (f"it holds {held}: start over with --overwrite" if held else "run without --resume"))
    if held and not (resume or overwrite):
        raise SystemExit(f"error: {out_dir} already holds {held}: " + ("continue it with --resume, or " if ckpts
                         else "") + "start over with --overwrite (moves it to old_run_N there, deletes nothing)")
    return bool(held) and overwrite


def console_log(out_dir: str, rank: int = 0):
    """The log function of an entry point: rank 0 prints each line and appends it to OUT_DIR/log.txt (file_only:
    log.txt alone); other ranks stay silent."""
    log_file = open(os.path.join(out_dir, "log.txt"), "a") if rank == 0 else None

    def log(msg: str, file_only: bool = False):
        if rank == 0:
            if not file_only:
                print(msg, flush=True)
            log_file.write(msg + "\n")
            log_file.flush()
    return log


def next_step(out_dir: str, argv: list[str], world: int = 1) -> str:
    """What to run after a stop (Ctrl-C, --halt_after), promising only what exists on disk: the same command
    with --resume if there is a checkpoint, with --overwrite if a run without one is in the way, else as is."""
    launcher = f"torchrun --nproc_per_node {world} train.py" if world > 1 else "python train.py"
    args, skip = [], False
    for a in argv:  # without --resume/--overwrite, and without --halt_after (it would stop again)
        name = a.split("=")[0].replace("-", "_")
        if not skip and name not in ("__resume", "__overwrite", "__halt_after"):
            args.append(a)
        skip = name == "__halt_after" and "=" not in a
    command = f"{launcher} {' '.join(shlex.quote(a) for a in args)}"
    if checkpoints(out_dir):
        return f"resume from {checkpoints(out_dir)[-1]} with:\n   {command} --resume"
    if existing_run(out_dir):
        return f"no RL checkpoint was written yet; start over with:\n   {command} --overwrite"
    partial = os.path.join(out_dir, "base.partial")
    return ("no RL checkpoint yet; rerun the same command" +
            (f" (pretraining continues from {partial})" if os.path.exists(partial) else "") + f":\n   {command}")


def prune_checkpoints(out_dir: str, keep: int) -> None:
    """Delete all RL checkpoints but the newest keep (keep >= 1; keep=0 would keep them all)."""
    for old in checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)

# -----------------------------------------------------------------------------
# Plots: the paper's figures in miniature (accuracy and length vs step), plus the diagnostics.

def plot(history: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tr = [h for h in history if h["kind"] == "train"]
    ev = [h for h in history if h["kind"] == "eval"]
    fig, axes = plt.subplots(2, 4, figsize=(20, 8))

    def series(ax, rows, keys, title):
        for k in keys:
            pts = [(h["step"], h[k]) for h in rows if k in h and h[k] == h[k]]
            if pts:
                ax.plot(*zip(*pts), marker="o" if rows is ev else None, ms=3, label=k)
        ax.set_title(title); ax.set_xlabel("RL step"); ax.grid(alpha=.3)
        if ax.lines:
            ax.legend(fontsize=7)
    buckets = sorted({k.split("/")[1] for h in ev for k in h if k.startswith("pass@1/")})
    series(axes[0, 0], ev, ["pass@1", "cons@k"] + [f"pass@1/{b}" for b in buckets],
           "held-out accuracy (temperature 0.6)")
    series(axes[0, 1], tr, ["length", "length_correct", "length_wrong"], "response length (tokens)")
    series(axes[0, 2], tr, [f"length/{b}" for b in buckets], "response length by bucket")
    series(axes[0, 3], tr, ["format", "accuracy", "truncated"] + [f"long/{b}" for b in buckets]
           + [f"lv/{b}" for b in buckets], "train rollouts (long / lv = long / verifying mode share)")
    series(axes[1, 0], tr, ["reflection"], "reflective words per 100 words")
    series(axes[1, 1], tr, ["entropy"], "policy entropy (nats/token)")
    series(axes[1, 2], tr, ["kl", "clip_frac_low", "clip_frac_high"], "KL to reference / clipped fraction")
    series(axes[1, 3], tr, ["expert_imbalance"], "expert load (max/mean)")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)
