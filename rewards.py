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
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

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

def last_boxed(text):
    """Content of the last brace-balanced \\boxed{...} (or \\fbox{...}, `\\boxed 5`), else None."""
    i = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if i < 0:
        return None
    j = i + (6 if text.startswith("\\boxed", i) else 5)
    while j < len(text) and text[j] == " ":
        j += 1
    if j < len(text) and text[j] != "{":                       # \boxed 5
        m = re.match(r"[^\s$]+", text[j:])
        return m.group(0) if m else None
    depth = 0
    for k in range(j, len(text)):
        depth += {"{": 1, "}": -1}.get(text[k], 0)
        if depth == 0:
            return text[j + 1: k].strip()
    return None                                                # unbalanced


def extract_answer(text):
    """The answer: the last <answer> block (then its last \\boxed{} or "#### N" inside), else the last
    \\boxed{} in the text, else GSM8K's "#### N". None when there is nothing to extract."""
    if not isinstance(text, str) or len(text) > MAX_COMPLETION_CHARS:
        return None
    blocks = re.findall(r"<answer>((?:(?!</?answer>).)*)</answer>", text, re.DOTALL)
    if blocks:
        text = blocks[-1]
    boxed = last_boxed(text)
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
MAX_POW_BITS = 400_000        # exact powers whose result would exceed this many bits are refused
MAX_FACTORIAL = 5000
MAX_SYMBOLIC_EXPONENT = 1000  # x^n with |n| above this is not handed to sympy


class _Reject(Exception):
    """The answer is out of bounds (too large / too deep / too long): compare as False."""


_UNITS_TEXT = re.compile(r"\\(?:text|mbox|mathrm|textbf)\{\s*[A-Za-z][A-Za-z\s.^0-9/]*\}(?:\^\{?\d\}?)?\s*$")
_LATEX_DROP = [r"\displaystyle", r"\left", r"\right", r"\bigl", r"\bigr", r"\Bigl", r"\Bigr", r"\big",
               r"\Big", r"\!", r"\,", r"\;", r"\:", r"\quad", r"\qquad", r"\ ", "\\$", "$", r"\%", "%",
               "^\\circ", "^{\\circ}", "°", r"\circ"]


def _normalize(s):
    """Plain-text normal form of an answer string (no parsing yet)."""
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
    for a, b in [(r"\(", ""), (r"\)", ""), (r"\[", ""), (r"\]", "")]:
        s = s.replace(a, b)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("{,}", ",")
    for tok in _LATEX_DROP:
        s = s.replace(tok, " ")
    while _UNITS_TEXT.search(s) and _UNITS_TEXT.sub("", s).strip():        # "5 \text{ cm}" -> "5"
        s = _UNITS_TEXT.sub("", s)
    s = re.sub(r"\\(?:text|mbox|mathrm|textbf|mathbf|operatorname)\{([^{}]*)\}",     # quoted text never
               lambda m: f'"{m.group(1)}"' if re.search("[A-Za-z]", m.group(1)) else m.group(1), s)  # parses
    s = s.strip().rstrip(".").strip()
    m = re.fullmatch(r"[A-Za-z](?:_\{?\w+\}?)?\s*=\s*([^=]+)", s)           # "x = 2" -> "2"
    if m:
        s = m.group(1).strip()
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):                # 1,000,000
        s = s.replace(",", "")
    m = re.fullmatch(r"(-?[\d.,/]+)\s+([A-Za-z]{2,}\.?\s*)+", s)           # "18 dollars" -> "18"
    if m and not re.search(r"(?i)\b(pi|sqrt|infty|inf|sin|cos|tan|log|ln|exp)\b", s):
        s = m.group(1)
    return re.sub(r"\s+", " ", s).strip()


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
    ("fact", a) ("sqrt", a) ("root", a, n) ("func", name, a) ("log", a, base)."""

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
        node = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term()
            node = ("add", node, rhs if op == "+" else ("neg", rhs))
        self.depth -= 1
        return node

    def starts_primary(self, tok):
        if tok is None:
            return False
        return (tok[0].isdigit() or tok[0] == "." or tok.isalpha() or tok in ("(", "{", "[")
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
                nxt = self.peek()
                if nxt == "\\frac" and re.fullmatch(r"\d+", tok):   # mixed number 2\frac{1}{2}
                    save = self.i
                    self.take()
                    a, b = self.arg(), self.arg()
                    if a[0] == "num" and b[0] == "num":
                        return ("add", node, ("div", a, b))
                    self.i = save
                return node
            if tok in ("(", "[", "{"):
                return self.group(tok, {"(": ")", "[": "]", "{": "}"}[tok])
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


def _split_top(s, seps=(",",)):
    """Split at top-level separators (outside (), [], {})."""
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
    return [p.strip() for p in parts]


def _outer_brackets(s):
    """(open, close) if s is wrapped by one bracket pair enclosing everything, else None."""
    if len(s) < 2 or s[0] not in "([" or s[-1] not in ")]":
        return None
    depth = 0
    for k, c in enumerate(s):
        depth += 1 if c in "([{" else -1 if c in ")]}" else 0
        if depth == 0 and k < len(s) - 1:
            return None
    return s[0], s[-1]


def _structure(s):
    """("set"|"list"|"union", [items]) or ("tuple", open, close, [items]) or ("scalar", str)."""
    if s.count("(") + s.count("[") + s.count("{") > 4 * MAX_BRACE_DEPTH:
        raise _Reject("too many brackets")
    if s.startswith("\\{") and s.endswith("\\}"):
        return ("set", [_structure(p) for p in _split_top(s[2:-2])])
    if "\\cup" in s:
        return ("union", [_structure(p) for p in _split_top(s, ("\\cup",))])
    br = _outer_brackets(s)
    if br and len(_split_top(s[1:-1])) > 1:
        return ("tuple", br[0], br[1], [_structure(p) for p in _split_top(s[1:-1])])
    parts = _split_top(s)
    if len(parts) > 1:
        return ("list", [_structure(p) for p in parts])
    return ("scalar", s)


# ----------------------------------------------------------------------------- math: exact arithmetic

def _bits(q):
    return max(abs(q.numerator).bit_length(), q.denominator.bit_length())


def _exact(node):
    """Fraction value of a purely rational tree; None if symbolic/irrational/undefined; _Reject if huge."""
    op = node[0]
    if op == "num":
        return node[1]
    if op in ("add", "mul", "div"):
        a, b = _exact(node[1]), _exact(node[2])
        if a is None or b is None:
            return None
        if op == "add":
            return a + b
        if op == "mul":
            return a * b
        return a / b if b != 0 else None
    if op == "neg":
        a = _exact(node[1])
        return None if a is None else -a
    if op == "pow":
        b, e = _exact(node[1]), _exact(node[2])
        if e is not None and e.denominator == 1 and abs(e) > MAX_POW_BITS and (b is None or abs(b) != 1):
            if b != 0:
                raise _Reject("exponent too large")
        if b is None or e is None or e.denominator != 1:
            return None
        if b == 0:
            return None if e < 0 else Fraction(int(e == 0))
        if abs(b) == 1:
            return b ** (int(e) % 2)
        if _bits(b) * abs(e) > MAX_POW_BITS:
            raise _Reject("power too large")
        return b ** int(e)
    if op == "fact":
        a = _exact(node[1])
        if a is None or a.denominator != 1 or a < 0:
            return None
        if a > MAX_FACTORIAL:
            raise _Reject("factorial too large")
        return Fraction(math.factorial(int(a)))
    if op == "binom":
        n, k = _exact(node[1]), _exact(node[2])
        if n is None or k is None or n.denominator != 1 or k.denominator != 1 or n > MAX_FACTORIAL:
            return None
        return Fraction(math.comb(int(n), int(k))) if 0 <= k <= n else Fraction(0)
    if op in ("sqrt", "root"):
        a = _exact(node[1])
        n = Fraction(2) if op == "sqrt" else _exact(node[2])
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


def _has_sym(node):
    if node[0] == "sym":
        return True
    return any(isinstance(c, tuple) and _has_sym(c) for c in node[1:])


def _parse_scalar(s):
    """Expression tree of a scalar answer, or None if it does not parse."""
    try:
        toks = _tokenize(s)
        if not toks:
            return None
        tree = _Parser(toks).parse()
    except (ValueError, ZeroDivisionError, IndexError, KeyError):
        return None
    _check_bounds(tree)
    return tree


# ----------------------------------------------------------------------------- math: sympy worker

def _to_json(node):
    if node[0] == "num":
        return ["num", node[1].numerator, node[1].denominator]
    return [node[0]] + [_to_json(c) if isinstance(c, tuple) else c for c in node[1:]]


def _math_worker():
    """Child-process loop: read JSON lines of tree pairs, answer 1/0 per line. Trees only, never text."""
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
                "binom": lambda: sp.binomial(x[0], x[1]), "sqrt": lambda: sp.sqrt(x[0]),
                "root": lambda: sp.root(x[0], x[1]), "func": lambda: funcs[x[0]](x[1]),
                "log": lambda: sp.log(x[0], x[1])}[op]()

    def equal(a, b):
        a, b = build(a), build(b)
        if a == b:
            return True
        if any(v.has(sp.zoo, sp.nan) for v in (a, b)) or a.is_infinite or b.is_infinite:
            return False
        d = sp.expand(a - b)                                    # cheap first, simplify only if needed
        if d == 0 or sp.simplify(d) == 0:
            return True
        if d.is_number and a.is_number:
            dv, av = abs(sp.N(d, 60)), abs(sp.N(a, 60))
            return bool(dv.is_real and av.is_real and dv <= sp.Float("1e-50", 60) * av)
        return False

    equal(["pow", ["add", ["sym", "x"], ["num", 1, 1]], ["num", 2, 1]], ["sqrt", ["num", 8, 1]])  # warm caches
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        try:
            pairs = json.loads(line)
            ok = all(equal(a, b) for a, b in pairs)
        except Exception:
            ok = False
        sys.stdout.write("1\n" if ok else "0\n")
        sys.stdout.flush()


_worker = {"proc": None}
_worker_lock = threading.Lock()


def _kill_worker():
    p = _worker["proc"]
    _worker["proc"] = None
    if p is not None:
        p.kill()
        p.wait()


def _worker_readline(p, timeout):
    buf, deadline = b"", time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([p.stdout], [], [], left)[0]:
            return None
        chunk = os.read(p.stdout.fileno(), 64)
        if not chunk:
            return None
        buf += chunk
    return buf.decode().strip()


def _sympy_equal(pairs, timeout):
    """Ask the worker; kill and forget it on timeout (a fresh one starts on the next call)."""
    with _worker_lock:
        if _worker["proc"] is None or _worker["proc"].poll() is not None:
            here = os.path.dirname(os.path.abspath(__file__))
            code = f"import sys; sys.path.insert(0, {here!r}); import rewards; rewards._math_worker()"
            p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, bufsize=0)
            _worker["proc"] = p
            if _worker_readline(p, 120.0) != "ready":
                _kill_worker()
                return False
        p = _worker["proc"]
        try:
            p.stdin.write((json.dumps([[_to_json(a), _to_json(b)] for a, b in pairs]) + "\n").encode())
        except (BrokenPipeError, OSError):
            _kill_worker()
            return False
        reply = _worker_readline(p, timeout)
        if reply is None:
            _kill_worker()
            return False
        return reply == "1"


# ----------------------------------------------------------------------------- math: comparison

def _string_form(s):
    return re.sub(r"[\s{}\"]", "", s).casefold()


def _match_items(xs, ys, pending, ordered):
    if len(xs) != len(ys):
        return False
    if ordered:
        return all(_match(x, y, pending) for x, y in zip(xs, ys))
    left = list(ys)
    for x in xs:                                    # greedy matching; items are mostly numbers
        for k, y in enumerate(left):
            trial = []
            if _match(x, y, trial) and not trial:
                left.pop(k)
                break
        else:
            k = next((k for k, y in enumerate(left) if _match(x, y, pending)), None)
            if k is None:
                return False
            left.pop(k)
    return True


def _match(a, b, pending):
    """Structural comparison; returns False, or True while appending symbolic pairs still to check."""
    if a[0] != b[0]:
        return False
    if a[0] in ("set", "list"):
        return _match_items(a[1], b[1], pending, ordered=False)
    if a[0] == "union":
        return _match_items(a[1], b[1], pending, ordered=True)
    if a[0] == "tuple":
        return a[1:3] == b[1:3] and _match_items(a[3], b[3], pending, ordered=True)
    sa, sb = a[1], b[1]
    if _string_form(sa) == _string_form(sb):
        return True
    ta, tb = _parse_scalar(sa), _parse_scalar(sb)
    if ta is None or tb is None:
        return False
    va, vb = _exact(ta), _exact(tb)
    if va is not None and vb is not None:
        return va == vb
    pending.append((ta, tb))
    return True


def math_equal(pred, gold, timeout=1.0):
    """True if the answer `pred` is mathematically equal to `gold`. Exact: rationals compare exactly,
    symbolic forms via a sympy worker bounded by `timeout` seconds. Never raises on model text."""
    try:
        if not isinstance(pred, str) or not isinstance(gold, str):
            return False
        if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
            return False
        a, b = _normalize(pred), _normalize(gold)
        if not a or not b:
            return False
        if a == b:
            return True
        pending = []
        if not _match(_structure(a), _structure(b), pending):
            return False
        return not pending or _sympy_equal(pending, timeout)
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
            boxed = last_boxed(answer)
            return math_equal(boxed if boxed is not None else answer, gold)
        if task == "code":
            return code_reward(_strip_fences(answer), meta["tests"]) == 1.0
        gi, pi = _as_int(gold), _as_int(answer)
        if gi is not None:
            return pi == gi
        return answer.strip().casefold() == gold.strip().casefold()
    except (KeyError, TypeError, ValueError, AttributeError):
        return False


# ----------------------------------------------------------------------------- code sandbox (sandbox.py)

from sandbox import (_strip_fences, check_sandbox, code_reward, code_reward_details,  # noqa: E402,F401
                     code_rewards, run_sandboxed, sandbox_capabilities)


def _reset_after_fork():
    """A forked child (e.g. a data-loader worker) must not share our sympy worker pipes or possibly-held
    locks: it starts its own on first use."""
    global _worker_lock
    _worker["proc"] = None
    _worker_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


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
