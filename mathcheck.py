"""The math answer checker behind the accuracy reward: is a model's answer equal to the gold answer?

RL optimises exactly this function, so a wrong "equal" pays for wrong answers and a hang stalls the
trainer. Our own allowlist LaTeX/plain parser turns an answer into values (expression trees, sets,
tuples/intervals, matrices, labelled values "x = 2", relations "x <= 5"), and verdicts come from those
values only, never from strings:

  - rationals compare exactly in-process (Fractions, with bit caps against towers);
  - interval arithmetic (mpmath.iv, 30 digits, symbols set to fixed generic values) proves most unequal
    symbolic values apart in-process: disjoint enclosures mean different values, so it only rejects;
  - the rest goes to a killable sympy worker process (mathworker.py), which says "equal" only when
    it proves it (expand/simplify, minimal polynomials; equations up to a constant factor): no
    numeric tolerance.
  - division by zero, 0^-1, tan(pi/2), log(0) are undefined and equal nothing;
  - model text never reaches eval, sympify or parse_expr (they execute code): the worker receives
    trees as JSON; every in-process step is linear-time on an answer capped at 1000 characters.

Simplifications vs production graders (Math-Verify, the Qwen2.5-Math grader):
  1. The parser covers the common MATH/GSM8K/NuminaMath answer forms (numbers, fractions, roots,
     powers, pi/e/i/infinity, trig/log, factorials, +-, repeating decimals, unicode math, lists/sets/
     tuples/intervals/unions, matrices, ratios, "x = 2", "(p,q) = (3,2)", inequalities in one variable,
     equations, units, percent signs), not all of LaTeX; an answer that does not parse equals only the
     same text (up to case and runs of spaces). Adjacent numbers are never multiplied: "2 1/2" is a
     mixed number, "1 000" is 1000, "2e1" is no number.
  2. No tolerance: 0.333 != 1/3 and e^200 != e^200 + 1, even where a float grader would round. A
     percent sign is dropped, not divided by 100: "50\\%" equals "50", not "0.5".
  3. Lists are sets: order and repeats do not count ("1, 2" == "\\{2, 1, 1\\}"); tuples are ordered.
  4. Several \\boxed{} answers: the last one (as in the paper), unless only separators stand between
     them ("\\boxed{1}, \\boxed{2}" is the list "1, 2").
  5. A labelled answer is its value ("x = 2" == "2"), but two labels must agree ("x = 2" != "y = 2").
  6. The worker is bounded by `timeout` per call; after a timeout it is killed and a fresh one starts
     at once, and a (re)started worker needs ~1 s once to import sympy.

Usage:
    from mathcheck import math_equal, boxed_answer
    math_equal("\\frac{1}{2}", "0.5")                  # True
    math_equal("x \\le 5", "(-\\infty, 5]")            # True
    math_equal("(p,q) = (3,2)", "(3, 2)")             # True
    math_equal("0.333", "\\frac{1}{3}")                # False
    boxed_answer("so \\boxed{1}, \\boxed{2}")          # "1, 2"

Shapes: no tensors. Answers become nested tuples: trees ("add", a, b), ("num", Fraction), ... and structures
("val", tree, exact Fraction or None, None), ("set", items), ("tuple", open, close, items), ...
"""
import math
import re
import zlib
from fractions import Fraction

from mpmath import iv  # interval arithmetic (ships with sympy): rigorous enclosures, used only to tell values apart

import mathworker
from mathworker import _sympy_verdicts  # the killable sympy process

_worker = mathworker._worker  # the same dict: the worker's process and state (tests read it here)

MAX_INPUT_CHARS = 200_000     # longer inputs (a whole completion at most) are refused before any work
iv.dps = 30

# ----------------------------------------------------------------------------- boxed answers

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


_GAP_WORDS = re.compile(r"\\text\{\s*(?:and|or)\s*\}|(?<![A-Za-z])(?:and|or)(?![A-Za-z])|\\q?quad|\\[,;! ()\[\]]"
                        r"|(?<![A-Za-z\\])[A-Za-z](?:_\{?\w+\}?)?\s*=")       # "\\boxed{1} and y_2 = \\boxed{2}"


def boxed_answer(text):
    """The boxed answer of `text`: the last \\boxed{}, as the paper does, except that boxes joined only by
    separators ("\\boxed{1}, \\boxed{2}", "\\boxed{1} and \\boxed{2}") form one list answer "1, 2".
    None when there is no (balanced) box."""
    boxes = _boxes(text)
    if not boxes or boxes[-1] is None:
        return None
    first = len(boxes) - 1  # the first box of the run joined by separators that ends with the last box
    while first > 0 and re.fullmatch(r"[\s$,;.]*", _GAP_WORDS.sub(" ", text[boxes[first - 1][1]: boxes[first][0]])):
        first -= 1
    return ", ".join(b[2] for b in boxes[first:])


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


_UNICODE = str.maketrans({"\u2212": "-", "\u2013": "-", "\u00d7": "\\times ", "\u22c5": "\\cdot ",
                          "\u00b7": "\\cdot ", "\u00f7": "\\div ", "\u2264": "\\le ", "\u2265": "\\ge ",
                          "\u2260": "\\ne ", "\u03c0": "\\pi ",
                          "\u221a": "\\sqrt ", "\u221e": "\\infty ", "\u222a": "\\cup ", "\u2208": "\\in ",
                          "\u00b1": "\\pm ", "\u2213": "\\mp ", "\u2248": "\\approx ", "\u00a0": " ", "\u2009": " ",
                          "\u202f": " ", "\u200b": "", "\u200c": "", "\u200d": "", "\u2060": "", "\ufeff": ""})
_SUPERSCRIPT = dict(zip("\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079\u207b", "0123456789-"))
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
_DOUBLED = re.compile(r"\\\\(?=(?:frac|dfrac|sqrt|le|leq|ge|geq|lt|gt|ne|neq|in|pm|pi|infty|text|left|right|cdot)"
                      r"(?![a-zA-Z]))")
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
    for m in _BRACES.finditer(s):
        depth += 1 if m.group(0) == "{" else -1
        if depth < 0 or depth > MAX_BRACE_DEPTH:
            raise _Reject("unbalanced or too deeply nested braces")
    if depth:
        raise _Reject("unbalanced braces")
    s = s.translate(_UNICODE)
    s = _SUPER_RE.sub(lambda m: "^{" + "".join(_SUPERSCRIPT[c] for c in m.group(0)) + "}", s)
    s = _VULGAR_RE.sub(lambda m: "\\frac{%d}{%d}" % _VULGAR[m.group(0)], s)
    s = _DOUBLED.sub(r"\\", s)                                         # "\\\\frac" (escaped twice) -> "\\frac"
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
    """Structured value of an answer piece without relations: ("val", tree, exact, None) ("undef",)
    ("text", str) ("set", items) ("tuple", open, close, items) ("matrix", rows) ("ratio", items).
    exact: the Fraction when the tree is rational, else None. The last slot of "val" is always None (interval
    enclosures are computed on demand and cached by _Pending.enclosure)."""
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


_COMMANDS = re.compile(r"\\[a-zA-Z]+")


def _relation(parts, ops):
    """Structure of a relation chain: ("label", name, value) for "x = 2" / "(p,q) = (3,2)" (the last part
    is the value), ("ivl", var, lo_closed, hi_closed, lo, hi) for inequalities in one variable,
    ("rel", op, tree) with op in =, !=, <, <= for the rest (tree = lhs - rhs, relation `tree op 0`)."""
    if "@" in ops:                                              # an approximation never counts:
        k = ops.index("@")                                      # x = 1/3 \approx 0.33 -> x = 1/3
        if k == 0 and _is_label(parts[0]):                     # x \approx 11 -> x = 11
            parts, ops = parts[:2], ["="]
        else:                                                   # 1/3 \approx 0.33 -> 1/3
            parts, ops = parts[:k + 1], ops[:k]
    if not ops:
        return _value(parts[0])
    if all(o == "=" for o in ops) and _is_label(parts[0]):
        return ("label", re.sub(r"\s+", "", parts[0]), _value(parts[-1]))
    if all(o == "=" for o in ops) and (len(ops) > 1 or not re.search("[A-Za-z]", _COMMANDS.sub("", "".join(parts)))):
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
            if lin[0] < 0:
                return ("ivl", var, closed, False, bound, _OO)
            return ("ivl", var, False, closed, _NEG_OO, bound)
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
    groups = _split_top(s, (";",))
    if len(groups) > 1 and all(len(_split_top(g)) > 1 and all(_is_label(p.split("=")[0]) and "=" in p
                                                             for p in _split_top(g)) for g in groups):
        s = ", ".join("(" + ", ".join(p.split("=")[-1] for p in _split_top(g)) + ")" for g in groups)
        # p=5, q=2; p=7, q=2 -> (5, 2), (7, 2)
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
    boxes = {id(v): ask.enclosure(v) for v in xs + ys if v[0] == "val" and v[2] is None}   # rationals: exact

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


_PLAIN_NUMBER = re.compile(r"\s*(-?\d{1,400}(?:\.\d{1,400})?)\s*")


def _parse_answer(s):
    """Structured answer of a string (boxes taken out first), or None."""
    if len(s) > MAX_INPUT_CHARS:
        return None
    for _ in range(3):                                          # \boxed{\boxed{7}}
        if "\\boxed" not in s and "\\fbox" not in s:
            break
        s = boxed_answer(s) or ""
    m = _PLAIN_NUMBER.fullmatch(s)
    if m:                                                       # fast path: "391", "-2.25"
        q = Fraction(m.group(1))
        return ("val", ("num", q), q, None)
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
