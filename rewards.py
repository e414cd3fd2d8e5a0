"""Rule-based rewards for R1-Zero style RL: format, answer checking, math equivalence, Countdown,
a sandboxed code-execution reward, language consistency, and one score() entry point.

DeepSeek-R1 trains on rules, not reward models: a strict format reward plus an accuracy reward
(exact answers, math equivalence, code run against tests), and in stage 2 a language-consistency
reward. RL finds every loophole, so each rule here is strict and bounded:

  - format: the whole completion must be `<think> non-empty </think> <answer> non-empty </answer>`
    (whitespace between the tags is allowed, nothing else; no repeated or nested tags).
  - math_equal (mathcheck.py): answers are parsed by our own allowlist parser into values; equal means
    exactly equal (rationals) or proven equal (a killable sympy worker), never a tolerance or a string
    trick; undefined values equal nothing; every in-process step is linear-time and bounded.
  - code_reward (sandbox.py): every program runs under bubblewrap in fresh namespaces with a private
    read-only root holding only the interpreter, a seccomp filter and a per-run cgroup; the tests are
    judged in the parent from the values the program prints.

The file reads from the entry point down: score() and its weights, then the format rule, answer extraction,
the per-task check, Countdown, and language consistency. overlong_penalty, beside score(), is the one rule
that reads a token count instead of the text. No tensors here: text in, floats out.

Simplifications vs the paper / production graders:
  1. Math answers: see mathcheck.py (what it parses; lists are sets; no tolerance, so 0.333 != 1/3;
     a percent sign is dropped, "50\\%" == "50"; several \\boxed{}: the last, unless they form a list).
  2. Answer extraction takes the last <answer> block, then its boxed answer or GSM8K's "#### N".
  3. The sandbox's threat model and its own simplifications: see sandbox.py.
  4. Language consistency is script + tiny stop-word lexicon based (no language-id model).

Usage:
    from rewards import score, math_equal, code_reward
    score(" <think> 17*23 = 391 </think> <answer> 391 </answer>", problem)   # -> {"reward": ..., ...}
    math_equal("\\frac{1}{2}", "0.5")  # True;  math_equal("x \\le 5", "(-\\infty, 5]")  # True
    code_reward("print(int(input())*2)", [{"input": "3\\n", "output": "6\\n"}])  # 1.0
    python rewards.py            # prints what sandbox isolation this machine supports
"""
import functools
import re
import unicodedata
from fractions import Fraction

# ----------------------------------------------------------------------------- one entry point

DEFAULT_WEIGHTS = {"accuracy": 1.0, "format": 0.1, "language": 0.0}
TASK_WEIGHTS = {}   # task name -> weights overriding DEFAULT_WEIGHTS, e.g. {"math": {"language": 0.1}}


def score(completion, problem, weights=None, think_prefilled=False, lang="en"):
    """Total reward of one completion and its parts: weights["accuracy"] * accuracy + weights["format"] *
    format + weights["language"] * language consistency of the reasoning (weights: DEFAULT_WEIGHTS, then
    TASK_WEIGHTS[problem.task], then `weights`). Accuracy needs a well-formed completion; for "code" it
    is the fraction of problem.meta["tests"] passed. Returns {"reward", "format", "accuracy", "language",
    "answer"}."""
    w = {**DEFAULT_WEIGHTS, **TASK_WEIGHTS.get(getattr(problem, "task", ""), {}), **(weights or {})}
    parsed = parse_response(completion, think_prefilled)
    fmt, acc, language, answer = 0.0, 0.0, 0.0, None
    if parsed is not None:
        think, block = parsed
        fmt = 1.0
        task = getattr(problem, "task", "")
        answer = block if task in ("countdown", "code") else extract_answer("<answer>" + block + "</answer>")
        if task == "code":                                  # partial credit: fraction of tests passed
            acc = code_reward(_strip_fences(answer), (getattr(problem, "meta", None) or {}).get("tests", []))
        else:
            acc = float(check_answer(answer, problem)) if answer else 0.0
        language = language_consistency(think, lang)
    reward = w["accuracy"] * acc + w["format"] * fmt + w["language"] * language
    return {"reward": reward, "format": fmt, "accuracy": acc, "language": language, "answer": answer}


def overlong_penalty(n_tokens, max_new_tokens, buffer):
    """DAPO's soft overlong punishment (arXiv 2503.14476, "overlong reward shaping"): a rule on the response's
    token count, which train.py adds to score()'s reward with --overlong_buffer=buffer. It is 0 up to
    max_new_tokens - buffer, then falls linearly to -1 at max_new_tokens, and is -1 past it. A response that runs
    on is penalised before the cap cuts it, so the policy learns to stop instead of learning nothing from a
    truncated sample."""
    free = max_new_tokens - buffer
    if n_tokens <= free:
        return 0.0
    return -1.0 if n_tokens >= max_new_tokens else (free - n_tokens) / buffer


# ----------------------------------------------------------------------------- format

_EOS_MARKERS = ("<|eos|>", "<|endoftext|>", "<|im_end|>", "<|pad|>", "<｜end▁of▁sentence｜>")
_NO_TAG = r"(?:(?!</?think>|</?answer>).)*"
_FORMAT_RE = re.compile(
    rf"\A\s*<think>(?P<think>{_NO_TAG})</think>\s*<answer>(?P<answer>{_NO_TAG})</answer>\s*\Z", re.DOTALL)
MAX_COMPLETION_CHARS = 200_000


def _strip_eos(text):
    """Drop end-of-sequence / padding markers a decoder may leave at the very end (and nothing else)."""
    text = text.rstrip()
    changed = True
    while changed:
        changed = False
        for m in _EOS_MARKERS:
            if text.endswith(m):
                text, changed = text[: -len(m)].rstrip(), True
    return text


def parse_response(completion, think_prefilled=False):
    """(think, answer) of a strict R1-Zero completion, or None if it is malformed in any way."""
    if not isinstance(completion, str) or len(completion) > MAX_COMPLETION_CHARS:
        return None
    text = ("<think>" if think_prefilled else "") + _strip_eos(completion)
    m = _FORMAT_RE.match(text)
    if m is None:
        return None
    think, answer = m.group("think").strip(), m.group("answer").strip()
    if not think or not answer:
        return None
    return think, answer


def format_reward(completion, think_prefilled=False):
    """1.0 for a strictly well-formed completion, else 0.0."""
    return 1.0 if parse_response(completion, think_prefilled) is not None else 0.0


# ----------------------------------------------------------------------------- answer extraction

from mathcheck import boxed_answer, last_boxed, math_equal  # noqa: E402,F401 (re-exported)


def extract_answer(text):
    """The answer: the last <answer> block (then its boxed answer or "#### N" inside), else the boxed answer
    of the text, else GSM8K's "#### N". None when there is nothing to extract."""
    if not isinstance(text, str) or len(text) > MAX_COMPLETION_CHARS:
        return None
    blocks = re.findall(r"<answer>((?:(?!</?answer>).)*)</answer>", text, re.DOTALL)
    if blocks:
        text = blocks[-1]
    boxed = boxed_answer(text)
    if boxed is not None:
        return boxed or None
    m = re.findall(r"####\s*\$?\s*(-?[\d,]*\.?\d+)", text)
    if m:
        return m[-1].replace(",", "")
    return text.strip() or None if blocks else None


# ----------------------------------------------------------------------------- task dispatch

def _as_int(s):
    s = s.strip().replace(" ", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", s):
        s = s.replace(",", "")
    return int(s) if re.fullmatch(r"-?\d+", s) and len(s) < 5000 else None


def check_answer(answer, problem):
    """Is `answer` (the extracted answer text) right for `problem` (duck-typed: .task, .answer, .meta)?"""
    try:
        if not isinstance(answer, str) or not answer.strip():
            return False
        task = getattr(problem, "task", "")
        gold = str(getattr(problem, "answer", ""))
        meta = getattr(problem, "meta", None) or {}
        if task == "countdown":
            return countdown_check(answer, meta["numbers"], meta["target"])
        if task in ("math", "gsm8k"):
            if "####" in gold:
                gold = extract_answer(gold) or gold
            boxed = boxed_answer(answer)
            return math_equal(boxed if boxed is not None else answer, gold)
        if task == "code":
            return code_reward(_strip_fences(answer), meta["tests"]) == 1.0
        gi, pi = _as_int(gold), _as_int(answer)
        if gi is not None:
            return pi == gi
        return answer.strip().casefold() == gold.strip().casefold()
    except (KeyError, TypeError, ValueError, AttributeError):
        return False


# ----------------------------------------------------------------------------- countdown

_CD_TOKEN = re.compile(r"\s*(?:(\d+)|([-+*/()]))")


def _cd_eval(toks):
    """Safe evaluator for + - * / ( ) over integer literals (no unary minus, no powers) -> Fraction.
    Raises ValueError / ZeroDivisionError on anything else."""
    pos = [0]

    def peek():
        return toks[pos[0]] if pos[0] < len(toks) else None

    def atom(depth):
        if depth > 50:
            raise ValueError("too deep")
        t = peek()
        pos[0] += 1
        if t == "(":
            v = expr(depth + 1)
            if peek() != ")":
                raise ValueError("unbalanced")
            pos[0] += 1
            return v
        if t is not None and t.isdigit():
            return Fraction(int(t))
        raise ValueError(f"unexpected {t!r}")

    def term(depth):
        v = atom(depth)
        while peek() in ("*", "/"):
            op = toks[pos[0]]
            pos[0] += 1
            w = atom(depth)
            if op == "/" and w == 0:
                raise ZeroDivisionError
            v = v * w if op == "*" else v / w
        return v

    def expr(depth):
        v = term(depth)
        while peek() in ("+", "-"):
            op = toks[pos[0]]
            pos[0] += 1
            w = term(depth)
            v = v + w if op == "+" else v - w
        return v

    v = expr(0)
    if pos[0] != len(toks):
        raise ValueError("trailing tokens")
    return v


def countdown_check(equation, numbers, target):
    """True if `equation` uses each of `numbers` exactly once (integers, + - * / and parentheses only)
    and evaluates exactly to `target`. An optional trailing "= target" is allowed."""
    try:
        if not isinstance(equation, str) or len(equation) > 500:
            return False
        eq = equation.strip()
        if "=" in eq:
            lhs, _, rhs = eq.partition("=")
            if not re.fullmatch(r"\s*-?\d+\s*", rhs) or int(rhs) != int(target):
                return False
            eq = lhs
        toks, pos = [], 0
        while pos < len(eq):
            m = _CD_TOKEN.match(eq, pos)
            if m is None:
                if eq[pos:].strip():
                    return False
                break
            toks.append(m.group(m.lastindex))
            pos = m.end()
        used = sorted(int(t) for t in toks if t.isdigit())
        if used != sorted(int(n) for n in numbers):
            return False
        return _cd_eval(toks) == Fraction(int(target))
    except (ValueError, ZeroDivisionError, TypeError, RecursionError):
        return False


# ----------------------------------------------------------------------------- language consistency

_SCRIPTS = {"en": "LATIN", "fr": "LATIN", "de": "LATIN", "es": "LATIN", "zh": "CJK", "ja": "CJK",
            "ko": "HANGUL", "ru": "CYRILLIC", "ar": "ARABIC", "el": "GREEK", "hi": "DEVANAGARI"}
_OTHER_LATIN = {"der", "die", "und", "nicht", "ist", "ein", "eine", "ich", "wir", "el", "los", "las",
                "una", "es", "que", "por", "pero", "como", "les", "est", "une", "avec", "pour", "nous",
                "dans", "sont", "mais", "il", "du", "y", "la", "de", "et"}
_WORD_RE = re.compile(r"[^\W\d_]+", re.UNICODE)


@functools.lru_cache(maxsize=1 << 14)
def _script(ch):
    name = unicodedata.name(ch, "")
    if "CJK" in name or "HIRAGANA" in name or "KATAKANA" in name:
        return "CJK"
    return name.split(" ")[0] if name else ""


def language_consistency(text, lang="en"):
    """Share of letter-bearing words in `text` that are in the target language (script-based; for
    English also ASCII-only letters and not a common French/German/Spanish function word).
    CJK characters count one word each. 0.0 for empty text."""
    if lang not in _SCRIPTS:
        raise ValueError(f"unknown language {lang!r}; valid: {sorted(_SCRIPTS)}")
    if not isinstance(text, str):
        return 0.0
    want, good, total = _SCRIPTS[lang], 0, 0
    for word in _WORD_RE.findall(text[:MAX_COMPLETION_CHARS]):
        units = list(word) if any(_script(c) in ("CJK", "HANGUL") for c in word) else [word]
        for w in units:
            total += 1
            scripts = {_script(c) for c in w}
            ok = scripts == {want}
            if ok and lang == "en":
                ok = w.isascii() and w.lower() not in _OTHER_LATIN
            good += ok
    return good / total if total else 0.0


# ----------------------------------------------------------------------------- code sandbox (sandbox.py)

from sandbox import (_strip_fences, check_sandbox, code_reward, code_reward_details,  # noqa: E402,F401
                     code_rewards, run_sandboxed, sandbox_capabilities)


if __name__ == "__main__":
    print(sandbox_capabilities())
