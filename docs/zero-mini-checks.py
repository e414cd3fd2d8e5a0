"""Does zero-mini's check catch the model's own slips? Forced-mode samples of a finished run's base (or an RL
checkpoint) at one temperature, on the held-out problems of M, H and VH:

  1. forced L and forced LV accuracy per bucket (the issue's condition 3, here at any temperature: the rollout
     temperature 1.0 is what RL sees, 0.6 is the held-out protocol);
  2. every column of the forced-LV samples, '7 + 6 = 13 , check 13 - 6 = 7 ok', read back: how often the column
     fact is wrong (the model's own slip, not the corpus's), how often the verdict says "wrong" on a slip (caught)
     and on a right fact (a false alarm), and how often the fact rewritten after a "wrong" is right;
  3. where each wrong forced-L sample first leaves the right scratchpad: the part of the column it was writing
     (the digits still to add, the digits of the column, the fact, the carry added, the carry out, the digits so
     far, the closing "so the sum is", the answer, or the format);
  4. up to three forced-LV samples in which the model's own wrong fact was caught, rewritten and the answer right;
  5. the model's own choice (no forced mode, the held-out prompt as RL sees it): the share of each mode per bucket,
     how many samples chose LV, caught one of their own slips and ended right, and up to three of them.

Usage (from the repository root): python docs/zero-mini-checks.py RUN_DIR [base|final] [TEMPERATURE]
Prints three tables and the examples (markdown)."""
import collections
import json
import os
import re
import sys

sys.path.insert(0, ".")
import torch  # noqa: E402

import checkpoint  # noqa: E402
import runlog  # noqa: E402
import tasks  # noqa: E402
import train  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

# one checked column as LV writes it: fact, check, verdict (and after a "wrong" verdict, the rewritten fact)
COLUMN = re.compile(r"(\d) \+ (\d) = (\d+) , check (\d+) - (\d) = (-?\d+) (ok|, [^.]*\. (\d) \+ (\d) = (\d+))")


def read_columns(text: str) -> collections.Counter:
    """Counts of (fact right?, verdict) over the checked columns of one LV response, and of rewrites."""
    c = collections.Counter()
    for cx, cy, s, _, _, _, verdict, rx, ry, rs in COLUMN.findall(text):
        right = int(cx) + int(cy) == int(s)
        c[("right" if right else "slip", "ok" if verdict == "ok" else "wrong")] += 1
        if verdict != "ok":
            c["rewrite right"] += (rx, ry) == (cx, cy) and int(rs) == int(cx) + int(cy)
    return c


def l_parts(x: int, y: int, answer: str) -> list[tuple[str, str]]:
    """The right forced-L completion after its prefix, cut into (text, part) pieces; joined they equal
    tasks.add_line's scratchpad, then the closing line and the answer."""
    n = max(len(str(x)), len(str(y)))
    xs, ys = str(x).zfill(n), str(y).zfill(n)
    parts, carry, written = [], 0, ""
    for k in range(n):
        cx, cy = xs[-1 - k], ys[-1 - k]
        s = int(cx) + int(cy)
        parts += [(" ; ", "format"), (f"{xs[:n - k]} + {ys[:n - k]}", "digits to add"), (" : ", "format")] if k else \
            [(" ", "format")]
        parts += [(f"{cx} + {cy}", "column digits"), (" = ", "format"), (str(s), "fact")]
        if carry:
            parts += [(" + ", "format"), (str(carry), "carry added"), (" = ", "format"), (str(s + carry), "carry added")]
            s += carry
        carry = s // 10
        written = str(s % 10) + written
        parts += [(" carry ", "format"), (str(carry), "carry out"), (" -> ", "format"), (written, "digits so far")]
    if carry:
        written = str(carry) + written
        parts += [(" ; carry ", "format"), ("1", "carry out"), (" -> ", "format"), (written, "digits so far")]
    return parts + [("\nso the sum is ", "format"), (str(x + y), "so the sum is"),
                    (" </think> <answer> ", "format"), (answer, "answer"), (" </answer>", "format")]


def first_wrong(text: str, parts: list[tuple[str, str]]) -> str:
    """The part in which text (a completion after its prefix) first differs from the right one."""
    at = 0
    for piece, part in parts:
        if text[at:at + len(piece)] != piece:
            return part
        at += len(piece)
    return "after the answer"


def show(samples: list) -> None:
    """Print (problem, response) pairs as markdown: the question, its bucket and gold answer, the response."""
    for p, t in samples:
        print(f"\n**{p.question}** (bucket {p.bucket}, gold {p.answer})\n\n```\n{t}\n```")


def main(run: str, which: str = "base", temperature: float = 1.0) -> None:
    if which not in ("base", "final"):
        raise SystemExit(f"error: unknown checkpoint {which!r}; valid: base, final")
    for need in ("train_config.json", "tokenizer", "base"):
        if not os.path.exists(os.path.join(run, need)):
            raise SystemExit(f"error: {run} is not a zero-mini run directory (no {need}); give the --out_dir of "
                             f"python train.py --preset zero-mini")
    if which == "final" and not runlog.checkpoints(run):
        raise SystemExit(f"error: {run} has no RL checkpoint (rl/step_*); use base, or finish the run first")
    cfg = train.TrainConfig(**json.load(open(os.path.join(run, "train_config.json"))))
    torch.set_num_threads(cfg.threads or 1)
    tok = Tokenizer.load(os.path.join(run, "tokenizer"))
    path = os.path.join(run, "base") if which == "base" else runlog.checkpoints(run)[-1]
    model = checkpoint.load(path)[0].eval()
    held = [p for p in train.load_problems(cfg)[1] if p.bucket in ("M", "H", "VH")]
    lead = tasks.resolve_mix(cfg.corpus_mix or None)["operands_first"] > 0  # the layout the corpus taught
    top_p = 1.0 if temperature >= 1.0 else 0.95
    acc, cols, first, caught = {}, collections.Counter(), collections.Counter(), []
    for mode in ("L", "LV"):
        _, _, texts = train.rollout(model, tok, held, cfg, cfg.seed, temperature=temperature, group_size=cfg.eval_k,
                                    top_p=top_p, prefixes=[tasks.mode_prefix(p, mode, lead) for p in held])
        probs = [held[r // cfg.eval_k] for r in range(len(texts))]
        scores = train.rule_rewards(texts, probs)
        for b in ("M", "H", "VH"):
            rows = [i for i, p in enumerate(probs) if p.bucket == b]
            acc[(mode, b)] = sum(scores[i]["accuracy"] for i in rows) / len(rows)
        if mode == "LV":
            for t, p, s in zip(texts, probs, scores):
                c = read_columns(t)
                cols += c
                if c[("slip", "wrong")] and s["accuracy"] and len(caught) < 3:
                    caught.append((p, t))
        else:
            for t, p, s in zip(texts, probs, scores):
                if not s["accuracy"]:
                    prefix = tasks.mode_prefix(p, "L", lead)
                    first[first_wrong(t[len(prefix):] if t.startswith(prefix) else t,
                                      l_parts(*p.meta["numbers"], p.answer))] += 1
    print(f"{run} ({which}), temperature {temperature}, {len(held)} problems x {cfg.eval_k} samples\n")
    print("| forced mode | M | H | VH |\n|---|---|---|---|")
    for mode in ("L", "LV"):
        print(f"| {mode} | " + " | ".join(f"{acc[(mode, b)]:.2f}" for b in ("M", "H", "VH")) + " |")
    slips, right = cols[("slip", "ok")] + cols[("slip", "wrong")], cols[("right", "ok")] + cols[("right", "wrong")]
    print("\n| checked columns | own slips | caught | false alarms | rewrites right (after any 'wrong') |\n"
          "|---|---|---|---|---|")
    print(f"| {slips + right} | {slips} ({slips / max(1, slips + right):.1%}) | {cols[('slip', 'wrong')]} "
          f"({cols[('slip', 'wrong')] / max(1, slips):.0%}) | {cols[('right', 'wrong')]} "
          f"({cols[('right', 'wrong')] / max(1, right):.0%}) | {cols['rewrite right']} of "
          f"{cols[('slip', 'wrong')] + cols[('right', 'wrong')]} |")
    print(f"\n| wrong forced-L samples ({sum(first.values())}), first wrong part | count |\n|---|---|")
    for part, count in first.most_common():
        print(f"| {part} | {count} |")
    print(f"\nOwn slips caught and fixed, answer right ({len(caught)} shown):")
    show(caught)

    # 5. unforced: the mode the model picks itself, and the self-corrections it makes without being asked to check
    _, _, texts = train.rollout(model, tok, held, cfg, cfg.seed, temperature=temperature, group_size=cfg.eval_k,
                                top_p=top_p)
    probs = [held[r // cfg.eval_k] for r in range(len(texts))]
    scores = train.rule_rewards(texts, probs)
    modes = [tasks.response_mode(p, t) for p, t in zip(probs, texts)]
    own = [(p, t) for p, t, m, s in zip(probs, texts, modes, scores)
           if m == "LV" and s["accuracy"] and read_columns(t)[("slip", "wrong")]]
    print("\n| unforced, share of samples | M | H | VH |\n|---|---|---|---|")
    for mode in ("other", "L", "LV"):
        print(f"| {mode} | " + " | ".join(
            f"{sum(m == mode for m, p in zip(modes, probs) if p.bucket == b) / sum(p.bucket == b for p in probs):.2f}"
            for b in ("M", "H", "VH")) + " |")
    print(f"\nUnforced samples that chose LV, caught one of their own slips and ended right: {len(own)} of "
          f"{len(texts)} ({min(3, len(own))} shown):")
    show(own[:3])


if __name__ == "__main__":
    if not 2 <= len(sys.argv) <= 4:
        raise SystemExit(__doc__.split("\n\n")[-1].split("\n")[0])
    try:
        temperatures = [float(t) for t in sys.argv[3:4]]
    except ValueError:
        raise SystemExit(f"error: temperature must be a number > 0, e.g. 1.0; got {sys.argv[3]!r}") from None
    if temperatures and temperatures[0] <= 0:
        raise SystemExit(f"error: temperature must be a number > 0, e.g. 1.0; got {sys.argv[3]!r}")
    main(sys.argv[1], *(sys.argv[2:3]), *temperatures)
