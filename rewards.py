"""Rule-based rewards for R1-Zero style RL: format, answer checking, math equivalence, Countdown,
a sandboxed code-execution reward, language consistency, and one score() entry point.

DeepSeek-R1 trains on rules, not reward models: a strict format reward plus an accuracy reward
(exact answers, math equivalence, code run against tests), and in stage 2 a language-consistency
reward. RL finds every loophole, so each rule here is strict and bounded:

  - format: the whole completion must be `<think> non-empty </think> <answer> non-empty </answer>`
    (whitespace between the tags is allowed, nothing else; no repeated or nested tags).
  - math_equal: our own allowlist LaTeX/plain parser builds a small expression tree; rationals are
    compared exactly in-process, anything symbolic goes to a killable sympy worker process with a
    timeout. Model text never reaches eval, sympify or parse_expr (they execute code).
  - code_reward: every program runs in a throwaway child: fresh tmpfs work dir, `python -I -S -B`,
    own session, new network + mount + pid namespace (read-only root), an unprivileged uid of its own,
    rlimits, a wall-clock timeout, then the process group and every straggler of that uid are killed.
    Outputs are compared in the parent.

Simplifications vs the paper / production graders:
  1. The math parser covers the common MATH/GSM8K answer forms (numbers, fractions, roots, powers,
     pi/e/i/infinity, trig/log, factorials, tuples/sets/intervals, "x = 2", units, percent signs),
     not all of LaTeX; unparsable answers fall back to normalised string equality.
  2. Equality is exact (rationals) or symbolic (sympy simplify, then a 60-digit numeric check with a
     1e-50 relative tolerance); there is no loose float tolerance, so 0.333 != 1/3.
     A percent sign is dropped, not divided by 100: "50\\%" equals "50", not "0.5".
  3. The sandbox uses only the standard library and Linux namespaces (net, mount, pid; no seccomp, no
     cgroups): limits are rlimits per process, the pid namespace takes every descendant down with the
     program, and (as root) a uid-wide kill sweep backs that up. As root each running
     program gets a private uid (SANDBOX_UIDS, instead of a shared "nobody", so NPROC limits and the
     sweep are per program). Disk writes go to a size-capped tmpfs; the rest of the file system is
     read-only but still readable where permissions allow. Without root a user namespace provides the
     net/mount/pid isolation, but the program keeps our uid: it can read files our uid can read.
  4. Assert tests of the form `assert CALL == LITERAL` are compared in the parent (immune to objects
     whose __eq__ lies); other assert forms run inside the child. An in-process adversary that reads
     the harness's own stack frames could forge the harness report; only the parent's checks are
     trusted beyond that.
  5. Language consistency is script + tiny stop-word lexicon based (no language-id model).

Usage:
    from rewards import score, math_equal, code_reward
    score(" <think> 17*23 = 391 </think> <answer> 391 </answer>", problem)   # -> {"reward": ..., ...}
    math_equal("\\frac{1}{2}", "0.5")  # True
    code_reward("print(int(input())*2)", [{"input": "3\\n", "output": "6\\n"}])  # 1.0
    python rewards.py            # prints what sandbox isolation this machine supports
"""
import ast
import fcntl
import functools
import json
import math
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
import zlib
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

from mpmath import iv  # interval arithmetic (ships with sympy): rigorous enclosures, used only to tell values apart

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

_BOX_ARG = re.compile(r"[^\s$]+")
_BRACES = re.compile(r"[{}]")


def _box_at(text, i):
    """(end, content) of the box whose macro starts at text[i], or None if it is unbalanced."""
    j = i + (6 if text.startswith("\\boxed", i) else 5)
    while j < len(text) and text[j] == " ":
        j += 1
    if j < len(text) and text[j] != "{":                       # \boxed 5
        m = _BOX_ARG.match(text, j)
        return (m.end(), m.group(0)) if m else None
    depth = 0
    for m in _BRACES.finditer(text, j):                        # jumps from brace to brace
        depth += 1 if m.group(0) == "{" else -1
        if depth == 0:
            return m.end(), text[j + 1: m.start()].strip()
    return None


def _boxes(text, limit=None):
    """The last `limit` outermost \\boxed{...} / \\fbox{...} / `\\boxed 5` of `text`, in order, as
    (start, end, content); [None] when the last box is unbalanced. Scans from the end, so a megabyte of
    boxes costs no more than the few that are kept."""
    out, end, limit = [], len(text), limit or MAX_ITEMS + 1
    while len(out) < limit:
        i = max(text.rfind("\\boxed", 0, end), text.rfind("\\fbox", 0, end))
        if i < 0:
            break
        got = _box_at(text, i)
        if got is None:
            return out or [None]                               # an unbalanced box ends the list
        if out and got[0] > out[0][0]:
            out[0] = (i,) + got                                # it encloses the box after it: keep the outer
        else:
            out.insert(0, (i,) + got)
        end = i
    return out


def last_boxed(text):
    """Content of the last brace-balanced \\boxed{...} (or \\fbox{...}, `\\boxed 5`), else None."""
    boxes = _boxes(text)
    return boxes[-1][2] if boxes and boxes[-1] is not None else None


_GAP_WORDS = re.compile(r"\\text\{\s*(?:and|or)\s*\}|(?<![A-Za-z])(?:and|or)(?![A-Za-z])|\\q?quad|\\[,;! ()\[\]]")


def boxed_answer(text):
    """The boxed answer of `text`: the last \\boxed{}, as the paper does, except that boxes joined only by
    separators ("\\boxed{1}, \\boxed{2}", "\\boxed{1} and \\boxed{2}") form one list answer "1, 2".
    None when there is no (balanced) box."""
    boxes = _boxes(text)
    if not boxes or boxes[-1] is None:
        return None
    k = len(boxes) - 1
    while k > 0 and re.fullmatch(r"[\s$,;.]*", _GAP_WORDS.sub(" ", text[boxes[k - 1][1]: boxes[k][0]])):
        k -= 1
    return ", ".join(b[2] for b in boxes[k:])


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


# ----------------------------------------------------------------------------- math: normalisation

MAX_ANSWER_CHARS = 1000       # longer answers are rejected outright (megabyte strings)
MAX_BRACE_DEPTH = 40
MAX_TOKENS = 400
MAX_PARSE_DEPTH = 80
MAX_POW_BITS = 65_536         # an exact power whose result would exceed this many bits is refused
MAX_EXACT_BITS = 100_000      # total bits of all exact intermediate results of one answer (towers of products)
MAX_FACTORIAL = 5000
MAX_SYMBOLIC_EXPONENT = 1000  # x^n with |n| above this is not handed to sympy
MAX_ITEMS = 32                # list/set/tuple items per answer


class _Reject(Exception):
    """The answer is out of bounds (too large / too deep / too long): compare as False."""


class _Undefined(Exception):
    """Division by zero (or 0 to a negative power): the value is undefined and equals nothing."""


_UNICODE = str.maketrans({"\u2212": "-", "\u2013": "-", "\u00d7": "\\times ", "\u22c5": "\\cdot ", "\u00b7": "\\cdot ",
                          "\u00f7": "\\div ", "\u2264": "\\le ", "\u2265": "\\ge ", "\u2260": "\\ne ", "\u03c0": "\\pi ",
                          "\u221a": "\\sqrt ", "\u221e": "\\infty ", "\u222a": "\\cup ", "\u2208": "\\in ",
                          "\u00b1": "\\pm ", "\u2213": "\\mp ", "\u2248": "\\approx ", "\u00a0": " ", "\u2009": " ",
                          "\u202f": " ", "\u200b": "", "\u200c": "", "\u200d": "", "\u2060": "", "\ufeff": ""})
_SUPERSCRIPT = {c: d for c, d in zip("\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079\u207b", "0123456789-")}
_SUPER_RE = re.compile("[" + "".join(_SUPERSCRIPT) + "]+")
_VULGAR = {"\u00bd": (1, 2), "\u2153": (1, 3), "\u2154": (2, 3), "\u00bc": (1, 4), "\u00be": (3, 4), "\u2155": (1, 5),
           "\u2159": (1, 6), "\u215b": (1, 8)}
_VULGAR_RE = re.compile("[" + "".join(_VULGAR) + "]")
_RELATION_CMDS = {"leqslant": "<=", "leq": "<=", "le": "<=", "geqslant": ">=", "geq": ">=", "ge": ">=",
                  "neq": "!=", "ne": "!=", "lt": "<", "gt": ">", "approx": "@"}
_RELATION_RE = re.compile(r"\\(" + "|".join(_RELATION_CMDS) + r")(?![a-zA-Z])")
_OVERLINE_RE = re.compile(r"(?<!\d)(\d*)\.(\d*)\\overline\s*\{?(\d{1,30})\}?")       # 0.\overline{3}, 0.1\overline{6}
_TEXT_RE = re.compile(r"\\(?:text|textnormal|mbox|mathrm|textbf|mathbf|textit|mathit|operatorname)\s*\{([^{}]*)\}")
_UNIT_TAIL = re.compile(r"(.*\S)\s*\\(?:text|textnormal|mbox|mathrm|textbf)\s*\{\s*[A-Za-z][A-Za-z\s.]*(?:\^\d)?\}"
                        r"(?:\^\{?\d\}?)?")
_UNIT_WORDS = re.compile(r"(-?[\d.,/]+)\s+[A-Za-z]{2}[A-Za-z.\s]*")             # "18 dollars", "28 percent"
_MATH_WORDS = re.compile(r"(?i)\b(pi|sqrt|infty|inf|sin|cos|tan|log|ln|exp|and|or)\b")
_LATEX_DROP = [r"\displaystyle", r"\left", r"\right", r"\bigl", r"\bigr", r"\Bigl", r"\Bigr", r"\big", r"\Big",
               r"\!", r"\,", r"\;", r"\:", r"\ ", "\\$", "$", r"\%", "%", "^\\circ", "^{\\circ}", "°", r"\circ", "~"]
_THOUSANDS_BANG = re.compile(r"(?<=\d),\\!\s*(?=\d{3}(?!\d))")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d{1,3}(?: \d{3})+(?:\.\d+)?")
_MIXED = re.compile(r"(-?)(\d+)\s+(\d+)\s*/\s*(\d+)")
_SPACES = re.compile(r"\s+")
_AND_OR = re.compile(r"(?<![A-Za-z\\])(?:and|or)(?![A-Za-z])")


def _repeating(m):
    """0.1\\overline{6} -> \\frac{1}{6}: exact value of a repeating decimal."""
    whole, fixed, rep = m.group(1) or "0", m.group(2), m.group(3)
    scale = 10 ** len(fixed)
    q = Fraction(int(whole)) + Fraction(int(fixed or "0"), scale) + Fraction(int(rep), scale * (10 ** len(rep) - 1))
    return f"\\frac{{{q.numerator}}}{{{q.denominator}}}"


def _text(m):
    """\\text{...}: separators become commas, "(C)" a letter, words a quoted string that never parses."""
    t = m.group(1).strip()
    if t in ("and", "or"):
        return ","
    if re.fullmatch(r"\(?[A-Za-z]\)?", t):
        return t.strip("()")
    return f'"{t}"' if re.search("[A-Za-z]{2}", t) else t


def _normalize(s):
    """Plain-text normal form of an answer string (no parsing yet). Every step is a linear scan."""
    s = s.strip()
    if len(s) > MAX_ANSWER_CHARS:
        raise _Reject("answer too long")
    depth = 0
    for c in s:
        depth += {"{": 1, "}": -1}.get(c, 0)
        if depth < 0 or depth > MAX_BRACE_DEPTH:
            raise _Reject("unbalanced or too deeply nested braces")
    if depth:
        raise _Reject("unbalanced braces")
    s = s.translate(_UNICODE)
    s = _SUPER_RE.sub(lambda m: "^{" + "".join(_SUPERSCRIPT[c] for c in m.group(0)) + "}", s)
    s = _VULGAR_RE.sub(lambda m: "\\frac{%d}{%d}" % _VULGAR[m.group(0)], s)
    s = s.replace("\\\\", "\\cr ")                                     # matrix rows: keep "\\\\ " whole
    for a in (r"\(", r"\)", r"\[", r"\]"):
        s = s.replace(a, " ")
    for a in ("\\dfrac", "\\tfrac", "\\cfrac"):
        s = s.replace(a, "\\frac")
    s = s.replace("{,}", ",").replace("\\qquad", ",").replace("\\quad", ",")
    s = _THOUSANDS_BANG.sub("", s)                                       # 32,\! 349 -> 32349
    s = _RELATION_RE.sub(lambda m: _RELATION_CMDS[m.group(1)], s)
    s = _OVERLINE_RE.sub(_repeating, s)
    for tok in _LATEX_DROP:
        s = s.replace(tok, " ")
    m = _UNIT_TAIL.fullmatch(s)
    while m and len(s) <= MAX_ANSWER_CHARS:                                # "5 \text{ cm}" -> "5"
        s = m.group(1)
        m = _UNIT_TAIL.fullmatch(s)
    s = _TEXT_RE.sub(_text, s)
    s = _AND_OR.sub(",", s)
    s = s.strip().rstrip(".").strip()
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "").replace(" ", "")                           # 1,000,000 and 1 000 000
    m = _MIXED.fullmatch(s)                                                # mixed number 2 1/2
    if m:
        s = f"{m.group(1)}({m.group(2)}+{m.group(3)}/{m.group(4)})"
    m = _UNIT_WORDS.fullmatch(s)
    if m and not _MATH_WORDS.search(s):
        s = m.group(1)
    return _SPACES.sub(" ", s).strip()


# ----------------------------------------------------------------------------- math: parser

_FUNCS = {"sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh",
          "tanh", "log", "ln", "exp"}
_CONSTS = {"pi": "pi", "infty": "oo", "infin": "oo", "inf": "oo", "e": "E", "i": "I"}
_PLAIN_NAMES = re.compile(r"(?<![\\a-zA-Z])(sqrt|pi|infty|inf|sin|cos|tan|cot|sec|csc|arcsin|arccos|"
                          r"arctan|sinh|cosh|tanh|log|ln|exp|frac|cdot|times)(?![a-zA-Z])")
_TOKEN_RE = re.compile(r"\s*(?:(\d+\.\d*|\.\d+|\d+)|(\\[a-zA-Z]+|\\[{}|])|([a-zA-Z])|(\*\*|[-+*/^!(){}\[\],|_]))")


def _tokenize(s):
    s = _PLAIN_NAMES.sub(r"\\\1", s)
    if re.search(r"[a-zA-Z]{3,}", re.sub(r"\\[a-zA-Z]+", " ", s)):
        raise ValueError("a word, not a formula")          # "listen" must not equal "silent" as l*i*s*t*e*n
    toks, pos = [], 0
    while pos < len(s):
        m = _TOKEN_RE.match(s, pos)
        if m is None:
            if s[pos:].strip() == "":
                break
            raise ValueError(f"bad character {s[pos]!r}")
        tok = m.group(m.lastindex)
        toks.append("^" if tok == "**" else tok)
        pos = m.end()
        if len(toks) > MAX_TOKENS:
            raise _Reject("too many tokens")
    return toks


class _Parser:
    """Recursive descent over tokens -> nested tuples:
    ("num", Fraction) ("sym", name) ("const", pi|E|oo|I) ("add"|"mul"|"div"|"pow", a, b) ("neg", a)
    ("pm", a, b) (a plus-or-minus b) ("abs", a) ("fact", a) ("sqrt", a) ("root", a, n) ("func", name, a)
    ("log", a, base) ("binom", n, k). Implicit products (2x, 2\\pi, (a)(b)) never start with a digit:
    "2 3", "2e1" and "x2" do not parse (adjacent numbers are not multiplied)."""

    def __init__(self, toks):
        self.toks, self.i, self.depth = toks, 0, 0

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expect=None):
        tok = self.peek()
        if tok is None or (expect is not None and tok != expect):
            raise ValueError(f"expected {expect!r}, got {tok!r}")
        self.i += 1
        return tok

    def parse(self):
        node = self.expr()
        if self.peek() is not None:
            raise ValueError(f"trailing token {self.peek()!r}")
        return node

    def enter(self):
        self.depth += 1
        if self.depth > MAX_PARSE_DEPTH:
            raise _Reject("nesting too deep")

    def expr(self):
        self.enter()
        node = ("num", Fraction(0)) if self.peek() in ("\\pm", "\\mp") else self.term()
        while self.peek() in ("+", "-", "\\pm", "\\mp"):
            op = self.take()
            rhs = self.term()
            node = ("add", node, rhs) if op == "+" else ("add", node, ("neg", rhs)) if op == "-" else ("pm", node, rhs)
        self.depth -= 1
        return node

    def starts_primary(self, tok):
        if tok is None:
            return False
        return (tok.isalpha() or tok in ("(", "{", "[")
                or (tok.startswith("\\") and tok[1:] in _FUNCS | set(_CONSTS) | {"frac", "sqrt", "binom"}))

    def term(self):
        node = self.unary()
        while True:
            tok = self.peek()
            if tok in ("*", "\\cdot", "\\times"):
                self.take()
                node = ("mul", node, self.unary())
            elif tok in ("/", "\\div"):
                self.take()
                node = ("div", node, self.unary())
            elif self.starts_primary(tok):                      # implicit product: 2x, 2\pi, (a)(b)
                node = ("mul", node, self.power())
            else:
                return node

    def unary(self):
        if self.peek() in ("-", "+"):
            op = self.take()
            self.enter()
            node = self.unary()
            self.depth -= 1
            return ("neg", node) if op == "-" else node
        return self.power()

    def power(self):
        base = self.postfix()
        if self.peek() == "^":
            self.take()
            self.enter()
            exp = self.unary() if self.peek() != "{" else self.group("{", "}")
            self.depth -= 1
            return ("pow", base, exp)
        return base

    def postfix(self):
        node = self.primary()
        while self.peek() == "!":
            self.take()
            node = ("fact", node)
        return node

    def group(self, open_, close):
        self.take(open_)
        node = self.expr()
        self.take(close)
        return node

    def arg(self):
        """A LaTeX macro argument: {expr} or a single token (\\frac12 -> 1, 2)."""
        tok = self.peek()
        if tok == "{":
            return self.group("{", "}")
        if tok is not None and tok[0].isdigit() and len(tok) > 1:
            self.toks[self.i] = tok[1:]
            return ("num", Fraction(tok[0]))
        return self.primary()

    def primary(self):
        tok = self.peek()
        if tok is None:
            raise ValueError("unexpected end")
        self.enter()
        try:
            if tok[0].isdigit() or tok[0] == ".":
                self.take()
                node = ("num", Fraction(tok))
                if self.peek() == "\\frac" and re.fullmatch(r"\d+", tok):   # mixed number 2\frac{1}{2}
                    save = self.i
                    self.take()
                    a, b = self.arg(), self.arg()
                    if a[0] == "num" and b[0] == "num":
                        return ("add", node, ("div", a, b))
                    self.i = save
                return node
            if tok in ("(", "[", "{"):
                return self.group(tok, {"(": ")", "[": "]", "{": "}"}[tok])
            if tok == "|":
                return ("abs", self.group("|", "|"))
            if tok.isalpha():
                self.take()
                name = tok
                if self.peek() == "_":                              # x_1, a_{n}
                    self.take()
                    sub = self.take()
                    if sub == "{":
                        parts = []
                        while self.peek() not in ("}", None):
                            parts.append(self.take())
                        self.take("}")
                        sub = "".join(parts)
                    name = f"{tok}_{sub}"
                return ("const", _CONSTS[name]) if name in ("e", "i") else ("sym", name)
            if tok.startswith("\\"):
                cmd = tok[1:]
                self.take()
                if cmd in _CONSTS:
                    return ("const", _CONSTS[cmd])
                if cmd == "frac":
                    return ("div", self.arg(), self.arg())
                if cmd == "binom":
                    return ("binom", self.arg(), self.arg())
                if cmd == "sqrt":
                    if self.peek() == "[":
                        n = self.group("[", "]")
                        return ("root", self.arg(), n)
                    return ("sqrt", self.arg())
                if cmd in _FUNCS:
                    base = None
                    if cmd == "log" and self.peek() == "_":
                        self.take()
                        base = self.arg()
                    if self.peek() == "^":                          # \sin^2 x
                        self.take()
                        p = self.arg()
                        return ("pow", self.func(cmd, base), p)
                    return self.func(cmd, base)
            raise ValueError(f"unsupported token {tok!r}")
        finally:
            self.depth -= 1

    def func(self, name, base):
        a = self.power()
        if name == "log" and base is not None:
            return ("log", a, base)
        return ("func", name, a)


def _expand_pm(node, limit=8):
    """All trees a \\pm tree stands for: a \\pm b -> [a + b, a - b] (at most `limit`, else _Reject)."""
    if node[0] == "pm":
        outs = [("add", a, b) for a in _expand_pm(node[1]) for b in _expand_pm(node[2])]
        outs += [("add", a, ("neg", b)) for a in _expand_pm(node[1]) for b in _expand_pm(node[2])]
    else:
        outs = [()]
        for c in node[1:]:
            alts = _expand_pm(c) if isinstance(c, tuple) else [c]
            outs = [o + (a,) for o in outs for a in alts]
        outs = [(node[0],) + o for o in outs]
    if len(outs) > limit:
        raise _Reject("too many \\pm")
    return outs


# ----------------------------------------------------------------------------- math: exact arithmetic

def _bits(q):
    return max(abs(q.numerator).bit_length(), q.denominator.bit_length())


def _exact(node, budget=None):
    """Fraction value of a purely rational tree; None if symbolic/irrational; _Undefined on division by
    zero; _Reject when one power or all intermediate results together exceed the bit caps (towers)."""
    budget = [MAX_EXACT_BITS] if budget is None else budget
    v = _exact_rec(node, budget)
    if v is not None:
        budget[0] -= _bits(v)
        if budget[0] < 0:
            raise _Reject("exact value too large")
    return v


def _exact_rec(node, budget):
    op = node[0]
    if op == "num":
        return node[1]
    if op in ("add", "mul", "div"):
        a, b = _exact(node[1], budget), _exact(node[2], budget)
        if op == "div" and b == 0:
            raise _Undefined("division by zero")
        if a is None or b is None:
            return None
        if _bits(a) + _bits(b) > MAX_POW_BITS:
            raise _Reject("exact value too large")
        return a + b if op == "add" else a * b if op == "mul" else a / b
    if op in ("neg", "abs"):
        a = _exact(node[1], budget)
        return None if a is None else -a if op == "neg" else abs(a)
    if op == "pow":
        b, e = _exact(node[1], budget), _exact(node[2], budget)
        if b == 0 and e is not None and e < 0:
            raise _Undefined("0 to a negative power")
        if e is not None and e.denominator == 1 and abs(e) > MAX_POW_BITS and (b is None or abs(b) != 1):
            if b != 0:
                raise _Reject("exponent too large")
        if b is None or e is None or e.denominator != 1:
            return None
        if b == 0:
            return Fraction(int(e == 0))
        if abs(b) == 1:
            return b ** (int(e) % 2)
        if _bits(b) * abs(e) > MAX_POW_BITS:
            raise _Reject("power too large")
        return b ** int(e)
    if op == "fact":
        a = _exact(node[1], budget)
        if a is None or a.denominator != 1 or a < 0:
            return None
        if a > MAX_FACTORIAL:
            raise _Reject("factorial too large")
        return Fraction(math.factorial(int(a)))
    if op == "binom":
        n, k = _exact(node[1], budget), _exact(node[2], budget)
        if n is None or k is None or n.denominator != 1 or k.denominator != 1 or n > MAX_FACTORIAL:
            return None
        return Fraction(math.comb(int(n), int(k))) if 0 <= k <= n else Fraction(0)
    if op in ("sqrt", "root"):
        a = _exact(node[1], budget)
        n = Fraction(2) if op == "sqrt" else _exact(node[2], budget)
        if a is None or n is None or n.denominator != 1 or n <= 0 or a < 0 or n > 64:
            return None
        num, den = _int_root(a.numerator, int(n)), _int_root(a.denominator, int(n))
        return None if num is None or den is None else Fraction(num, den)
    return None


def _int_root(x, n):
    r = round(x ** (1.0 / n)) if x.bit_length() < 1000 else None
    if r is None:
        return None
    for c in (r - 1, r, r + 1):
        if c >= 0 and c ** n == x:
            return c
    return None


def _check_bounds(node):
    """Refuse trees sympy could hang on: huge numeric exponents/factorials anywhere (towers)."""
    op = node[0]
    if op == "pow":
        e = _exact(node[2])                                     # raises _Reject on towers
        if e is not None and abs(e) > MAX_SYMBOLIC_EXPONENT and (_exact(node[1]) is None or e.denominator != 1):
            raise _Reject("symbolic power too large")
    if op in ("fact", "binom"):
        n = _exact(node[1])
        if n is not None and n > MAX_FACTORIAL:
            raise _Reject("factorial too large")
    for child in node[1:]:
        if isinstance(child, tuple):
            _check_bounds(child)


def _interval(node):
    """A rigorous enclosure (mpmath interval, 30 digits) of a real tree's value, symbols set to fixed generic
    values; None where it cannot be had (complex, unsupported function). Disjoint enclosures prove two
    values differ; overlapping ones prove nothing (only used to reject, or to pair up set items)."""
    op = node[0]
    if op == "num":
        return iv.mpf(node[1].numerator) / node[1].denominator
    if op == "sym":
        return 1 + iv.sqrt(2 + zlib.crc32(node[1].encode()) % 997) / 100   # generic, distinct per name
    if op == "const":
        return {"pi": iv.pi, "E": iv.e}.get(node[1])
    kids = [_interval(c) if isinstance(c, tuple) else c for c in node[1:]]
    if any(k is None for k in kids):
        return None
    x = kids[0]
    if op in ("add", "mul", "div", "pow"):
        y = kids[1]
        if op == "pow":
            if node[2][0] == "num" and node[2][1].denominator == 1:
                return x ** int(node[2][1])
            return iv.exp(y * iv.log(x)) if x.a > 0 else None
        return x + y if op == "add" else x * y if op == "mul" else (x / y if not 0 in y else None)
    if op == "neg":
        return -x
    if op == "abs":
        return abs(x) if (x.a >= 0 or x.b <= 0) else None
    if op == "sqrt":
        return iv.sqrt(x) if x.a >= 0 else None
    if op == "func" and node[1] in ("sin", "cos", "tan", "exp", "log", "ln"):
        y = kids[1]
        if node[1] in ("log", "ln"):
            return iv.log(y) if y.a > 0 else None
        return {"sin": iv.sin, "cos": iv.cos, "tan": iv.tan, "exp": iv.exp}[node[1]](y)
    return None


# ----------------------------------------------------------------------------- math: answer structure

def _split_top(s, seps=(",",)):
    """Split at top-level separators (outside (), [], {})."""
    if not any(x in s for x in seps):
        return [s.strip()]
    parts, depth, cur, i = [], 0, [], 0
    while i < len(s):
        c = s[i]
        if c in "([{":
            depth += 1
            if depth > MAX_BRACE_DEPTH:
                raise _Reject("nesting too deep")
        elif c in ")]}":
            depth -= 1
        sep = next((x for x in seps if s.startswith(x, i)), None) if depth == 0 else None
        if sep:
            parts.append("".join(cur))
            cur, i = [], i + len(sep)
            continue
        cur.append(c)
        i += 1
    parts.append("".join(cur))
    if len(parts) > MAX_ITEMS:
        raise _Reject("too many items")
    return [p.strip() for p in parts]


def _outer_brackets(s):
    """(open, close) if s is wrapped by one bracket pair enclosing everything, else None."""
    if len(s) < 2 or s[0] not in "([{" or s[-1] not in ")]}":
        return None
    depth = 0
    for k, c in enumerate(s):
        depth += 1 if c in "([{" else -1 if c in ")]}" else 0
        if depth == 0 and k < len(s) - 1:
            return None
    return s[0], s[-1]


_LABEL_RE = re.compile(r"[A-Za-z_{}()\[\],|:/\\' ]+")
_REL_OPS = ("<=", ">=", "!=", "@", "\\in", "=", "<", ">")
_REL_CHARS = re.compile(r"[<>=@]|!=|\\in(?![a-zA-Z])")
_MATRIX_RE = re.compile(r"\\begin\{([pbB]?matrix|array)\}(?:\{[lcr|]*\})?(.*)\\end\{\1\}", re.DOTALL)


def _is_label(s):
    """'x', 'a_{37}', 'f(x)', '(p,q)', '|AB|', 'A:B', 'V_1:V_2', '\\frac{NO}{BO}': a name, not a value."""
    core = re.sub(r"_\{[^{}]*\}|_\w|(?<=[A-Za-z])\([^()]*\)(?=\s*$)", "", s)      # subscripts, f(2)
    return bool(core) and _LABEL_RE.fullmatch(core) is not None and re.search("[A-Za-z]", core) is not None \
        and not re.search(r"\\(?!frac\b)[a-zA-Z]+", core)


def _value(s):
    """Structured value of an answer piece without relations: ("val", tree, exact, enclosure) ("undef",)
    ("text", str) ("set", items) ("tuple", open, close, items) ("matrix", rows) ("ratio", items)."""
    s = s.strip()
    m = _MATRIX_RE.fullmatch(s)
    if m:
        rows = [r for r in _split_top(m.group(2), ("\\cr",)) if r.strip()]
        return ("matrix", [[_value(c) for c in _split_top(r, ("&",))] for r in rows])
    if s.startswith("\\{") and s.endswith("\\}"):
        return ("set", [_value(p) for p in _split_top(s[2:-2], (",", ";")) if p])
    if "\\cup" in s:
        return ("set", [_value(p) for p in _split_top(s, ("\\cup",))])
    br = _outer_brackets(s)
    if br:
        items = _split_top(s[1:-1], (",", ";"))
        if len(items) > 1 and br[0] == "{":
            return ("set", [_value(p) for p in items if p])
        if len(items) > 1:
            return ("tuple", br[0], br[1], [_value(p) for p in items])
        if _MATRIX_RE.fullmatch(s[1:-1].strip()):
            return _value(s[1:-1])
    parts = _split_top(s, (":",))
    if len(parts) > 1:
        return ("ratio", [_value(p) for p in parts])
    try:
        toks = _tokenize(s)
        tree = _Parser(toks).parse() if toks else None
    except (ValueError, ZeroDivisionError, IndexError, KeyError):
        tree = None
    if tree is None:
        return ("text", re.sub(r"\s+", " ", s.replace('"', "")).strip().casefold())
    trees = _expand_pm(tree) if "\\pm" in toks or "\\mp" in toks else [tree]
    vals = []
    for t in trees:
        _check_bounds(t)
        try:
            vals.append(("val", t, _exact(t), None))
        except _Undefined:
            vals.append(("undef",))
    return vals[0] if len(vals) == 1 else ("set", vals)


def _linear(node, var):
    """(a, b) with node == a*var + b, a a Fraction and b a tree free of var; None if not of that form."""
    op = node[0]
    if op == "sym":
        return (Fraction(1), ("num", Fraction(0))) if node[1] == var else (Fraction(0), node)
    if op in ("num", "const"):
        return Fraction(0), node
    if op in ("add", "neg"):
        parts = [_linear(c, var) for c in node[1:]]
        if None in parts:
            return None
        if op == "neg":
            return -parts[0][0], ("neg", parts[0][1])
        return parts[0][0] + parts[1][0], ("add", parts[0][1], parts[1][1])
    if op in ("mul", "div"):
        x, y = _linear(node[1], var), _linear(node[2], var)
        if op == "mul" and x is not None and y is not None and x[0] == 0 and y[0] != 0:
            return _linear(("mul", node[2], node[1]), var)    # 2x: the coefficient on the right
        if x is None or y is None or y[0] != 0:
            return None
        k = _exact(node[2])
        if x[0] != 0 and (k is None or k == 0):
            return None
        if op == "mul":
            if x[0] == 0:
                return None if _has_sym(node[2], var) else (Fraction(0), node)
            return x[0] * k, ("mul", x[1], node[2])
        return (x[0] / k if x[0] else Fraction(0)), ("div", x[1], node[2])
    return None if _has_sym(node, var) else (Fraction(0), node)


def _has_sym(node, name=None):
    if node[0] == "sym":
        return name is None or node[1] == name
    return any(isinstance(c, tuple) and _has_sym(c, name) for c in node[1:])


def _syms(node, out):
    if node[0] == "sym":
        out.add(node[1])
    for c in node[1:]:
        if isinstance(c, tuple):
            _syms(c, out)
    return out


_OO = ("val", ("const", "oo"), None, None)
_NEG_OO = ("val", ("neg", ("const", "oo")), None, None)


def _relation(parts, ops):
    """Structure of a relation chain: ("label", name, value) for "x = 2" / "(p,q) = (3,2)" (the last part
    is the value), ("ivl", var, lo_closed, hi_closed, lo, hi) for inequalities in one variable,
    ("rel", op, tree) with op in =, !=, <, <= for the rest (tree = lhs - rhs, relation `tree op 0`)."""
    if "@" in ops:                                              # x = 1/3 \approx 0.33: the exact part counts
        k = ops.index("@")
        parts, ops = (parts[:k + 1], ops[:k]) if "=" in ops[:k] else (parts, ["=" if o == "@" else o for o in ops])
    if not ops:
        return _value(parts[0])
    if all(o == "=" for o in ops) and _is_label(parts[0]):
        return ("label", re.sub(r"\s+", "", parts[0]), _value(parts[-1]))
    if all(o == "=" for o in ops) and (len(ops) > 1 or not re.search("[A-Za-z]", "".join(parts))):
        return _value(parts[-1])                               # 85 + 15 = 100: the last part
    if ops == ["\\in"]:
        v = _value(parts[1])
        if v[0] == "tuple" and len(v[3]) == 2 and v[1] in "([" and v[2] in ")]":
            return ("ivl", re.sub(r"\s+", "", parts[0]), v[1] == "[", v[2] == "]", v[3][0], v[3][1])
        return ("label", re.sub(r"\s+", "", parts[0]), v)
    if "\\in" in ops or "@" in ops:
        raise ValueError("unsupported relation")
    name = None
    if len(ops) == 2 and _is_label(parts[1]) and not _is_label(parts[0]) and not _is_label(parts[2]):
        name, parts = re.sub(r"\s+", "", parts[1]), [parts[0], "x", parts[2]]   # 0 < f(x) < 1: interval of f(x)
    trees = []
    for p in parts:
        v = _value(p)
        if v[0] != "val":
            raise ValueError("relation between non-values")
        trees.append(v[1])
    if len(ops) == 2 and ops[0] in "<<=" and ops[1] in "<<=" or len(ops) == 2 and ops[0] in ">>=" and ops[1] in ">>=":
        if trees[1][0] == "sym" and not _has_sym(trees[0]) and not _has_sym(trees[2]):      # a < x <= b
            if ops[0][0] == ">":
                trees, ops = trees[::-1], [ops[1].replace(">", "<"), ops[0].replace(">", "<")]
            return ("ivl", name or trees[1][1], ops[0] == "<=", ops[1] == "<=", _value_of(trees[0]),
                    _value_of(trees[2]))
        raise ValueError("unsupported chain")
    if len(ops) != 1:
        raise ValueError("unsupported chain")
    op, lhs, rhs = ops[0], trees[0], trees[1]
    if op in (">", ">="):
        op, lhs, rhs = op.replace(">", "<"), rhs, lhs
    diff = ("add", lhs, ("neg", rhs))
    names = _syms(diff, set())
    if op in ("<", "<=") and len(names) == 1:
        var = names.pop()
        lin = _linear(diff, var)                               # a*var + b op 0  ->  var op -b/a (a > 0)
        if lin is not None and lin[0] != 0:
            bound = _value_of(("div", ("neg", lin[1]), ("num", lin[0])))
            closed = op == "<="
            return ("ivl", var, closed, False, bound, _OO) if lin[0] < 0 else ("ivl", var, False, closed, _NEG_OO, bound)
    return ("rel", op, diff)


def _value_of(tree):
    _check_bounds(tree)
    try:
        return ("val", tree, _exact(tree), None)
    except _Undefined:
        return ("undef",)


def _item(s):
    """Structure of one answer item (a piece between top-level commas)."""
    if not _REL_CHARS.search(s):
        return _value(s)
    parts, ops, depth, i, cur = [], [], 0, 0, 0
    while i < len(s):                                           # split at top-level relation operators
        c = s[i]
        depth += 1 if c in "([{" else -1 if c in ")]}" else 0
        op = next((o for o in _REL_OPS if s.startswith(o, i)), None) if depth == 0 else None
        if op == "\\in" and s[i + 3: i + 4].isalpha():
            op = None                                           # \infty
        if op:
            parts.append(s[cur:i])
            ops.append(op)
            i = cur = i + len(op)
            continue
        i += 1
    parts.append(s[cur:])
    if len(ops) > 8 or any(not p.strip() for p in parts):
        raise ValueError("bad relation")
    return _relation(parts, ops)


def _answer(s):
    """Structured form of a normalised answer: a list of items is a set ("1, 2" == "2, 1" == "\\{1, 2\\}")."""
    items = [p for p in _split_top(s, (",", ";")) if p]
    if not items:
        raise ValueError("empty answer")
    structs = []
    for p in items:
        try:
            structs.append(_item(p))
        except ValueError:
            structs.append(("text", re.sub(r"\s+", " ", p.replace('"', "")).strip().casefold()))
    return structs[0] if len(structs) == 1 else ("set", structs)


# ----------------------------------------------------------------------------- math: sympy worker

def _to_json(node):
    if node[0] == "num":
        return ["num", node[1].numerator, node[1].denominator]
    return [node[0]] + [_to_json(c) if isinstance(c, tuple) else c for c in node[1:]]


def _math_worker():
    """Child-process loop: read a JSON line of [tree, tree, mode] triples, answer one line of 1/0 verdicts.
    Trees only, never text. mode "eq": a == b; "prop": a == k*b for a constant k != 0 (equations);
    "pos": the same with k > 0 (inequalities). Equal only when proven: no numeric tolerance."""
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    import sympy as sp
    funcs = {"sin": sp.sin, "cos": sp.cos, "tan": sp.tan, "cot": sp.cot, "sec": sp.sec, "csc": sp.csc,
             "arcsin": sp.asin, "arccos": sp.acos, "arctan": sp.atan, "sinh": sp.sinh, "cosh": sp.cosh,
             "tanh": sp.tanh, "log": sp.log, "ln": sp.log, "exp": sp.exp}
    consts = {"pi": sp.pi, "E": sp.E, "oo": sp.oo, "I": sp.I}

    def build(n):
        op, a = n[0], n[1:]
        if op == "num":
            return sp.Rational(a[0], a[1])
        if op == "sym":
            return sp.Symbol(a[0])
        if op == "const":
            return consts[a[0]]
        x = [build(c) if isinstance(c, list) else c for c in a]
        return {"add": lambda: x[0] + x[1], "mul": lambda: x[0] * x[1], "div": lambda: x[0] / x[1],
                "pow": lambda: sp.Pow(x[0], x[1]), "neg": lambda: -x[0], "fact": lambda: sp.factorial(x[0]),
                "binom": lambda: sp.binomial(x[0], x[1]), "sqrt": lambda: sp.sqrt(x[0]), "abs": lambda: sp.Abs(x[0]),
                "root": lambda: sp.root(x[0], x[1]), "func": lambda: funcs[x[0]](x[1]),
                "log": lambda: sp.log(x[0], x[1])}[op]()

    def is_zero(d):
        """Proven zero: expansion, simplification, or (algebraic numbers) a minimal polynomial of x."""
        if d == 0:
            return True
        if d.is_number:
            try:
                v = d.evalf(15, strict=True)                    # 15 correct digits of a nonzero: proven != 0
                if v != 0:
                    return False
            except Exception:
                pass
        if sp.expand(d) == 0 or sp.simplify(d) == 0:
            return True
        if d.is_number and d.is_algebraic and not d.has(sp.I):
            x = sp.Symbol("x")
            return sp.minimal_polynomial(d, x) == x
        return False

    def equal(a, b, mode):
        a, b = build(a), build(b)
        if any(v.has(sp.zoo, sp.nan) for v in (a, b)):          # undefined equals nothing
            return False
        if mode == "eq":
            if a == b:
                return True
            if a.is_infinite or b.is_infinite:
                return False
            return is_zero(a - b)
        if a == 0 or b == 0:
            return False
        k = sp.simplify(a / b)
        return bool(k.is_number and k.is_finite and k != 0 and k.is_real is not False
                    and (mode == "prop" or k.is_positive))

    equal(["pow", ["add", ["sym", "x"], ["num", 1, 1]], ["num", 2, 1]], ["sqrt", ["num", 8, 1]], "eq")  # warm caches
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        verdicts = []
        try:
            for a, b, mode in json.loads(line):
                try:
                    verdicts.append("1" if equal(a, b, mode) else "0")
                except Exception:
                    verdicts.append("0")
        except Exception:
            verdicts = []
        sys.stdout.write("".join(verdicts) + "\n")
        sys.stdout.flush()


iv.dps = 30
_worker = {"proc": None, "ready": False}
_worker_lock = threading.Lock()


def _start_worker():
    here = os.path.dirname(os.path.abspath(__file__))
    code = f"import sys; sys.path.insert(0, {here!r}); import rewards; rewards._math_worker()"
    _worker["proc"] = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, bufsize=0)
    _worker["ready"] = False


def _kill_worker(restart=False):
    """Kill the worker; with `restart`, start its replacement now, so it imports sympy while the caller
    goes on (the next symbolic check then rarely waits for a cold start)."""
    p = _worker["proc"]
    _worker["proc"] = None
    if p is not None:
        p.kill()
        p.wait()
    if restart:
        _start_worker()


def _worker_readline(p, timeout):
    buf, deadline = b"", time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([p.stdout], [], [], left)[0]:
            return None
        chunk = os.read(p.stdout.fileno(), 4096)
        if not chunk:
            return None
        buf += chunk
    return buf.decode().strip()


def _sympy_verdicts(pairs, timeout):
    """{(mode, a, b): bool} from the worker; all False on timeout, after which the worker is killed and
    forgotten (a fresh one starts on the next call)."""
    with _worker_lock:
        if _worker["proc"] is None or _worker["proc"].poll() is not None:
            _start_worker()
        p = _worker["proc"]
        if not _worker["ready"]:                                # a cold start (sympy import) is waited for once
            if _worker_readline(p, 120.0) != "ready":
                _kill_worker()
                return {}
            _worker["ready"] = True
        try:
            p.stdin.write((json.dumps([[_to_json(a), _to_json(b), mode] for mode, a, b in pairs]) + "\n").encode())
        except (BrokenPipeError, OSError):
            _kill_worker()
            return {}
        reply = _worker_readline(p, timeout)
        if reply is None or len(reply) != len(pairs):
            _kill_worker(restart=True)
            return {}
        return {key: r == "1" for key, r in zip(pairs, reply)}


# ----------------------------------------------------------------------------- math: comparison

class _Pending:
    """The pairs only sympy can settle. Pass 1 records them and answers True (optimistic); pass 2, after one
    round trip to the worker, answers with its verdicts. A pair is looked up in both orders (symmetry)."""

    def __init__(self):
        self.pairs, self.verdicts, self.enclosures = {}, None, {}

    def __call__(self, ta, tb, mode):
        if self.verdicts is None:
            if (mode, tb, ta) not in self.pairs:
                self.pairs[(mode, ta, tb)] = None
            return True
        return self.verdicts.get((mode, ta, tb), self.verdicts.get((mode, tb, ta), False))

    def enclosure(self, v):
        if id(v) not in self.enclosures:                        # value nodes live as long as the call
            try:
                e = iv.mpf(v[2].numerator) / v[2].denominator if v[2] is not None else _interval(v[1])
            except Exception:                                   # overflow, log of 0, ...: no enclosure
                e = None
            self.enclosures[id(v)] = (float(e.a), float(e.b), e) if e is not None else None
        return self.enclosures[id(v)]


_PLAIN_OPS = {"num", "sym", "add", "neg", "mul", "abs", "sqrt"}


def _plain(node):
    """A tree that is defined everywhere (no division, function, infinity): equal trees are equal values."""
    if node[0] == "const":
        return node[1] != "oo"
    if node[0] == "pow":
        return _plain(node[1]) and node[2][0] == "num" and node[2][1].denominator == 1 and node[2][1] > 0
    return node[0] in _PLAIN_OPS and all(_plain(c) for c in node[1:] if isinstance(c, tuple))


def _same_val(a, b, ask):
    ta, ea, tb, eb = a[1], a[2], b[1], b[2]
    if ea is not None and eb is not None:
        return ea == eb
    if ta == tb and (_plain(ta) or ta in (_OO[1], _NEG_OO[1])):
        return True
    ia, ib = ask.enclosure(a), ask.enclosure(b)
    if ia is not None and ib is not None and (ia[2].b < ib[2].a or ib[2].b < ia[2].a):
        return False                                            # rigorously different
    return ask(ta, tb, "eq")


def _same_seq(xs, ys, ask):
    return len(xs) == len(ys) and all(_same(x, y, ask) for x, y in zip(xs, ys))


def _distinct(items):
    """Items without literal repeats (same rational, same text, same everywhere-defined tree)."""
    seen, out = set(), []
    for v in items:
        key = (("q", v[2]) if v[0] == "val" and v[2] is not None else ("t", v[1]) if v[0] == "val" and _plain(v[1])
               else ("s", v[1]) if v[0] == "text" else ("id", id(v)))
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


def _same_set(xs, ys, ask):
    """Set equality: every item has an equal partner on the other side (duplicates and order ignored)."""
    xs, ys = _distinct(xs), _distinct(ys)
    boxes = {id(v): ask.enclosure(v) for v in xs + ys if v[0] == "val"}

    def apart(x, y):                                           # float bounds first: the cheap common case
        ex, ey = boxes.get(id(x)), boxes.get(id(y))
        return ex is not None and ey is not None and (ex[1] < ey[0] or ey[1] < ex[0])
    hits = [[not apart(x, y) and _same(x, y, ask) for y in ys] for x in xs]   # all pairs: no order effect
    return all(any(row) for row in hits) and all(any(col) for col in zip(*hits)) and bool(xs) == bool(ys)


def _same(a, b, ask):
    """Structural comparison of two answer structures; scalar pairs sympy must settle go through `ask`."""
    ka, kb = a[0], b[0]
    if "undef" in (ka, kb):
        return False
    if ka == "label" and kb == "label":
        return a[1] == b[1] and _same(a[2], b[2], ask)
    if "label" in (ka, kb):
        a, b = (a, b) if ka == "label" else (b, a)
        if b[0] == "rel":                                      # y = x/2 + 1  vs  x - 2y + 2 = 0
            lab = _value(a[1])
            return (b[1] == "=" and lab[0] == "val" and a[2][0] == "val"
                    and ask(("add", lab[1], ("neg", a[2][1])), b[2], "prop"))
        return _same(a[2], b, ask)
    if {ka, kb} == {"tuple", "ivl"}:
        a, b = (a, b) if ka == "ivl" else (b, a)
        return (len(b[3]) == 2 and b[1] in "([" and b[2] in ")]"
                and _same(a, ("ivl", None, b[1] == "[", b[2] == "]", b[3][0], b[3][1]), ask))
    if ka != kb:
        return False
    if ka == "text":
        return a[1] == b[1]
    if ka == "val":
        return _same_val(a, b, ask)
    if ka == "set":
        return _same_set(a[1], b[1], ask)
    if ka == "tuple":
        return a[1:3] == b[1:3] and _same_seq(a[3], b[3], ask)
    if ka == "ratio":
        return _same_seq(a[1], b[1], ask)
    if ka == "matrix":
        return len(a[1]) == len(b[1]) and all(_same_seq(r, s, ask) for r, s in zip(a[1], b[1]))
    if ka == "ivl":
        return ((a[1] is None or b[1] is None or a[1] == b[1]) and a[2:4] == b[2:4]
                and _same(a[4], b[4], ask) and _same(a[5], b[5], ask))
    if ka == "rel":
        return a[1] == b[1] and ask(a[2], b[2], "pos" if a[1] in ("<", "<=") else "prop")
    return False


def _parse_answer(s):
    """Structured answer of a string (boxes taken out first), or None."""
    if len(s) > MAX_COMPLETION_CHARS:
        return None
    for _ in range(3):                                          # \boxed{\boxed{7}}
        if "\\boxed" not in s and "\\fbox" not in s:
            break
        s = boxed_answer(s) or ""
    s = _normalize(s)
    return _answer(s) if s else None


def math_equal(pred, gold, timeout=1.0):
    """True if the answer `pred` is mathematically equal to `gold` (symmetric). Exact: rationals compare
    exactly, symbolic forms must be proven equal by a sympy worker bounded by `timeout` seconds; undefined
    values equal nothing. Never raises on model text."""
    try:
        if not isinstance(pred, str) or not isinstance(gold, str):
            return False
        a, b = _parse_answer(pred), _parse_answer(gold)
        if a is None or b is None:
            return False
        ask = _Pending()
        if not _same(a, b, ask):
            return False
        if not ask.pairs:
            return True
        ask.verdicts = _sympy_verdicts(list(ask.pairs), timeout)
        return _same(a, b, ask)
    except Exception:                   # _Reject, RecursionError, MemoryError, ...: model text never raises
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


def _strip_fences(code):
    m = re.search(r"```(?:python|py)?\s*\n(.*?)```", code, re.DOTALL)
    return m.group(1) if m else code


# ----------------------------------------------------------------------------- code sandbox

IS_ROOT = os.geteuid() == 0
SANDBOX_UIDS = range(61000, 61256)    # one private uid per running program (root only), across processes
_UID_LOCKS = "/tmp/nano_r1_sandbox_uids"


def _claim_uid():
    """A sandbox uid no other thread or process is using: an flock on a per-uid file (released by
    _release_uid or when we die). Several training processes can share one machine safely."""
    os.makedirs(_UID_LOCKS, mode=0o700, exist_ok=True)
    while True:
        for uid in SANDBOX_UIDS:
            fd = os.open(os.path.join(_UID_LOCKS, str(uid)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return uid, fd
            except BlockingIOError:
                os.close(fd)
        time.sleep(0.01)


def _release_uid(fd):
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _world_executable(path):
    p = os.path.realpath(path)
    while p != "/":
        if not os.stat(p).st_mode & 0o001:
            return False
        p = os.path.dirname(p)
    return True


@functools.lru_cache(maxsize=1)
def _sandbox_python():
    """An interpreter an unprivileged uid can execute (pyenv under /root is not)."""
    if not IS_ROOT or _world_executable(sys.executable):
        return os.path.realpath(sys.executable)
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(cand) and _world_executable(cand):
            return os.path.realpath(cand)
    raise RuntimeError("no python3 executable by an unprivileged user; the code sandbox needs one")


# Runs as the first process of the sandbox (as root when we are root), sets up isolation, then execs
# the program. Arguments are ours, never model text. It reports on a private status pipe (closed
# before the exec, so the program cannot fake it): b"K" = isolated, b"E..." = isolation impossible.
_LAUNCHER = r"""
import ctypes, os, resource, sys
status, work, uid, root, need_netns, disk, python, main, limits = sys.argv[1:10]
status, uid, root, need_netns, disk = int(status), int(uid), root == "1", need_netns == "1", int(disk)
NEWNS, NEWUSER, NEWPID, NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
def die(msg):
    os.write(status, b"E" + msg.encode()); os._exit(99)
libc = ctypes.CDLL(None, use_errno=True)
files = {}
for name in os.listdir(work):
    with open(os.path.join(work, name), "rb") as f: files[name] = f.read()
gid = os.getgid()
isolated = libc.unshare(NEWNET | NEWNS | NEWPID | (0 if root else NEWUSER)) == 0
if not isolated and need_netns:
    die("unshare(CLONE_NEWNET|CLONE_NEWNS|CLONE_NEWPID%s) failed, errno %d"
        % ("" if root else "|CLONE_NEWUSER", ctypes.get_errno()))
if isolated and not root:                                # map our own uid/gid into the new user namespace
    for path, line in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (uid, uid)), ("gid_map", "%d %d 1" % (gid, gid))):
        with open("/proc/self/" + path, "w") as f: f.write(line)
if isolated:
    opts = "size=%d,mode=0700" % disk + (",uid=%d,gid=%d" % (uid, uid) if root else "")
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0: die("mount MS_REC|MS_PRIVATE failed")
    if libc.mount(b"tmpfs", work.encode(), b"tmpfs", 0, opts.encode()) != 0: die("tmpfs mount failed")
    for m in ("/", "/dev/shm", "/run/shm", "/var/tmp", "/run/lock"):
        if (m == "/" or os.path.ismount(m)) and libc.mount(None, m.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY,
                                                          None) != 0:
            die("read-only remount of %s failed" % m)
    for name, data in files.items():
        with open(os.path.join(work, name), "wb") as f: f.write(data)
        if root: os.chown(os.path.join(work, name), uid, uid)
pid = os.fork()          # the child is pid 1 of the new pid namespace: when it exits, all it started die
if pid:
    os.close(status)
    st = os.waitpid(pid, 0)[1]
    os._exit(os.WEXITSTATUS(st) if os.WIFEXITED(st) else 128 + os.WTERMSIG(st))
os.chdir(work)
if root:
    os.setgroups([]); os.setgid(uid); os.setuid(uid)
for item in limits.split(","):
    res, val = map(int, item.split(":"))
    resource.setrlimit(res, (val, val))
os.umask(0o077)
os.write(status, b"K" if isolated else b"KNOMOUNT"); os.close(status)
os.execv(python, [python, "-I", "-S", "-B", main])
"""


def _wait(proc, timeout):
    """Wait for the launcher/program to exit; False on timeout. A pidfd wakes us exactly at exit
    (Popen.wait(timeout) polls with up to 50 ms sleeps, a third of a short program's run time)."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def _kill_stragglers(uid, pgid=None):
    """SIGKILL the program's process group, then every process still owned by its uid (belt and braces:
    the pid namespace already takes descendants down). Repeats until none is left."""
    try:
        if pgid is not None:
            os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if uid is None:
        return
    for _ in range(200):
        alive = False
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                if os.stat(f"/proc/{d}").st_uid != uid:
                    continue
                with open(f"/proc/{d}/stat", "rb") as f:
                    if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                        continue
                os.kill(int(d), signal.SIGKILL)
                alive = True
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
        if not alive:
            return
        time.sleep(0.005)


def run_sandboxed(files, main, stdin=b"", timeout=2.0, memory_mb=512, output_cap=1 << 20,
                  disk_mb=16, max_procs=32, need_netns=True):
    """Run `python -I -S -B main` from a fresh work dir holding `files` ({name: str|bytes}), isolated.
    Returns {"stdout": bytes (<= output_cap), "stderr", "returncode", "timed_out", "overflow", "wall"}.
    Raises RuntimeError only if the machine cannot provide the isolation (never for the program)."""
    uid, uid_fd = _claim_uid() if IS_ROOT else (None, None)
    if uid is not None:
        _kill_stragglers(uid)                 # leftovers of a caller that died mid-run with this uid
    base, mounted = tempfile.mkdtemp(prefix="nano_r1_sbx_"), False
    try:
        os.chmod(base, 0o711)
        work = os.path.join(base, "w")
        os.mkdir(work, 0o700)
        for name, data in files.items():
            with open(os.path.join(work, name), "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
        if uid is not None:
            os.chown(work, uid, uid)
        limits = [(resource.RLIMIT_CPU, int(math.ceil(timeout)) + 1),
                  (resource.RLIMIT_AS, memory_mb << 20), (resource.RLIMIT_FSIZE, output_cap * 4),
                  (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, max_procs)]
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
               "PYTHONIOENCODING": "utf-8"}
        paths = {k: os.path.join(base, k) for k in ("in", "out", "err")}
        with open(paths["in"], "wb") as f:
            f.write(stdin.encode() if isinstance(stdin, str) else stdin)
        status_r, status_w = os.pipe()
        args = [str(status_w), work, str(uid if uid is not None else os.getuid()), str(int(IS_ROOT)),
                str(int(need_netns)), str(disk_mb << 20), _sandbox_python(), main,
                ",".join(f"{r}:{v}" for r, v in limits)]
        t0 = time.monotonic()
        try:
            with open(paths["in"], "rb") as fin, open(paths["out"], "wb") as fout, open(paths["err"], "wb") as ferr:
                proc = subprocess.Popen([_sandbox_python(), "-I", "-S", "-B", "-c", _LAUNCHER, *args], stdin=fin,
                                        stdout=fout, stderr=ferr, cwd=base, env=env, start_new_session=True,
                                        pass_fds=(status_w,))
        finally:
            os.close(status_w)
        timed_out = not _wait(proc, timeout)
        _kill_stragglers(uid, proc.pid)
        proc.wait()
        wall = time.monotonic() - t0
        with os.fdopen(status_r, "rb") as f:
            status = f.read(4096)
        mounted = status == b"K"
        if status.startswith(b"E"):
            raise RuntimeError(f"code sandbox could not isolate the program: {status[1:].decode(errors='replace')}; "
                               "run as root or enable unprivileged user namespaces, or pass need_netns=False")
        out, err = _read_capped(paths["out"], output_cap), _read_capped(paths["err"], 1 << 16)
        return {"stdout": out[:output_cap], "stderr": err, "returncode": proc.returncode, "timed_out": timed_out,
                "overflow": len(out) > output_cap, "wall": wall, "mounts": mounted}
    finally:
        shutil.rmtree(base, ignore_errors=True)
        if uid is not None:
            if not mounted:
                _sweep_tmp(uid)
            _release_uid(uid_fd)


def _read_capped(path, cap):
    with open(path, "rb") as f:
        return f.read(cap + 1)


def _sweep_tmp(uid):
    """Without a mount namespace a program could leave files in /tmp; delete what its uid owns."""
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        try:
            for e in os.scandir(d):
                try:
                    if e.stat(follow_symlinks=False).st_uid == uid:
                        if e.is_dir(follow_symlinks=False):
                            shutil.rmtree(e.path, ignore_errors=True)
                        else:
                            os.unlink(e.path)
                except OSError:
                    pass
        except OSError:
            pass


def _lines(b):
    """Output lines for comparison: decoded leniently, trailing spaces and trailing blank lines dropped."""
    lines = [ln.rstrip() for ln in b.decode("utf-8", errors="replace").replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


_HARNESS = r"""
import sys, os, json
# Everything the harness needs after the solution ran is bound now: the solution may patch builtins.
_w, _d, _fd, _t, _all, _r, _ev, _ex, _co, _BE = (os.write, json.dumps, os.dup(1), type, all, repr, eval,
                                                  exec, compile, BaseException)
_nonce = sys.stdin.readline().strip()
_tests = json.loads(sys.stdin.readline())
_ok_types = (int, float, str, bool, type(None), list, tuple, dict, set, frozenset, complex)
def _plain(v, depth=0):
    if depth > 50 or _t(v) not in _ok_types: return False
    if _t(v) in (list, tuple, set, frozenset): return _all([_plain(x, depth + 1) for x in v])
    if _t(v) is dict: return _all([_plain(k, depth + 1) and _plain(x, depth + 1) for k, x in dict.items(v)])
    return True
_g = {"__name__": "__main__"}
try:
    with open("solution.py") as _f: _src = _f.read()
    _ex(_co(_src, "solution.py", "exec"), _g)
except _BE: pass
_res = []
for _kind, _code in _tests:
    try:
        if _kind == "expr":
            _v = _ev(_co(_code, "<test>", "eval"), _g)
            _res.append(["ok", _r(_v)] if _plain(_v) else ["bad-type", ""])
        else:
            _ex(_co(_code, "<test>", "exec"), _g); _res.append(["ok", ""])
    except _BE:
        _res.append(["err", ""])
_w(_fd, ("\n" + _nonce + _d(_res) + "\n").encode())
"""


def _split_assert(test):
    """'assert CALL == LITERAL' -> ("expr", CALL source, literal value); other asserts -> ("stmt", src, None)."""
    try:
        tree = ast.parse(test.strip())
        node = tree.body[0] if len(tree.body) == 1 else None
        if isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1 \
                and isinstance(node.test.ops[0], ast.Eq):
            return "expr", ast.unparse(node.test.left), ast.literal_eval(node.test.comparators[0])
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        pass
    return "stmt", test, None


def _values_equal(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return (isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool)
                and not isinstance(b, bool) and math.isclose(a, b, rel_tol=1e-9))
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_values_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_values_equal(a[k], b[k]) for k in a)
    return a == b


def _run_io_test(code, test, timeout, **kw):
    r = run_sandboxed({"solution.py": code}, "solution.py", stdin=test.get("input", ""), timeout=timeout, **kw)
    if r["timed_out"] or r["overflow"]:
        return 0.0
    want = test["output"] if isinstance(test["output"], bytes) else test["output"].encode()
    return 1.0 if _lines(r["stdout"]) == _lines(want) else 0.0


def _run_assert_tests(code, asserts, timeout, **kw):
    """All assert-style tests in one child; each CALL's value is compared with the literal in the parent."""
    specs = [_split_assert(t) for t in asserts]
    nonce = os.urandom(16).hex()
    stdin = nonce + "\n" + json.dumps([[k, c] for k, c, _ in specs]) + "\n"
    r = run_sandboxed({"solution.py": code, "main.py": _HARNESS}, "main.py", stdin=stdin, timeout=timeout, **kw)
    if r["timed_out"] or r["overflow"]:
        return [0.0] * len(specs)
    out = r["stdout"].decode("utf-8", errors="replace")
    k = out.rfind("\n" + nonce)
    try:
        res = json.loads(out[k + 1 + len(nonce):].split("\n", 1)[0]) if k >= 0 else None
    except ValueError:
        res = None
    if not isinstance(res, list) or len(res) != len(specs):
        return [0.0] * len(specs)
    scores = []
    for (kind, _, want), got in zip(specs, res):
        ok = isinstance(got, list) and len(got) == 2 and got[0] == "ok"
        if ok and kind == "expr":
            try:
                ok = _values_equal(ast.literal_eval(got[1]), want)
            except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
                ok = False
        scores.append(1.0 if ok else 0.0)
    return scores


_pool = {"ex": None}
_pool_lock = threading.Lock()


# Programs at a time. Twice the cores: much of a short run is process/namespace setup, not CPU
# (measured on 2 busy cores: 15.5 programs/s with 2 workers, 23.8 with 4).
SANDBOX_WORKERS = min(len(SANDBOX_UIDS), int(os.environ.get("NANO_R1_SANDBOX_WORKERS", 0)) or 2 * (os.cpu_count() or 1))


def _reset_after_fork():
    """A forked child (e.g. a data-loader worker) must not share our sympy worker pipes, pool threads
    or possibly-held locks: it starts its own on first use."""
    global _worker_lock, _pool_lock
    _worker["proc"], _pool["ex"] = None, None
    _worker_lock, _pool_lock = threading.Lock(), threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _executor():
    """The bounded pool every sandboxed test goes through (SANDBOX_WORKERS programs at a time)."""
    with _pool_lock:
        if _pool["ex"] is None:
            _pool["ex"] = ThreadPoolExecutor(max_workers=SANDBOX_WORKERS)
        return _pool["ex"]


def _test_jobs(code, tests, timeout, kw):
    """One job per stdin/stdout test, one job for all assert tests. Each job -> list of per-test scores."""
    io = [t for t in tests if isinstance(t, dict)]
    asserts = [t for t in tests if isinstance(t, str)]
    jobs = [lambda t=t: [_run_io_test(code, t, timeout, **kw)] for t in io]
    if asserts:
        jobs.append(lambda: _run_assert_tests(code, asserts, timeout, **kw))
    return jobs


def code_rewards(codes, tests_list, timeout=2.0, **kw):
    """code_reward for many programs at once, all tests run through the bounded sandbox pool."""
    if len(codes) != len(tests_list):
        raise ValueError(f"got {len(codes)} programs but {len(tests_list)} test lists; they must match")
    ex = _executor()
    futures = [[ex.submit(j) for j in _test_jobs(c, t, timeout, kw)] if isinstance(c, str) and t else []
               for c, t in zip(codes, tests_list)]
    out = []
    for fs, tests in zip(futures, tests_list):
        scores = [s for f in fs for s in f.result()]
        out.append(sum(scores) / len(tests) if tests and scores else 0.0)
    return out


def code_reward(code, tests, timeout=2.0, **kw):
    """Fraction of `tests` the program passes. A test is {"input": str, "output": str} (stdin/stdout,
    compared line by line in the parent, line count included) or an assert string such as
    "assert add(2, 3) == 5" (the call runs in the sandbox, its value is compared in the parent).
    Extra keywords go to run_sandboxed (memory_mb, output_cap, disk_mb, max_procs, need_netns)."""
    return code_rewards([code], [list(tests)], timeout=timeout, **kw)[0]


def sandbox_capabilities():
    """Probe which isolation layers work on this machine (runs one tiny program)."""
    probe = ("import os, socket\nr = {'uid': os.getuid(), 'pid_namespace': os.getpid() == 1}\n"
             "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=0.5); r['net'] = 'open'\n"
             "except OSError as e:\n    r['net'] = 'blocked'\n"
             "try:\n    open('/tmp/nano_r1_probe', 'w'); r['tmp'] = 'writable'\n"
             "except OSError:\n    r['tmp'] = 'read-only'\nprint(r)\n")
    caps = {"root": IS_ROOT, "python": _sandbox_python()}
    try:
        r = run_sandboxed({"p.py": probe}, "p.py", timeout=5.0)
        caps.update(ast.literal_eval(r["stdout"].decode().strip() or "{}"))
        caps.update(ok="net" in caps, mount_namespace=r["mounts"])
    except RuntimeError as e:
        caps.update(ok=False, error=str(e))
    return caps


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


if __name__ == "__main__":
    print(sandbox_capabilities())
