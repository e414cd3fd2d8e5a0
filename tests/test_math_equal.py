"""Tests for mathcheck.py (math_equal), the accuracy reward of math answers: no false "equal" (the pairs that used
to pay for wrong answers), every equal-answer category (relations, labels, separators, boxes, unicode,
repeating decimals, sets, matrices, argument order), symmetry, undefined values, and hard time bounds on
hostile inputs. Pairs are team-written, one small group per category."""
import os
import sys
import time
from types import SimpleNamespace

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mathcheck  # noqa: E402
from mathcheck import boxed_answer, math_equal  # noqa: E402
from rewards import score  # noqa: E402

# ----------------------------------------------------------------------------- must never be "equal"

FALSE_PAIRS = [
    # brace-stripped strings used to decide these
    ("\\frac{12}{3}", "\\frac{1}{23}"), ("e^{x}+1", "e^{x+1}"), ("2^{n}+1", "2^{n+1}"), ("\\sqrt{2}+1", "\\sqrt{2+1}"),
    ("x^{2}y", "x^{2y}"), ("\\frac123", "\\frac{1}{23}"), ("\\frac{1}{2}3", "\\frac{1}{23}"),
    # adjacent numbers were multiplied
    ("2 1/2", "1"), ("1 000", "0"), ("2e1", "2e"), ("2 3", "6"), ("x2", "2x"),
    # a relative tolerance made distinct values equal
    ("e^{200}", "e^{200}+1"), ("\\pi^{200}", "\\pi^{200}+1"), ("10^{80}\\pi", "10^{80}\\pi+1"),
    ("e^{-100}", "0"), ("\\sqrt{10^{40}+1}", "10^{20}"),
    # undefined values
    ("\\frac{1}{0}", "\\frac{5}{0}"), ("\\frac{1}{0}", "\\frac{1}{0}"), ("\\tan(\\pi/2)", "\\tan(\\pi/2)+1"),
    ("\\tan(\\pi/2)", "\\tan(\\pi/2)"), ("0^{-1}", "0^{-1}"), ("\\frac{x}{0}", "\\frac{x}{0}"), ("\\log(0)", "\\log(0)"),
    ("\\infty - \\infty", "0"), ("\\infty-\\infty", "\\infty-\\infty"),
    # exactness
    ("0.333", "1/3"), ("1/2004!", "1/2006!"), ("0.\\overline{3}", "0.333"), ("0.\\overline{3}", "0.3"),
    ("\\frac{1}{3}", "0.33333333333333333333333333333333"),
    # relations, labels, separators, sets: near misses
    ("x \\leq 5", "x < 5"), ("x \\leq 5", "x \\geq 5"), ("x < 1", "x > -1"), ("-x > -1", "x > 1"), ("(-793, 10)", "-793 \\le a < 10"),
    ("x = 2", "y = 2"), ("2x + 4y - 3 = 0", "y = -\\frac{1}{2}x + 3"), ("7 = 11a + c", "11a + c"), ("a + 3z = 0", "0"),
    ("(p,q)=(3,2)", "(2,3)"), ("AB=4, CD=5", "4, 6"), ("6 \\text{ and } 8", "6,9"), ("\\pm 2021", "2021"),
    ("\\pm 2021", "\\{-2021, 2020\\}"), ("\\boxed{1} then \\boxed{2}", "1, 2"), ("\\text{(C)}", "D"),
    ("\\{1, 2\\}", "\\{1, 2, 3\\}"), ("\\{1,1,2\\}", "\\{1,2,3\\}"), ("(1, 2)", "\\{1, 2\\}"),
    ("\\begin{pmatrix}1 & 2\\\\ 3 & 4\\end{pmatrix}", "\\begin{pmatrix}1 & 2\\\\ 3 & 5\\end{pmatrix}"),
    ("\\begin{pmatrix}1 & 2\\\\ 3 & 4\\end{pmatrix}", "\\begin{pmatrix}1 & 3\\\\ 2 & 4\\end{pmatrix}"),
    ("\\{2\\sqrt3,\\sqrt8\\}", "\\{2\\sqrt2,\\sqrt{13}\\}"), ("\\frac{-1\\pm\\sqrt5}{2}", "\\frac{1\\pm\\sqrt5}{2}"),
    ("32, 349", "32349"), ("12:00", "1:00"), ("p=5, q=2; p=7, q=2", "(2,5), (7,2)"), ("\\boxed{3} so x = \\boxed{4}", "3, 4"), ("\u22125", "5"), ("x\u00b2", "x^3"), ("\u00bd", "0.25"),
]


@pytest.mark.parametrize("a,b", FALSE_PAIRS)
def test_never_equal(a, b):
    assert math_equal(a, b) is False, (a, b)
    assert math_equal(b, a) is False, (b, a)


def P(answer):
    return SimpleNamespace(task="math", answer=answer, meta={}, question="q", bucket="E")


def test_score_pays_nothing_for_false_pairs():
    for a, b in FALSE_PAIRS:
        r = score(f" <think> r </think> <answer> ${a}$ </answer>", P(b))
        assert r["format"] == 1.0 and r["accuracy"] == 0.0, (a, b, r)


# ----------------------------------------------------------------------------- equal answers, by category

EQUAL = {
    "relations": [("x\\leq5", "5\\geq x"), ("x \\lt 3", "x<3"), ("y \\ne 2", "y != 2"), ("-793<a<10", "(-793,10)"),
                  ("-5 \\le t \\le 5", "t \\in [-5, 5]"), ("3 > b > -1", "(-1, 3)"), ("-2x > -6", "x < 3"),
                  ("0 < g(t) < 2", "(0, 2)"), ("x \\geq \\frac{1}{2}", "[0.5, \\infty)"),
                  ("3x - 6y + 9 = 0", "y = \\frac{x}{2} + \\frac{3}{2}"), ("x^2/9 + y^2/4 = 1", "4x^2 + 9y^2 = 36"),
                  ("2a + 4b \\le 6", "-a - 2b \\ge -3")],
    "labels": [("(p,q)=(3,2)", "(3,2)"), ("AB=4, CD=5", "4, 5"), ("k = 7", "7"), ("f(2) = 9", "9"),
               ("|PQ| = 2\\sqrt{2}", "\\sqrt 8"), ("a_3 = 2, a_{10} = 19", "a_{10} = 19, a_3 = 2"),
               ("x = 3 + 4 = 7", "7"), ("n \\approx 12", "12"), ("r = \\frac{1}{3} \\approx 0.33", "\\frac13"),
               ("(x, y) = (5, 8), (8, 5)", "(8, 5), (5, 8)")],
    "separators": [("6 \\text{ and } 8", "6,8"), ("4 \\text{ or } 9", "9, 4"), ("3 and 5", "3; 5"),
                   ("\\pm 2021", "\\{-2021, 2021\\}"), ("\\pm 7", "{-7, 7}"), ("1 \\pm \\sqrt{3}", "1+\\sqrt3, 1-\\sqrt3"),
                   ("2,\\quad 5", "2, 5")],
    "thousands": [("32,\\! 349", "32349"), ("1,\\!000,\\!000", "10^6"), ("4{,}096", "4096"), ("7,425,000", "7425000"),
                  ("1 000", "1000"), ("2 1/2", "\\frac52")],
    "escapes": [("\\\\frac{1}{2}", "0.5"), ("-2 \\\\le x \\\\le 7", "x \\in [-2, 7]"), ("\\$18", "18"),
                ("p=5, q=2; p=7, q=2", "(5,2), (7,2)"), ("y_1 = \\boxed{3} \\) and \\( y_2 = \\boxed{4}", "4, 3")],
    "latex": [("\\cfrac{2}{3}", "2/3"), ("\\text{(C)}", "C"), ("\\textbf{(B)}", "B"), ("\\text{E}", "E"),
              ("\\mathrm{e}^2", "e^2"), ("\\dfrac{\\sqrt{3}}{2}", "\\frac{\\sqrt 3}{2}"), ("5\\text{ cm}^2", "5"),
              ("45^\\circ", "45"), ("\\left[ 0, 1 \\right)", "[0,1)"), ("\\text{odd}", "odd")],
    "boxes": [("\\boxed{7}", "7"), ("\\boxed{\\boxed{7}}", "7"), ("so \\boxed{3}.", "3"), ("\\boxed{1}, \\boxed{2}", "1, 2"),
              ("\\boxed{1} and \\boxed{5}", "\\{1, 5\\}"), ("\\boxed{x=4} \\quad \\boxed{y=2}", "x = 4, y = 2"),
              ("wrong \\boxed{9} so finally \\boxed{4}", "4")],
    "unicode": [("\u22125", "-5"), ("\u00bd", "\\frac12"), ("3\u00bd", "7/2"), ("x\u00b2 + 1", "x^2+1"), ("2\u03c0", "2\\pi"),
                ("\u221a3", "\\sqrt{3}"), ("(-\u221e, 0)", "(-\\infty, 0)"), ("4\u200b2", "42"), ("10\u00a0000", "10000"),
                ("x \u2264 1", "x \\le 1"), ("3\u00d74", "12")],
    "repeating": [("0.\\overline{3}", "\\frac13"), ("0.1\\overline{6}", "\\frac16"), ("1.\\overline{27}", "\\frac{14}{11}"),
                  ("0.\\overline{9}", "1")],
    "sets": [("\\{1, 2, 2, 3\\}", "\\{3, 2, 1\\}"), ("1, 1, 2", "2, 1"), ("(0, 1) \\cup (2, 3)", "(2, 3) \\cup (0, 1)"),
             ("(1,2), (3,4), (1,2)", "(3,4), (1,2)"), ("\\{-1\\} \\cup [0, 7)", "[0,7) \\cup \\{-1\\}")],
    "matrices": [("\\begin{pmatrix}1 & 2\\\\ 3 & 4\\end{pmatrix}", "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}"),
                 ("\\begin{pmatrix} \\frac12 \\\\ 0.25 \\end{pmatrix}", "\\begin{pmatrix}0.5\\\\\\frac{1}{4}\\\\\\end{pmatrix}"),
                 ("\\left(\\begin{array}{cc}1 & 0\\\\ 0 & 1\\end{array}\\right)", "\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}")],
    "order": [("\\frac{-1+\\sqrt5}{2}, \\frac{-1-\\sqrt5}{2}", "\\frac{-1-\\sqrt{5}}{2}, \\frac{-1+\\sqrt{5}}{2}"),
              ("\\frac{-1\\pm\\sqrt5}{2}", "\\frac{-1-\\sqrt5}{2}, \\frac{\\sqrt5-1}{2}"),
              ("\\{2\\sqrt3,\\sqrt8\\}", "\\{2\\sqrt2,\\sqrt{12}\\}"), ("\\sqrt{12}, \\sqrt{8}, \\sqrt{18}", "3\\sqrt2, 2\\sqrt3, 2\\sqrt2"),
              ("x^2 - 1, (x+1)^2", "x^2+2x+1, (x-1)(x+1)")],
    "symbolic": [("\\sqrt{8}", "2\\sqrt2"), ("\\tan^2 y + 1", "\\sec^2 y"), ("\\frac{x+2}{7}", "\\frac x7 + \\frac27"),
                 ("\\sqrt{3+2\\sqrt2}", "1+\\sqrt2"), ("e^{200}", "e^{100} \\cdot e^{100}"), ("|{-3}|", "3"),
                 ("\\frac{9^{99}}{3^{198}}", "1")],
}
EQUAL_PAIRS = [(c, a, b) for c, pairs in EQUAL.items() for a, b in pairs]


@pytest.mark.parametrize("category,a,b", EQUAL_PAIRS)
def test_equal(category, a, b):
    assert math_equal(a, b) is True, (category, a, b)
    assert math_equal(b, a) is True, (category, b, a)


def test_symmetric_over_every_pair(monkeypatch):
    """math_equal(a, b) == math_equal(b, a) for every two strings of a category (and the false pairs), with
    the sympy worker replaced by an arbitrary symmetric oracle: the set matching, labels, relations and
    intervals must be order-free whatever the symbolic verdicts are (the tables above use the real worker)."""
    def oracle(pairs, timeout):
        return {key: hash(frozenset(map(repr, key[1:]))) % 3 != 0 for key in pairs}
    monkeypatch.setattr(mathcheck, "_sympy_verdicts", oracle)
    false_strings = [s for pair in FALSE_PAIRS for s in pair]
    groups = [false_strings[k: k + 16] for k in range(0, len(false_strings), 16)]
    groups += [[s for a, b in ps for s in (a, b)][:16] for ps in EQUAL.values()]
    checked = 0
    for group in groups:
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                assert math_equal(a, b) == math_equal(b, a), (a, b)
                checked += 1
    assert checked > 1500


def test_boxed_answer():
    assert boxed_answer("so \\boxed{1} then \\boxed{2}") == "2"                  # the paper: the last box
    assert boxed_answer("\\boxed{1}, \\boxed{2} and \\boxed{3}") == "1, 2, 3"      # a list of boxes
    assert boxed_answer("\\boxed{\\boxed{4}} and \\boxed{5}") == "\\boxed{4}, 5"  # nesting kept whole
    assert boxed_answer("\\boxed{unbalanced") is None and boxed_answer("no box") is None
    assert boxed_answer("\\boxed{1} \\boxed{2") is None                           # the last box is broken


def test_parent_never_imports_sympy(monkeypatch):
    """Symbolic checks happen in the worker process; the trainer process never imports sympy."""
    monkeypatch.setitem(sys.modules, "sympy", None)                              # import sympy would fail here
    assert math_equal("\\sqrt{3+2\\sqrt2}", "1+\\sqrt2") and not math_equal("\\sqrt{2}", "1.4142135623730951")


# ----------------------------------------------------------------------------- hostile inputs: bounded

_TOWER = "\\frac{" + "\\cdot ".join(["9^{99999}"] * 6) + "}{" + "\\cdot ".join(["8^{99999}"] * 4) + "}"
HOSTILE = [
    "5 " + "a" * 45 + "!", "5 " + "ha" * 490 + "!", "5" + " \\text{ cm}" * 80, "\\text{" + "a " * 490 + "}",
    _TOWER, _TOWER.replace("\\cdot ", "\\cdot 2^{60000}\\cdot ", 1), "2^{60000} \\cdot " * 20 + "1", "9^{9^{9^9}}",
    "(" * 40 + "1" + ")" * 40, "1" * 1000, "0." + "1" * 900 + "\\overline{3}", "\\pm 1" * 9, "1<" * 300 + "x",
    "\\boxed{1}" * 20000, "\\boxed{" * 40 + "1" + "}" * 40, "\\boxed{" + "a" * 199_000 + "}", "{}" * 100_000,
    "\\{" + ",".join(f"\\sqrt{{{p}}}" for p in range(2, 33)) + "\\}", ",".join(["\\sqrt{2}"] * 31),
    "\\begin{pmatrix}" + "1&" * 300 + "1\\end{pmatrix}", "x = " * 200 + "1", "5000!", "\\frac{1}{5000!}",
]


@pytest.mark.parametrize("s", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_bounded_in_process(s, monkeypatch):
    """Decided in process (the sympy worker is never asked) and fast; the real time is ~10 ms on 2 cores."""
    monkeypatch.setattr(mathcheck, "_sympy_verdicts", lambda *a: pytest.fail("worker asked"))
    for a, b in [(s, "1"), ("1", s), (s, s)]:
        t0 = time.perf_counter()
        math_equal(a, b)
        assert time.perf_counter() - t0 < 1.0, (s[:40], time.perf_counter() - t0)


def test_hostile_verdicts():
    assert math_equal(_TOWER, _TOWER) is False                                     # refused: too large to be exact
    assert math_equal("5000!", "5000!") and math_equal("\\frac{1}{2006!}", "\\frac{1}{2006!}")
    assert math_equal("5 " + "a" * 45 + "!", "5") is False


def test_symbolic_call_bounded():
    """Pairs only sympy can settle: the whole call stays within its timeout plus a margin; a worker killed
    on timeout is replaced at once (its sympy import runs in the background)."""
    math_equal("\\sqrt{8}", "2\\sqrt2")                                           # worker started (not timed)
    for a, b in [("\\tan(\\pi/2)", "\\tan(\\pi/2)+1"), ("e^{200}", "e^{200}+1"),
                 ("(2x+2\\sqrt2+2\\sqrt3)^{300}", "2^{300}(x+\\sqrt2+\\sqrt3)^{300}")]:
        old = mathcheck._worker["proc"]
        t0 = time.perf_counter()
        assert math_equal(a, b, timeout=0.5) is False
        assert time.perf_counter() - t0 < 1.5
    assert mathcheck._worker["proc"] is not old and mathcheck._worker["proc"] is not None   # killed and replaced
    assert math_equal("\\sqrt{12}", "2\\sqrt3")
