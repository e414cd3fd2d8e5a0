"""
tasks.py: verifiable problems, prompt templates, and the synthetic pretraining corpus.

What is here:
  - Problem records and synthetic tasks, deterministic from a seed, with difficulty buckets:
      multiplication  E: (1-2 digit) x 1 digit, M: 2x2 and 3x1, H: 3x2 and 4x1, VH: 4x2
      addition        two numbers; E: 1+1 digits, M: 2+2, H: 3+3, VH: 4+4 (the zero-mini and
                      zero-small task: the long mode takes one column per digit)
      countdown       E: 3 numbers, M: 4 numbers, H (and VH): 5 numbers; answer = an equation
      count           how many of a list of distinct letters lie in a..m; E: 3-5 letters, M: 6-9,
                      H: 10-14, VH: 15-20 (zero-tiny's task: what a CPU-trained 1.5M model can learn)
    Train and test never overlap: a problem's split is a hash of its canonical key (the unordered
    operand pair, the number list and target), ~10% test.
  - R1_ZERO_TEMPLATE (DeepSeek-R1 paper, Table 1, verbatim) and a chat template for instruct models.
  - Loaders for GSM8K / MATH / AIME-style / generic JSONL files, format auto-detected (errors name file:line).
  - corpus_stream(seed, mix): the synthetic pretraining corpus for from-scratch models. RL can only
    amplify behaviour pretraining put within reach, so the corpus holds, like web text, worked
    problems in several styles without ever saying which style pays where:
      drill     skill drills outside any template: times tables, one-digit x many-digit products
                with explicit carries, column additions (some checked column by column), one-digit sums
                and differences, two-digit + one-digit sums answered directly, digit-sum (casting out nines)
                checks of products; for count, running-count walks and counting up;
      textbook  "Problem: ... Solution: ... Answer: ..." worked examples in modes D/S/L/LV;
      dialogue  the exact R1-Zero template + " <think> ... </think> <answer> N </answer>", the mode
                drawn independently of difficulty (mostly D/S, a minority L/LV), ~30% with format
                defects, so format-following has room to improve;
      filler    prose using "wait", "check", "however" in non-reflective senses.
    Response modes (render_response): D direct answer ("347 * 28 = 9716"); S short decomposition
    ("split 28 = 20 + 8 : ..."); L long digit-by-digit scratchpad (least-significant digit first,
    one explicit carry per step, each step opened by the digits still to do and closed by the
    digits written so far, so every step reads only the last ~20 tokens; then column additions of
    zero-padded partial products, same layout); LV = L plus casting-out-nines checks of every
    partial product where a third of traces inject a slip, then "wait, that's wrong", then the
    redone step. For addition: D '4736 + 2819 = 7555'; S 'split 2819 = 2810 + 9 : ...'; L one column per
    digit, same layout ('add 4736 + 2819 : 6 + 9 = 15 carry 1 -> 5 ; 473 + 281 : ...'); LV opens 'add and
    check' and checks every column fact right after it by the inverse operation ('6 + 9 = 15 , check 15 - 9
    = 6 ok': another route, from numbers written a few tokens before); a third of traces inject a wrong
    fact, whose check fails and says "wait, that's wrong" before the right fact. The wrong facts are marked
    (corpus_docs reports their spans); with the mix key mask_slips each column slips (at slip_rate) and
    pretraining leaves the wrong facts out of the loss: the model reads slips without learning to make them.
    With the mix key operands_first, L and LV open with the operands and then their head ('4736 + 2819 by
    columns : ...', '... by columns and check : ...'), as D opens '4736 + 2819 =' (see heads).
    For count: D "count : 4"; S "matches c a e m so 4"; L "step a yes 1 b no 1 ... m no 4 so 4" (one look-up
    per letter of a..m with a running count: no copying of the list, which a tiny model trained for minutes
    does not learn); LV = L with a possible slip + "wait, that's wrong" and a check. With the corpus-trained
    tokenizer a 4x2 product takes ~28 tokens in D, ~375 in L, ~750 in LV; the R1-Zero prompt is ~90.
    The corpus never shows a test problem: not as a question, nor worked out inside a train
    problem's solution (sub-products such as 347 * 8 inside 347 * 28), nor in a drill.
    Every corpus document ends with "<|eos|>" (the tokenizer's eos string), so the trainer only
    concatenates documents and a model learns to stop after </answer>.

Simplifications vs the paper / production data pipelines:
  1. Synthetic arithmetic, Countdown and counting only; real data (GSM8K, MATH) only through the loaders.
  2. The corpus mix is sampled per document (not per token); corpus_stats reports both shares.
  3. Train/test split by a 10% hash of the canonical key; no near-duplicate detection.
  4. The chat template is one user message (DeepSeek's recommended math prompt), no system prompt.
  5. Times-table facts (both factors < 10) and one-digit sums are skills every mode uses, so they are
     exempt from the split: addition's E bucket (one-digit sums) measures recall of a drilled fact, not
     generalisation. Countdown searches may multiply two small numbers that happen to be a test problem.

No tensors here: problems and text only.

Use:
    from tasks import make_problems, r1_zero_prompt, corpus_stream, corpus_stats, render_response
    probs = make_problems("multiplication", 100, split="test", seed=0, buckets=["H"])
    prompt = r1_zero_prompt(probs[0].question)
    docs = corpus_stream(seed=0)                 # infinite iterator of str
    print(corpus_stats(seed=0, n_docs=2000))     # composition of the mix
"""

import itertools
import json
import random
import re
import time
import zlib
from dataclasses import dataclass, field
from typing import Iterator

EOS = "<|eos|>"

R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>. User: {question}. Assistant:"
)
# Chat template (for instruct / R1-distill models): DeepSeek's recommended math instruction, one user turn.
CHAT_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."

BUCKETS = {
    "multiplication": ["E", "M", "H", "VH"],
    "addition": ["E", "M", "H", "VH"],
    "countdown": ["E", "M", "H"],
    "count": ["E", "M", "H", "VH"],
    "max": ["E", "M", "H"],
}
# multiplication shapes (digits of a, digits of b) per bucket
MUL_SHAPES = {"E": [(1, 1), (2, 1)], "M": [(2, 2), (3, 1)], "H": [(3, 2), (4, 1)], "VH": [(4, 2)]}
# addition: two numbers, (digits of x, digits of y) per bucket. The long scratchpad takes one column per digit, so
# its length grows with the bucket; a one-shot answer must carry through every column at once. E is one-digit
# sums only: a fact the direct answer knows, so thinking cannot pay there.
ADD_SHAPES = {"E": [(1, 1)], "M": [(2, 2)], "H": [(3, 3)], "VH": [(4, 4)]}
COUNTDOWN_SIZES = {"E": 3, "M": 4, "H": 5, "VH": 5}
# count: how many of a list of distinct letters lie in the first half of the alphabet (a to m); list lengths per
# bucket. Counting in one shot gets hard as lists grow; a running count does not (copy the next letter, one
# 26-entry fact, one successor): a CPU-sized stand-in for "thinking pays on hard problems" that a tiny model
# learns in minutes (the zero-tiny preset). Letters are distinct so that copying the next one is unambiguous.
COUNT_LENGTHS = {"E": (3, 5), "M": (6, 9), "H": (10, 14), "VH": (15, 20)}
LETTERS = "abcdefghijklmnopqrstuvwxyz"
COUNT_CLASS = set("abcdefghijklm")
# max: which of a list of distinct numbers (1-99) is largest; list lengths per bucket. The reference solution of
# docs/assignments.md exercise 6 (a new task): a generator, its buckets and its canonical key, nothing else.
MAX_SIZES = {"E": 3, "M": 6, "H": 10}
TEST_PERCENT = 10


@dataclass
class Problem:
    question: str
    answer: str
    task: str
    bucket: str
    meta: dict = field(default_factory=dict)


def r1_zero_prompt(question: str) -> str:
    return R1_ZERO_TEMPLATE.replace("{question}", question)


def chat_messages(question: str) -> list[dict]:
    """One user turn for chat models; render with Tokenizer.chat_prompt(messages)."""
    return [{"role": "user", "content": CHAT_TEMPLATE.format(question=question)}]


# ----------------------------------------------------------------------------------------------
# synthetic tasks


def split_of(task: str, key) -> str:
    """'test' for ~10% of canonical keys (stable hash), else 'train'."""
    return "test" if zlib.crc32(f"{task}:{key}".encode()) % 100 < TEST_PERCENT else "train"


def _rand_digits(rng: random.Random, n: int, lo1: int = 1) -> int:
    """A uniform n-digit number (1-digit numbers from lo1..9)."""
    return rng.randint(lo1, 9) if n == 1 else rng.randint(10 ** (n - 1), 10 ** n - 1)


def _mul_problem(rng, bucket) -> Problem:
    da, db = rng.choice(MUL_SHAPES[bucket])
    a, b = _rand_digits(rng, da, 2), _rand_digits(rng, db, 2)
    return Problem(f"Compute {a} * {b}", str(a * b), "multiplication", bucket, {"a": a, "b": b})


def _add_problem(rng, bucket) -> Problem:
    xs = [_rand_digits(rng, d) for d in rng.choice(ADD_SHAPES[bucket])]
    return Problem("Compute " + " + ".join(map(str, xs)), str(sum(xs)), "addition", bucket, {"numbers": xs})


def _countdown_problem(rng, bucket) -> Problem:
    """Draw numbers, fold them left with random valid ops; the fold is one solution."""
    k = COUNTDOWN_SIZES[bucket]
    while True:
        nums = [rng.randint(1, 25) for _ in range(k - 1)] + [rng.choice([rng.randint(1, 25), 25, 50, 75, 100])]
        rng.shuffle(nums)
        val, expr, last_op, steps = nums[0], str(nums[0]), None, []
        for n in nums[1:]:
            ops = ["+", "*"] + (["-"] if val - n > 0 else []) + (["/"] if val % n == 0 and n > 1 else [])
            op = rng.choice(ops)
            new = {"+": val + n, "-": val - n, "*": val * n, "/": val // n}[op]
            steps.append((val, op, n, new))
            if op in "*/" and last_op in ("+", "-"):
                expr = f"({expr})"
            expr, val, last_op = f"{expr} {op} {n}", new, op
        if 1 <= val <= 999 and val not in nums:
            q = (f"Using the numbers {', '.join(map(str, nums))}, write an equation that equals {val}; "
                 f"use + - * / and each number exactly once")
            return Problem(q, expr, "countdown", bucket, {"numbers": nums, "target": val, "steps": steps})


def _count_problem(rng, bucket) -> Problem:
    letters = rng.sample(LETTERS, rng.randint(*COUNT_LENGTHS[bucket]))
    q = f"Count the letters from a to m in: {' '.join(letters)}"
    return Problem(q, str(sum(x in COUNT_CLASS for x in letters)), "count", bucket, {"letters": letters})


def _max_problem(rng, bucket) -> Problem:
    xs = rng.sample(range(1, 100), MAX_SIZES[bucket])
    return Problem("Which is the largest of: " + " ".join(map(str, xs)), str(max(xs)), "max", bucket, {"numbers": xs})


def _canonical_key(p: Problem):
    if p.task == "count":
        return "".join(p.meta["letters"])
    if p.task == "multiplication":
        return tuple(sorted((p.meta["a"], p.meta["b"])))
    if p.task in ("addition", "max"):
        return tuple(sorted(p.meta["numbers"]))
    return (tuple(sorted(p.meta["numbers"])), p.meta["target"])


_MAKERS = {"multiplication": _mul_problem, "addition": _add_problem, "countdown": _countdown_problem,
           "count": _count_problem, "max": _max_problem}


def make_problems(task: str, n: int, split: str = "train", seed: int = 0, buckets=None) -> list[Problem]:
    """n problems of one task from the given split, spread evenly over the buckets (in order)."""
    if task not in _MAKERS:
        raise ValueError(f"unknown task {task!r}; valid: {sorted(_MAKERS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    buckets = list(buckets or BUCKETS[task])
    for b in buckets:
        if b not in BUCKETS[task]:
            raise ValueError(f"unknown bucket {b!r} for {task}; valid: {BUCKETS[task]}")
    rng = random.Random(f"{seed}:{task}:{split}")
    out, seen = [], set()
    for i in range(n):
        for attempt in range(200):  # prefer unseen problems; tiny buckets may need repeats
            p = _MAKERS[task](rng, buckets[i % len(buckets)])
            key = _canonical_key(p)
            if split_of(task, key) == split and (key not in seen or attempt >= 100):
                break
        else:
            raise RuntimeError(f"could not draw a {split} problem for {task}/{buckets[i % len(buckets)]}")
        seen.add(key)
        out.append(p)
    return out


# ----------------------------------------------------------------------------------------------
# response modes: D direct, S short decomposition, L long scratchpad, LV long + verification


def mul_line(a: int, m: int, slip_step: int = -1, slip: int = 0) -> tuple[str, int]:
    """a * m where m is one digit times 10^j: least-significant digit of a first, one explicit carry
    per step, and the digits written so far restated after each step (starting from m's j zeros).
    Each step after the first opens with the digits of a still to do ("473 :"), so the digit to use
    is the last one just written: every step reads only the last ~20 tokens (no counting back).
    Step slip_step uses a wrong times-table fact (off by slip), for the injected-slip traces."""
    d, zeros, sa = int(str(m)[0]), len(str(m)) - 1, str(a)
    steps, carry, written = [], 0, "0" * zeros
    for k in range(len(sa)):
        x = int(sa[-1 - k])
        prod = x * d + (slip if k == slip_step else 0)
        s = f"{sa[:len(sa) - k]} : {x} * {d} = {prod}" if k else f"{x} * {d} = {prod}"
        total = prod + carry
        if carry:
            s += f" + {carry} = {total}"
        carry = total // 10
        written = str(total % 10) + written
        steps.append(f"{s} carry {carry} -> {written}")
    if carry:
        written = str(carry) + written
        steps.append(f"carry {carry} -> {written}")
    return f"{a} * {m} : " + " ; ".join(steps), int(written)


SLIP_MARKS = ("\x0e", "\x0f")  # enclose an injected wrong fact while a corpus document is built (see unmark)


def unmark(text: str) -> tuple[str, list[tuple[int, int]]]:
    """The text without slip marks, and the (start, end) character spans the marks enclosed: the injected wrong
    facts, which pretraining leaves out of the loss (mix key mask_slips), so a model learns to catch a slip
    without learning to make one."""
    out, spans, pos, length = [], [], 0, 0
    for m in re.finditer(f"{SLIP_MARKS[0]}([^{SLIP_MARKS[1]}]*){SLIP_MARKS[1]}", text):
        out += [text[pos:m.start()], m.group(1)]
        length += m.start() - pos
        spans.append((length, length + len(m.group(1))))
        length, pos = spans[-1][1], m.end()
    out.append(text[pos:])
    return "".join(out), spans


def add_line(x: int, y: int, slips: dict[int, int] | None = None, head: str = "add",
             check: bool = False, learned: frozenset = frozenset(), lead: bool = False) -> tuple[str, int]:
    """x + y by columns on zero-padded numbers of equal length, carry per column, digits so far;
    like mul_line, each column opens with the digits still to add ("0284 + 2369 :"), so the digits to use
    are the last ones just written. slips maps a column to an amount its sum is off by (a wrong fact); the
    wrong sum is enclosed in SLIP_MARKS. Without a check the slip propagates like a real one.
    check=True (the LV mode) checks every column fact right after it by the inverse operation, from the
    numbers written just before: '7 + 6 = 13 , check 13 - 6 = 7 ok'. A slipped fact fails its check, which
    says so and writes the fact again: '7 + 6 = 14 , check 14 - 6 = 8 , wait, that's wrong . 7 + 6 = 13'
    (the verdict compares the difference with the digit the column added, so it catches a slip the model
    makes itself). head opens the line ("add", "add and check"). The slips of the columns in learned are left
    unmarked: they stay in the pretraining loss, so the model learns to make them (see column_slips).
    lead=True writes the operands before the head ("4736 + 2819 by columns : ..."; see heads)."""
    n, slips = max(len(str(x)), len(str(y))), slips or {}
    xs, ys = str(x).zfill(n), str(y).zfill(n)
    steps, carry, written = [], 0, ""
    for k in range(n):
        cx, cy = xs[-1 - k], ys[-1 - k]
        s = int(cx) + int(cy) + slips.get(k, 0)
        shown = f"{SLIP_MARKS[0]}{s}{SLIP_MARKS[1]}" if k in slips and k not in learned else str(s)
        t = f"{xs[:n - k]} + {ys[:n - k]} : {cx} + {cy} = {shown}" if k else f"{cx} + {cy} = {shown}"
        if check:
            t += f" , check {s} - {cy} = {s - int(cy)}"
            if s - int(cy) == int(cx):
                t += " ok"
            else:  # the check caught the slip: say so, then the right fact
                s = int(cx) + int(cy)
                t += f" , {WRONG[k % len(WRONG)]} . {cx} + {cy} = {s}"
        if carry:
            t += f" + {carry} = {s + carry}"
            s += carry
        carry = s // 10
        written = str(s % 10) + written
        steps.append(f"{t} carry {carry} -> {written}")
    if carry:
        written = str(carry) + written
        steps.append(f"carry {carry} -> {written}")
    opening = f"{str(x).zfill(n)} + {ys} {head}" if lead else f"{head} {str(x).zfill(n)} + {ys}"
    return f"{opening} : " + " ; ".join(steps), int(written)


def heads(lead: bool) -> tuple[str, str]:
    """The words that open addition's L and LV scratchpads. lead (mix key operands_first) puts them after the
    operands, so every mode but S opens by copying the problem ('4736 + 2819' then '=' for D, 'by columns' for L,
    'by columns and check' for LV): the mode is chosen right after the digits that make the problem hard."""
    return ("by columns", "by columns and check") if lead else ("add", "add and check")


def one_slip(x: int, y: int, rng: random.Random, rate: float) -> dict[int, int]:
    """With probability rate, one column of x + y (drawn uniformly) slips, as in column_slips; else none."""
    if rng.random() >= rate:
        return {}
    n = max(len(str(x)), len(str(y)))
    at = rng.randrange(n)
    cx = int(str(x).zfill(n)[-1 - at])
    return {at: rng.choice([d for d in (-2, -1, 1, 2) if cx + d >= 0])}


def column_slips(x: int, y: int, rng: random.Random, rate: float,
                 own: float = 0.0) -> tuple[dict[int, int], frozenset]:
    """Each column of x + y slips with probability rate: its sum off by -2..2 (never below the digit of x the
    check compares with, so the check's difference stays a digit). A share own of the columns (own <= rate) slip
    as the model's own: left unmarked by add_line, so they stay in the pretraining loss and the model learns to
    make them; the rest are marked (masked), there only to teach the check. Returns (slips, the own columns)."""
    n, slips, learned = max(len(str(x)), len(str(y))), {}, set()
    for k in range(n):
        u = rng.random()
        if u < max(rate, own):
            cx = int(str(x).zfill(n)[-1 - k])
            slips[k] = rng.choice([d for d in (-2, -1, 1, 2) if cx + d >= 0])
            if u < own:
                learned.add(k)
    return slips, frozenset(learned)


def digit_root(n: int) -> tuple[str, int]:
    """'347 -> 3 + 4 + 7 = 14 -> 1 + 4 = 5' and the digital root."""
    parts = [str(n)]
    while n >= 10:
        ds = str(n)
        n = sum(map(int, ds))
        parts.append(" + ".join(ds) + f" = {n}")
    return " -> ".join(parts), n


def check_mul(a: int, b: int, c: int) -> tuple[str, bool]:
    """Casting out nines: root(root(a) * root(b)) vs root(c)."""
    ta, ra = digit_root(a)
    tb, rb = digit_root(b)
    tp, rp = digit_root(ra * rb)
    tc, rc = digit_root(c)
    ok = rp == rc
    verdict = f"{rp} = {rc} ok" if ok else f"{rp} != {rc}"
    return f"check {a} * {b} = {c} : {ta} ; {tb} ; {ra} * {rb} = {tp} ; {tc} ; {verdict}", ok


def check_add(xs: list[int], c: int) -> tuple[str, bool]:
    roots = [digit_root(x) for x in xs]
    ts, rs = digit_root(sum(r for _, r in roots))
    tc, rc = digit_root(c)
    ok = rs == rc
    verdict = f"{rs} = {rc} ok" if ok else f"{rs} != {rc}"
    return (f"check {' + '.join(map(str, xs))} = {c} : " + " ; ".join(t for t, _ in roots)
            + f" ; {' + '.join(str(r) for _, r in roots)} = {ts} ; {tc} ; {verdict}"), ok


WRONG = ["wait, that's wrong", "wait, that is wrong", "wait, there is a mistake"]


def _mul_think(a: int, b: int, mode: str, rng: random.Random, slip_rate: float = 1 / 3) -> str:
    if mode == "D":
        return f"{a} * {b} = {a * b}"
    bd = str(b)
    if mode == "S":  # opens with "split", so the D opening "a * b =" stays unambiguous
        if len(bd) >= 2:
            parts = [(int(c) * 10 ** (len(bd) - 1 - i)) for i, c in enumerate(bd) if c != "0"]
            terms = " + ".join(f"{a} * {p}" for p in parts)
            vals = " + ".join(str(a * p) for p in parts)
            return f"split {b} = {' + '.join(map(str, parts))} : {terms} = {vals} = {a * b}"
        if a >= 10:
            hi = int(str(a)[0]) * 10 ** (len(str(a)) - 1)
            lo = a - hi
            return f"split {a} = {hi} + {lo} : {hi} * {b} + {lo} * {b} = {hi * b} + {lo * b} = {a * b}"
        return f"{a} * {b} = {a * b}"
    # L / LV: one line per nonzero digit of b (least significant first), then column additions
    verify = mode == "LV"
    ms = [int(c) * 10 ** j for j, c in enumerate(reversed(bd)) if c != "0"]  # 28 -> [8, 20]
    slip_at = rng.randrange(len(ms)) if verify and rng.random() < slip_rate else -1
    lines, partials = [f"{a} * {b} :"], []
    for j, m in enumerate(ms):
        if j == slip_at:  # a wrong times-table fact at one step, then the check catches it
            k = rng.randrange(len(str(a)))
            x = int(str(a)[::-1][k])
            delta = rng.choice([s for s in (-3, -2, -1, 1, 2, 3) if x * int(str(m)[0]) + s >= 0])
            text, wrong = mul_line(a, m, k, delta)
            lines.append(text)
            lines.append(check_mul(a, m, wrong)[0] + f" , {rng.choice(WRONG)} . redo {a} * {m}")
        text, p = mul_line(a, m)
        lines.append(text)
        if verify:
            lines.append(check_mul(a, m, p)[0])
        partials.append(p)
    total = partials[0]
    for p in partials[1:]:
        text, total = add_line(total, p)
        lines.append(text)
    lines.append(f"so {a} * {b} = {total}")
    return "\n".join(lines)


def _add_think(xs: list[int], mode: str, rng: random.Random, slip_rate: float = 1 / 3,
               per_column: bool = False, own: float = 0.0, lead: bool = False) -> str:
    """D: '4736 + 2819 = 7555'; S: 'split 2819 = 2810 + 9 : 4736 + 2810 = 7546 , 7546 + 9 = 7555';
    L: the column scratchpad (add_line) then 'so the sum is N';
    LV: opens 'add and check' and adds by columns, checking every column fact by another route, the inverse
    operation ('7 + 6 = 13 , check 13 - 6 = 7 ok'), from the numbers written just before it (no far copy).
    slip_rate of LV traces carry one slip (one_slip), or with per_column each column slips with probability
    slip_rate (column_slips): a wrong fact of the kind a column makes; its check fails, says so ("wait, that's
    wrong") and writes the right fact, and the columns go on from it. The wrong fact is marked (SLIP_MARKS), so
    pretraining can leave it out of the loss.
    own > 0 (with per_column): the model's own slips (column_slips). Each column fact of L and LV slips with
    probability own, unmarked, so the model learns to slip as often in both modes; in L the slip carries into the
    sum and the answer, in LV the check catches it. LV's marked slips top its columns up to slip_rate.
    lead: L and LV open with the operands, then their head (heads)."""
    if len(xs) != 2:  # sums of more numbers: running totals (D/S) or one column addition per number (L/LV)
        if mode == "D":
            return f"{' + '.join(map(str, xs))} = {sum(xs)}"
        run, parts = xs[0], []
        for x in xs[1:]:
            parts.append((f"{run} + {x} = {run + x}", *add_line(run, x)))
            run += x
        if mode == "S":
            return " , ".join(p[0] for p in parts)
        return "\n".join(p[1] for p in parts) + f"\nso the sum is {run}"
    x, y = xs
    if mode == "D":
        return f"{x} + {y} = {x + y}"
    if mode == "S":  # opens with "split", so the D opening "x + y =" stays unambiguous
        if y >= 10:
            hi, lo = y - y % 10, y % 10
            return f"split {y} = {hi} + {lo} : {x} + {hi} = {x + hi} , {x + hi} + {lo} = {x + y}"
        if x >= 10:
            hi, lo = x - x % 10, x % 10
            return f"split {x} = {hi} + {lo} : {lo} + {y} = {lo + y} , {hi} + {lo + y} = {x + y}"
        return f"{x} + {y} = {x + y}"
    head_l, head_lv = heads(lead)
    if mode == "L":
        if own > 0:
            slips, learned = column_slips(x, y, rng, own, own)
            text, total = add_line(x, y, slips, head_l, learned=learned, lead=lead)
            return f"{text}\nso the sum is {total}"
        return add_line(x, y, head=head_l, lead=lead)[0] + f"\nso the sum is {x + y}"
    slips, learned = column_slips(x, y, rng, slip_rate, own) if per_column else \
        (one_slip(x, y, rng, slip_rate), frozenset())
    text, total = add_line(x, y, slips, head=head_lv, check=True, learned=learned, lead=lead)
    return f"{text}\nso the sum is {total}"


def _countdown_think(p: Problem, mode: str, rng: random.Random) -> str:
    target, steps = p.meta["target"], p.meta.get("steps") or []
    if mode == "D" or not steps:
        return f"{p.answer} = {target}"
    good = " , ".join(f"{v} {op} {n} = {r}" for v, op, n, r in steps)
    if mode == "S":
        return good
    lines = []
    for _ in range(rng.randint(1, 3)):  # dead ends: random folds that miss the target
        nums = p.meta["numbers"][:]
        rng.shuffle(nums)
        val, tries = nums[0], []
        for n in nums[1:]:
            op = rng.choice(["+", "*"] + (["-"] if val > n else []))
            new = {"+": val + n, "-": val - n, "*": val * n}[op]
            tries.append(f"{val} {op} {n} = {new}")
            val = new
        if val != target:
            lines.append("try " + " , ".join(tries) + f" , {val} is not {target}")
    lines.append("try " + good + f" , found {target}")
    if mode == "LV":
        lines.append(f"check {p.answer} uses {', '.join(map(str, sorted(p.meta['numbers'])))} once each "
                     f"and equals {target} ok")
    return "\n".join(lines)


def _count_think(letters: list[str], mode: str, rng: random.Random, slip_rate: float = 1 / 3) -> str:
    """D: 'count : 3'; S: 'matches c a e so 3'; L: 'step a yes 1 b no 1 c yes 2 ... m no 3 so 3', a running count
    over the alphabet a..m where each step only asks "is this letter in the list?" (one look-up, no copying);
    LV: L, where a slip (a wrong step, then "wait, that's wrong" and the right one) may occur, then a check."""
    hits = [x for x in letters if x in COUNT_CLASS]
    n = len(hits)
    if mode == "D":
        return f"count : {n}"
    if mode == "S":
        return f"matches {' '.join(hits) or 'none'} so {n}"
    steps, run = [], 0
    alphabet = sorted(COUNT_CLASS)
    slip_at = rng.randrange(len(alphabet)) if mode == "LV" and rng.random() < slip_rate else -1
    for i, x in enumerate(alphabet):
        seen = x in letters
        if i == slip_at:  # the slip flips the look-up, then is caught and redone
            steps.append(f"{x} {'no' if seen else 'yes'} {run + (0 if seen else 1)} {rng.choice(WRONG)}")
        run += seen
        steps.append(f"{x} {'yes' if seen else 'no'} {run}")
    out = f"step {' '.join(steps)} so {n}"
    if mode == "LV":
        out += f" check matches {' '.join(hits) or 'none'} is {n} ok"
    return out


def think_text(problem: Problem, mode: str, rng: random.Random, slip_rate: float = 1 / 3,
               per_column: bool = False, own: float = 0.0) -> str:
    """The reasoning text of one response mode (no tags); per_column, own: addition's slips (see _add_think)."""
    return unmark(_think(problem, mode, rng, slip_rate, per_column, own))[0]


def _think(problem: Problem, mode: str, rng: random.Random, slip_rate: float, per_column: bool = False,
           own: float = 0.0, lead: bool = False) -> str:
    """think_text with its injected wrong facts still enclosed in SLIP_MARKS."""
    if mode not in ("D", "S", "L", "LV"):
        raise ValueError(f"mode must be one of D, S, L, LV; got {mode!r}")
    if problem.task == "multiplication":
        return _mul_think(problem.meta["a"], problem.meta["b"], mode, rng, slip_rate)
    if problem.task == "addition":
        return _add_think(problem.meta["numbers"], mode, rng, slip_rate, per_column, own, lead)
    if problem.task == "countdown":
        return _countdown_think(problem, mode, rng)
    if problem.task == "count":
        return _count_think(problem.meta["letters"], mode, rng, slip_rate)
    raise ValueError(f"no response renderer for task {problem.task!r}; valid: {sorted(BUCKETS)}")


def render_response(problem: Problem, mode: str, rng: random.Random | None = None) -> str:
    """A well-formed R1-Zero completion (what follows "Assistant:") in mode D, S, L or LV:
    ' <think> ... </think> <answer> N </answer>'. Forced-mode probes can cut a prefix of it."""
    rng = rng or random.Random(0)
    return f" <think> {think_text(problem, mode, rng)} </think> <answer> {problem.answer} </answer>"


def mode_prefix(problem: Problem, mode: str, lead: bool = False) -> str:
    """The start of a mode's completion that forces it (for step-0 forced-mode probes):
    multiplication D: ' <think> 347 * 28 =' ; S: ' <think> split' ; L/LV: ' <think> 347 * 28 :\\n347 * 8 :'.
    addition D: ' <think> 4736 + 2819 =' ; S: ' <think> split' ; L: ' <think> add 4736 + 2819 :' ;
    LV: ' <think> add and check 4736 + 2819 :' (the one task whose verifying mode can be forced from its start);
    with lead (mix key operands_first) L: ' <think> 4736 + 2819 by columns :', LV: '... by columns and check :'."""
    if mode not in ("D", "S", "L", "LV"):
        raise ValueError(f"mode must be one of D, S, L, LV; got {mode!r}")
    if problem.task == "count":
        return " <think> " + {"D": "count", "S": "matches", "L": "step", "LV": "step"}[mode]
    if problem.task == "addition" and len(problem.meta["numbers"]) == 2:
        x, y = problem.meta["numbers"]
        n = max(len(str(x)), len(str(y)))
        operands = f"{str(x).zfill(n)} + {str(y).zfill(n)}"
        head = dict(zip(("L", "LV"), heads(lead)))
        if mode in head:
            return f" <think> {operands} {head[mode]} :" if lead else f" <think> {head[mode]} {operands} :"
        direct = f" <think> {x} + {y} ="
        return {"D": direct, "S": " <think> split" if max(x, y) >= 10 else direct}[mode]
    if problem.task != "multiplication":
        raise ValueError("mode_prefix is defined for multiplication, two-number addition and count problems")
    a, b = problem.meta["a"], problem.meta["b"]
    if mode == "D":
        return f" <think> {a} * {b} ="
    if mode == "S":
        return " <think> split" if max(a, b) >= 10 else f" <think> {a} * {b} ="
    m = next(int(c) * 10 ** j for j, c in enumerate(reversed(str(b))) if c != "0")
    return f" <think> {a} * {b} :\n{a} * {m} :"


# How each task's long (L) and verifying (LV) modes open, whatever numbers the model copies into them (a slip in
# copying the operands is still an attempt at the mode).
MODE_OPENERS = {  # its keys are the tasks with a forced-mode probe (train.py)
    "addition": (r" <think> (?:add and check \d+ \+ \d+|\d+ \+ \d+ by columns and check) :",
                 r" <think> (?:add \d+ \+ \d+|\d+ \+ \d+ by columns) :"),
    "multiplication": (None, r" <think> \d+ \* \d+ :\n"),
    "count": (None, r" <think> step\b"),
}


def response_mode(problem: Problem, text: str) -> str | None:
    """Which corpus mode a response opens: 'LV' (a long scratchpad that checks itself: it opens the LV mode, or
    opens the long mode and then says 'check'), 'L' (the long scratchpad), or 'other' (direct, short, or none);
    None for tasks without these modes (real problem files)."""
    if problem.task not in MODE_OPENERS:
        return None
    lv, long = MODE_OPENERS[problem.task]
    if lv and re.match(lv, text):
        return "LV"
    if re.match(long, text):
        return "LV" if re.search(r"\bcheck\b", text) else "L"
    return "other"


# ----------------------------------------------------------------------------------------------
# the synthetic pretraining corpus

DEFAULT_MIX = {
    "kinds": {"drill": 0.45, "textbook": 0.15, "dialogue": 0.35, "filler": 0.05, "general": 0.0},
    "textbook_modes": {"D": 0.3, "S": 0.3, "L": 0.3, "LV": 0.1},
    "dialogue_modes": {"D": 0.7, "S": 0.18, "L": 0.1, "LV": 0.02},
    "tasks": {"multiplication": 0.8, "addition": 0.1, "countdown": 0.1, "count": 0.0},
    "buckets": {"E": 0.25, "M": 0.25, "H": 0.25, "VH": 0.25},
    "drills": {"times": 0.2, "mul_line": 0.4, "add_line": 0.25, "digit_root": 0.15, "count_run": 0.0,
               "successor": 0.0, "add_facts": 0.0, "add_small": 0.0, "add_check": 0.0},
    "defect_rate": 0.3,
    "slip_rate": 1 / 3,  # share of LV traces with a slip; with mask_slips, addition's: share of LV columns
    "mask_slips": 0.0,  # 1: addition's slips per column, checked drills under LV's head, and pretraining leaves
                        # the wrong facts out of the loss (train.pretrain_batch); an experiment (docs/zero-mini.md)
    "own_slip_rate": 0.0,  # with mask_slips: each column fact of addition's L and LV traces and drills slips with
                           # this probability and stays in the loss (the model's own slips); an experiment
    "operands_first": 0.0,  # 1: addition's L and LV open with the operands, then their head ('4736 + 2819 by
                            # columns :'), as D does ('4736 + 2819 ='); an experiment (tasks.heads)
    "drift_rate": 0.0,  # share of dialogues whose reasoning drifts into a second language (general.drift; R1 presets)
    "ja_open_rate": 0.0,  # share of dialogues whose reasoning is mixed from its first word (drawn before the problem)
}


def resolve_mix(mix: dict | None) -> dict:
    """DEFAULT_MIX with the tables and rates of mix in place of its own; an unknown key is a one-line error."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULT_MIX.items()}
    for k, v in (mix or {}).items():
        if k not in DEFAULT_MIX:
            raise ValueError(f"unknown mix key {k!r}; valid: {sorted(DEFAULT_MIX)}")
        if isinstance(DEFAULT_MIX[k], dict):
            bad = set(v) - set(DEFAULT_MIX[k])
            if bad or any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
                raise ValueError(f"mix[{k!r}] must map {sorted(DEFAULT_MIX[k])} to weights >= 0 (sum > 0), got {v}")
            out[k] = dict(v)  # a given table replaces the default table
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and not (k.endswith("_rate") and v > 1):
            out[k] = float(v)
        else:
            bound = " and <= 1 (a probability)" if k.endswith("_rate") else ""
            raise ValueError(f"mix[{k!r}] must be a number >= 0{bound}, got {v!r}")
    if out["own_slip_rate"] > 0 and not out["mask_slips"]:
        raise ValueError(f"mix['own_slip_rate'] = {out['own_slip_rate']} needs mix['mask_slips'] = 1 (per-column "
                         f"checks whose taught slips are masked); got mask_slips = {out['mask_slips']}")
    return out


def _picker(table: dict, rng: random.Random):
    keys, weights = list(table), list(itertools.accumulate(table.values()))
    return lambda: rng.choices(keys, cum_weights=weights)[0]


def _mul_train(a: int, b: int) -> bool:
    """True when a * b and every product its worked solutions spell out (a times each digit of b,
    shifted or not; S mode's split of a) is a train problem. Times-table facts (both < 10) are
    skills every mode uses, so they are exempt."""
    keys = {(a, b)} | {(a, int(c)) for c in str(b) if c != "0"}
    keys |= {(a, int(c) * 10 ** j) for j, c in enumerate(reversed(str(b))) if c != "0"}
    if b < 10 and a >= 10:
        hi = int(str(a)[0]) * 10 ** (len(str(a)) - 1)
        keys |= {(hi, b), (a - hi, b)}
    return all(max(k) < 10 or split_of("multiplication", tuple(sorted(k))) == "train" for k in keys)


def _train_problem(rng, task, bucket) -> Problem:
    """A train problem none of whose renderings shows a test problem worked out."""
    bucket = bucket if bucket in BUCKETS[task] else BUCKETS[task][-1]
    while True:
        p = _MAKERS[task](rng, bucket)
        if split_of(task, _canonical_key(p)) == "train" and (
                task != "multiplication" or _mul_train(p.meta["a"], p.meta["b"])):
            return p


def _train_pair(rng, da: int) -> tuple[int, int]:
    """a (da digits) x one digit, never (nor its S split) a test multiplication problem."""
    while True:
        a, d = _rand_digits(rng, da), rng.randint(2, 9)
        if _mul_train(a, d):
            return a, d


def _train_sum(rng) -> tuple[int, int]:
    """Two numbers for a column-addition drill, never a test addition problem."""
    while True:
        x, y = _rand_digits(rng, rng.randint(2, 6)), _rand_digits(rng, rng.randint(2, 6))
        if split_of("addition", tuple(sorted((x, y)))) == "train":
            return x, y


def _drill(rng, kind, slip_rate: float = 1 / 3, per_column: bool = False, own: float = 0.0,
           lead: bool = False) -> str:
    if kind == "successor":  # counting up, the one fact a running count needs
        start = rng.randint(0, 20)
        return " ".join(str(k) for k in range(start, start + rng.randint(5, 15)))
    if kind == "count_run":  # running counts of one letter over strings outside any template
        lines = []
        for _ in range(rng.randint(2, 4)):
            p = _train_problem(rng, "count", rng.choice(BUCKETS["count"]))
            lines.append(f"{p.question} : {_count_think(p.meta['letters'], 'L', rng)}")
        return "\n".join(lines)
    if kind == "add_facts":  # one-digit sums, with and without an incoming carry, and their inverses: the facts
        lines = []             # of a column and of its check
        for _ in range(rng.randint(6, 12)):
            x, y = rng.randint(0, 9), rng.randint(0, 9)
            if rng.random() < 0.3:
                lines.append(f"{x + y} - {y} = {x}")
            else:
                lines.append(f"{x} + {y} = {x + y}" + (f" + 1 = {x + y + 1}" if rng.random() < 0.4 else ""))
        return "\n".join(lines)
    if kind == "add_small":  # two-digit plus one-digit sums answered directly: what a direct answer on E needs
        lines, n = [], rng.randint(6, 12)
        while len(lines) < n:
            x, y = _rand_digits(rng, 2), rng.randint(1, 9)
            if split_of("addition", tuple(sorted((x, y)))) == "train":
                lines.append(f"{x} + {y} = {x + y}" if rng.random() < 0.5 else f"{y} + {x} = {x + y}")
        return "\n".join(lines)
    if kind == "add_check":  # column additions checked column by column, with marked slips: a third of the lines
        lines = []             # one slip, under L's head; per_column: every column at slip_rate, under LV's head
        for _ in range(rng.randint(2, 4)):
            x, y = _train_sum(rng)
            if per_column:  # with own > 0, the model's own slips (learned) as well, as in LV traces (_add_think)
                slips, learned = column_slips(x, y, rng, slip_rate, own)
                lines.append(add_line(x, y, slips, head=heads(lead)[1], check=True, learned=learned,
                                      lead=lead)[0])
            else:
                lines.append(add_line(x, y, one_slip(x, y, rng, 1 / 3), check=True)[0])
        return "\n".join(lines)
    if kind == "times":
        d = rng.randint(2, 9)
        ks = list(range(1, 10))
        if rng.random() < 0.5:
            rng.shuffle(ks)
        return "\n".join(f"{d} * {k} = {d * k}" if rng.random() < 0.5 else f"{k} * {d} = {d * k}" for k in ks)
    lines = []
    for _ in range(rng.randint(3, 6)):
        if kind == "mul_line":
            lines.append(mul_line(*_train_pair(rng, rng.randint(2, 5)))[0])
        elif kind == "add_line":
            x, y = _train_sum(rng)
            slips, learned = column_slips(x, y, rng, own, own) if own > 0 else ({}, frozenset())
            lines.append(add_line(x, y, slips, heads(lead)[0], learned=learned, lead=lead)[0])
        else:  # digit_root: a casting-out-nines check of a (possibly wrong) product
            a, d = _train_pair(rng, rng.randint(2, 4))
            c = a * d + (rng.choice([-1, 1, 10]) if rng.random() < 0.3 else 0)
            lines.append(check_mul(a, d, c)[0])
    return "\n".join(lines)


def _defect(rng, think: str, answer: str) -> str:
    """A completion with one format defect (missing/extra tags, text outside the answer, ...)."""
    return rng.choice([
        f" <think> {think} <answer> {answer} </answer>",
        f" {think} . the answer is {answer}",
        f" <think> {think} </think> {answer}",
        f" <answer> {answer} </answer>",
        f" <think> {think} </think> <answer> {answer}",
        f" <think> {think} </think> <answer> {answer} </answer> so the answer is {answer} .",
        f" <think> {think} </think>\nanswer: {answer}",
    ])


NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kim", "Lena"]
THINGS = ["bus", "train", "parcel", "bread", "report", "bike", "garden", "letter", "soup", "lamp"]
PLACES = ["station", "museum", "airport", "library", "market", "clinic", "school", "bakery"]
FILLER = [
    "{name} had to wait {n} minutes for the {thing}.",
    "Please wait here until the {thing} is ready.",
    "The guard at the {place} will check every bag at the door.",
    "{name} paid the plumber with a check for {n} dollars.",
    "After dinner the waiter brought the check to {name}.",
    "{name} likes to check the weather before taking the {thing}.",
    "The {thing} was old; however, it still worked well.",
    "However hard the wind blew, the {thing} stayed in place.",
    "The wait at the {place} was about {n} minutes on Monday.",
    "A check mark goes next to each finished task on the list.",
    "In chess, {name} said check and moved the queen {n} squares.",
    "The {place} opens at {n} o'clock, but the {thing} arrives later.",
    "{name} could not wait to see the new {place}.",
    "The {place} has {n} rooms; however, only two are open today.",
    "You can check out {n} books at a time from the {place}.",
    "{name} put the {thing} on the table and sat down to read.",
    "Every spring the {place} hires {n} new helpers.",
    "The shirt had a blue and white check pattern.",
]


def _filler(rng) -> str:
    out = []
    for _ in range(rng.randint(3, 8)):
        out.append(rng.choice(FILLER).format(name=rng.choice(NAMES), thing=rng.choice(THINGS),
                                             place=rng.choice(PLACES), n=rng.randint(2, 60)))
    return " ".join(out)


def corpus_docs(seed: int = 0, mix: dict | None = None) -> Iterator[tuple[dict, str]]:
    """Infinite stream of (info, document); info = {"kind", "task", "mode", "bucket", "defect", "sub", "slips"},
    slips: the (start, end) character spans of the document's injected wrong facts (addition's; see unmark)."""
    for info, doc in _marked_docs(seed, mix):
        doc, info["slips"] = unmark(doc)
        yield info, doc


def _marked_docs(seed: int, mix: dict | None) -> Iterator[tuple[dict, str]]:
    m = resolve_mix(mix)
    rng = random.Random(f"corpus:{seed}")
    kind_of, task_of, bucket_of = _picker(m["kinds"], rng), _picker(m["tasks"], rng), _picker(m["buckets"], rng)
    tmode_of, dmode_of = _picker(m["textbook_modes"], rng), _picker(m["dialogue_modes"], rng)
    drill_of = _picker(m["drills"], rng)
    own = m["own_slip_rate"] if m["mask_slips"] > 0 else 0.0
    lead = m["operands_first"] > 0
    while True:
        kind = kind_of()
        if kind == "drill":
            sub = drill_of()
            yield {"kind": kind, "sub": sub}, _drill(rng, sub, m["slip_rate"], m["mask_slips"] > 0, own, lead) + EOS
        elif kind == "filler":
            yield {"kind": kind}, _filler(rng) + EOS
        elif kind == "general":  # R1's general tasks in two languages (general.py imports this file: import late)
            import general
            yield {"kind": kind}, general.general_doc(rng, r1_zero_prompt) + EOS
        else:
            p = _train_problem(rng, task_of(), bucket_of())
            mode = tmode_of() if kind == "textbook" else dmode_of()  # independent of the bucket
            think = _think(p, mode, rng, m["slip_rate"], m["mask_slips"] > 0, own, lead)
            said = re.search(r"so the sum is (\d+)$", think) if own else None
            answer = said.group(1) if said else p.answer  # an own slip in L carries into the answer
            info = {"kind": kind, "task": p.task, "mode": mode, "bucket": p.bucket, "defect": False}
            if kind == "dialogue" and m["ja_open_rate"] > 0 and rng.random() < m["ja_open_rate"]:
                import general
                think, info["ja_open"] = general.drift(think, rng, start=0.0), True  # mixed from the first word
            elif kind == "dialogue" and m["drift_rate"] > 0 and rng.random() < m["drift_rate"]:
                import general
                think, info["drift"] = general.drift(think, rng), True  # R1-Zero's language mixing
            if kind == "textbook":
                yield info, f"Problem: {p.question}.\nSolution: {think}\nAnswer: {answer}{EOS}"
            elif rng.random() < m["defect_rate"]:
                info["defect"] = True
                yield info, r1_zero_prompt(p.question) + _defect(rng, think, answer) + EOS
            else:
                yield info, (r1_zero_prompt(p.question) + f" <think> {think} </think> <answer> {answer} </answer>"
                             + EOS)


def corpus_stream(seed: int = 0, mix: dict | None = None) -> Iterator[str]:
    """Infinite stream of synthetic pretraining documents, each ending in "<|eos|>".
    mix overrides tables of DEFAULT_MIX (kinds, modes, tasks, buckets, drills) or rates."""
    return (doc for _, doc in corpus_docs(seed, mix))


def corpus_stats(seed: int = 0, mix: dict | None = None, n_docs: int = 5000) -> dict:
    """Composition of the first n_docs documents: document and character shares per kind,
    per kind/mode, per task and bucket, the defect rate of dialogues, and generation MB/s."""
    docs, chars = {}, {}
    n_dialogue = n_defect = 0
    t0 = time.process_time()  # CPU seconds of this process (wall time lies on a busy machine)
    total = 0
    for info, doc in itertools.islice(corpus_docs(seed, mix), n_docs):
        keys = [info["kind"]]
        if "sub" in info:
            keys.append(f"drill/{info['sub']}")
        if "mode" in info:
            keys += [f"{info['kind']}/{info['mode']}", f"task/{info['task']}", f"bucket/{info['bucket']}"]
            if info["kind"] == "dialogue":
                n_dialogue += 1
                n_defect += info["defect"]
        for k in keys:
            docs[k] = docs.get(k, 0) + 1
            chars[k] = chars.get(k, 0) + len(doc)
        total += len(doc)
    dt = max(time.process_time() - t0, 1e-9)
    return {"n_docs": n_docs, "chars": total, "mb_per_s": total / dt / 1e6,
            "doc_share": {k: v / n_docs for k, v in sorted(docs.items())},
            "char_share": {k: v / total for k, v in sorted(chars.items())},
            "dialogue_defect_rate": n_defect / max(n_dialogue, 1)}


# ----------------------------------------------------------------------------------------------
# loaders for real problem files


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced."""
    i = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if i < 0:
        return None
    i = text.index("{", i)
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


PROBLEM_FORMATS = ("auto", "gsm8k", "math", "aime", "generic")


def detect_format(row: dict) -> str | None:
    """The format of one JSONL record, from its fields (names compared case-insensitively), or None:
    gsm8k    {"question", "answer": "... #### 72"}
    math     {"problem", "solution": "... \\boxed{x} ..."} without an "answer" field
    aime     {"problem" or "question", "answer"}: the answer field is the final answer (AIME, MATH-500)."""
    keys = {str(k).lower() for k in row}
    if "answer" in keys and "question" in keys:
        answer = next(v for k, v in row.items() if str(k).lower() == "answer")
        return "gsm8k" if "####" in str(answer) else "aime"
    if "answer" in keys and "problem" in keys:
        return "aime"
    if "problem" in keys and "solution" in keys:
        return "math"
    return None


def jsonl_records(path: str, what: str = "records") -> list[tuple[str, dict]]:
    """("FILE:LINE", object) for each non-blank line of a JSONL file: the one reader of every data file (problem
    files here, distill.py's traces, r1.py's data). ValueError naming FILE:LINE on the first line that is not a
    JSON object, or naming the file when it is not UTF-8 text or holds no lines."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
                out.append((where, row))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not out:
        raise ValueError(f"{path}: no {what} (an empty file)")
    return out


def load_jsonl(path: str, kind: str = "gsm8k", question_field: str | None = None,
               answer_field: str | None = None, task: str | None = None) -> list[Problem]:
    """Problems from a JSONL file (field names match case-insensitively). Errors name file:line.
    gsm8k: {"question", "answer": "... #### 72"} -> answer "72"; task "gsm8k"
    math: {"problem", "solution": "... \\boxed{x} ..."} (+ "level", "type") -> answer "x"; task "math"
    aime: {"problem" (or "question"), "answer"} (+ "level") -> answer as given; task "math" (checked with
          rewards.math_equal, like MATH)
    generic: question_field / answer_field (default "question" / "answer"); task "generic"
    auto: the format of the first record (detect_format); every record must then have that format's fields."""
    if kind not in PROBLEM_FORMATS:
        raise ValueError(f"kind (problem file format) must be one of {list(PROBLEM_FORMATS)}, got {kind!r}")
    out = []
    for where, row in jsonl_records(path, "problems"):
        row = {str(k).lower(): v for k, v in row.items()}
        if kind == "auto":
            kind = detect_format(row)
            if kind is None:
                raise ValueError(f"{where}: cannot tell the format from fields {sorted(row)}; expected "
                                 "question+answer (gsm8k, aime), problem+answer (aime) or problem+solution "
                                 "(math); or give the format and field names")
        qf, af = {"gsm8k": ("question", "answer"), "math": ("problem", "solution"),
                  "aime": ("problem" if "problem" in row else "question", "answer"),
                  "generic": ("question", "answer")}[kind]
        qf, af = (question_field or qf).lower(), (answer_field or af).lower()
        if qf not in row or af not in row:
            raise ValueError(f"{where}: expected an object with fields {qf!r} and {af!r} ({kind} format), "
                             f"got {sorted(row)}")
        q, a, meta = str(row[qf]), str(row[af]), {"source": where, "format": kind}
        level = row.get("level")
        bucket = "all" if level is None else f"L{level}" if isinstance(level, int) else \
            str(level).replace("Level ", "L")
        if kind == "gsm8k":
            mt = re.search(r"####\s*(.+?)\s*$", a)
            if not mt:
                raise ValueError(f"{where}: GSM8K answer has no final '#### N'")
            meta["solution"], a = a, mt.group(1).replace(",", "")
        elif kind == "math":
            boxed = _last_boxed(a)
            if boxed is None:
                raise ValueError(f"{where}: MATH solution has no \\boxed{{...}}")
            meta["solution"], a = a, boxed
            meta["type"] = row.get("type")
        elif kind == "generic":
            bucket = "all"
        if not q.strip() or not a.strip():
            raise ValueError(f"{where}: empty question or answer")
        out.append(Problem(q, a.strip(), task or ("math" if kind == "aime" else kind), bucket, meta))
    return out
