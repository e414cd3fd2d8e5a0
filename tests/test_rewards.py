"""Tests for rewards.py (everything but the code sandbox, which is in test_sandbox.py): the strict format
and its loopholes, answer extraction, a table of team-written math pairs (positives and hard
negatives), exactness and hard bounds of math_equal, Countdown cheats, language consistency, score()."""
import os
import sys
import threading
import time
from types import SimpleNamespace

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mathcheck  # noqa: E402
import rewards  # noqa: E402
from rewards import (check_answer, countdown_check, extract_answer, format_reward, language_consistency,  # noqa: E402
                     last_boxed, math_equal, parse_response, score)


def P(task, answer, **meta):
    return SimpleNamespace(task=task, answer=answer, meta=meta, question="q", bucket="E")


# ----------------------------------------------------------------------------- format

GOOD = [
    " <think> 17*23 = 391 </think> <answer> 391 </answer>",
    "<think>a</think><answer>b</answer>",
    "\n<think>\nstep 1\nstep 2\n</think>\n<answer>\n42\n</answer>\n",
    " <think> x </think> <answer> 391 </answer><|eos|>",
]
LOOPHOLES = [
    " <think> r </think> <answer> 391 </answer> trailing text",      # text after the answer
    " <think> r </think> <answer> 1 </answer> <answer> 391 </answer>",  # two answer blocks
    " <think> r </think> </think> <answer> 391 </answer>",             # extra </think>
    " <think>   </think> <answer> 391 </answer>",                      # empty think
    " <think> r <answer> 5 </answer> </think> <answer> 391 </answer>",  # answer tag inside reasoning
    " <think> r </think> <answer>  </answer>",                          # empty answer
    " <think> r </think> <answer> 391",                                 # unclosed answer
    "preamble <think> r </think> <answer> 391 </answer>",              # text before think
    " <think> r </think> between <answer> 391 </answer>",             # text between blocks
    " <think> a <think> b </think> <answer> 391 </answer>",            # nested think
    " <answer> 391 </answer>",                                          # no think
    " <think> r </think>",                                              # no answer
    " <think> r </think> <answer> 3 <answer> 391 </answer> </answer>",  # nested answer
    " <answer> 391 </answer> <think> r </think>",                      # wrong order
    " <think> r </think> <answer> 391 </answer> <|eos|> more",         # text after eos
    " <think> r </think> <answer> 391 </answer></think>",              # stray closing tag
    "",
]


@pytest.mark.parametrize("text", GOOD)
def test_format_good(text):
    assert format_reward(text) == 1.0


@pytest.mark.parametrize("text", LOOPHOLES)
def test_format_loopholes_score_zero(text):
    assert format_reward(text) == 0.0
    assert score(text, P("multiplication", "391"))["reward"] == 0.0


def test_think_prefilled():
    got = parse_response(" 17*23 is 391 </think> <answer> 391 </answer>", think_prefilled=True)
    assert got == ("17*23 is 391", "391")
    assert format_reward(" 17*23 is 391 </think> <answer> 391 </answer>") == 0.0
    assert format_reward(" <think> r </think> <answer> 391 </answer>", think_prefilled=True) == 0.0  # doubled tag
    assert format_reward(" </think> <answer> 391 </answer>", think_prefilled=True) == 0.0  # empty reasoning


def test_format_non_strings_and_huge():
    assert format_reward(None) == 0.0 and format_reward(123) == 0.0
    t0 = time.time()
    assert format_reward(" <think> " + "a" * 1_000_000 + " </think> <answer> 1 </answer>") == 0.0
    assert format_reward(" <think> " + "<" * 100_000 + " </think> <answer> 1 </answer>") == 1.0
    assert time.time() - t0 < 2


# ----------------------------------------------------------------------------- extraction

def test_extract_answer():
    assert extract_answer(" <think> r </think> <answer> 391 </answer>") == "391"
    assert extract_answer("so \\boxed{1} then \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert extract_answer("<answer> The answer is $\\boxed{\\{1, 2\\}}$ </answer>") == "\\{1, 2\\}"
    assert extract_answer("Natalia sold 48/2 = 24 clips.\n#### 72") == "72"
    assert extract_answer("#### 1,234") == "1234"
    assert extract_answer("\\boxed 5 is it") == "5"
    assert extract_answer("\\boxed{unbalanced {") is None
    assert extract_answer("no answer here") is None
    assert extract_answer(None) is None
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("\\boxed{a{b}c}") == "a{b}c"


# ----------------------------------------------------------------------------- math table

MATH_POS = [
    ("391", "391"), ("1/2", "0.5"), ("\\frac{1}{2}", "0.5"), ("\\dfrac{1}{2}", "\\frac12"), ("\\tfrac{3}{4}", "0.75"),
    ("2/4", "\\frac{1}{2}"), ("-\\frac{1}{2}", "\\frac{-1}{2}"), ("0.50", ".5"), ("3.0", "3"), ("1,000", "1000"),
    ("1{,}000{,}000", "1000000"), ("\\$18", "18"), ("18 dollars", "18"), ("10 \\text{ cm}", "10"),
    ("10\\text{cm}^2", "10"), ("50\\%", "50"), ("50%", "50"), ("90^\\circ", "90"), ("x = 2", "2"), ("y=-3", "-3"),
    ("\\sqrt{8}", "2\\sqrt{2}"), ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}"),
    ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt2}{2}"),
    ("\\sqrt[3]{27}", "3"), ("\\sqrt{16}", "4"), ("2^{10}", "1024"), ("2^10", "1024"), ("2**10", "1024"),
    ("10^{-3}", "0.001"), ("3 \\cdot 4", "12"), ("3 \\times 4", "12"), ("12 \\div 4", "3"), ("\\pi", "\\pi"),
    ("2\\pi", "\\pi \\cdot 2"), ("\\frac{\\pi}{2}", "\\pi/2"), ("\\frac{2\\pi}{3}", "2\\pi/3"),
    ("pi/4", "\\frac{\\pi}{4}"),
    ("\\left(1, 2\\right)", "(1,2)"), ("(1, 2)", "(1,2)"), ("[1, 2)", "[1,2)"), ("\\{1, 2, 3\\}", "\\{3, 2, 1\\}"),
    ("1, 2", "2, 1"), ("(-\\infty, 3]", "(-\\infty,3]"),
    ("(-\\infty, 0) \\cup (1, \\infty)", "(-\\infty,0)\\cup(1,\\infty)"),
    ("5!", "120"), ("\\binom{5}{2}", "10"), ("2\\frac{1}{2}", "\\frac{5}{2}"), ("x^2 + 2x + 1", "(x+1)^2"),
    ("2x + 2", "2(x+1)"), ("\\frac{x}{2}", "0.5x"), ("a_1 + a_2", "a_2 + a_1"), ("e^{i\\pi}", "-1"),
    ("\\sin^2 x + \\cos^2 x", "1"), ("\\log_2 8", "3"), ("\\ln(e^2)", "2"), ("\\frac{3}{\\sqrt{3}}", "\\sqrt{3}"),
    ("\\sqrt{3}+\\sqrt{12}", "3\\sqrt{3}"), ("(\\sqrt{2}+1)(\\sqrt{2}-1)", "1"), ("$\\frac{7}{8}$", "0.875"),
    ("\\(42\\)", "42"), ("\\text{Monday}", "monday"), ("\\textbf{(B)}", "(B)"), ("-0", "0"), ("+5", "5"),
    ("1/2004!", "\\frac{1}{2004!}"), ("2^{-99}", "\\frac{1}{2^{99}}"), ("0.333", "\\frac{333}{1000}"), ("007", "7"),
    ("1.5", "\\frac{3}{2}"), ("\\frac{10}{4}", "2.5"), ("-2.25", "-\\frac{9}{4}"),
    ("3\\sqrt{2}", "\\sqrt{18}"), ("2^{1/2}", "\\sqrt2"), ("\\cos(\\pi/3)", "1/2"), ("i^2", "-1"), ("x^2", "x**2"),
    ("\\sqrt{-4}", "2i"), ("\\frac{-1}{-2}", "0.5"), ("\\dfrac{1}{3} \\text{ of the cake}", "1/3"), ("(A)", "A"),
]

MATH_NEG = [
    ("1/2004!", "1/2006!"), ("2^{-99}", "2^{-98}"), ("0.333", "1/3"), ("0.3333333333", "\\frac{1}{3}"),
    ("3.14", "\\pi"), ("3.14159265358979", "\\pi"), ("1.414", "\\sqrt{2}"), ("2.718", "e"), ("391", "392"),
    ("-5", "5"), ("1/2", "2"), ("\\frac{1}{2}", "\\frac{2}{1}"), ("0.5", "50"), ("50\\%", "0.5"),
    ("(1, 2)", "[1, 2]"), ("(1, 2)", "(2, 1)"), ("[1, 2)", "(1, 2]"), ("\\{1, 2\\}", "(1, 2)"),
    ("\\{1, 2\\}", "\\{1, 2, 3\\}"),
    ("(1,2)", "1,2"), ("1 - \\frac{1}{e}", "1 + \\frac{1}{e}"), ("\\sqrt{2}", "\\sqrt{3}"), ("2\\sqrt{2}", "\\sqrt{2}"),
    ("x + 1", "x - 1"), ("x^2", "x^3"), ("2^{100}", "2^{100} + 1"), ("10^{-20}", "0"), ("1000001", "1000000"),
    ("(-\\infty, 3)", "(-\\infty, 3]"), ("\\infty", "-\\infty"), ("\\pi/2", "\\pi/3"), ("5!", "100"),
    ("\\text{Monday}", "Tuesday"), ("A", "B"), ("", "1"), ("1", ""), ("\\frac{1}{0}", "\\frac{1}{0}x"),
    ("1e3", "1000"), ("\\log_2 8", "2"), ("e^{i\\pi}", "1"), ("12", "1,2"), ("1,2", "12"),
    ("1/2006!", "0"), ("2^{-1000}", "2^{-1001}"), ("listen", "silent"), ("\\text{ab}", "\\text{ba}"),
    ("\\frac{1}{3}", "0.33333333333333333333333333333333"), ("\\frac{1}{2}", "\\frac{1}{2"), ("}1{", "1"), ("\\sqrt{2}", "1.41421356237"),
    ("\\frac{\\sqrt{3}}{2}", "0.866"), ("\\pi", "22/7"), ("2", "2.0000000001"), ("a-b", "b-a"), ("-\\sqrt{2}", "\\sqrt{2}"),
]


def test_math_table_size():
    assert len(MATH_POS) + len(MATH_NEG) >= 100


@pytest.mark.parametrize("pred,gold", MATH_POS)
def test_math_positive(pred, gold):
    assert math_equal(pred, gold), (pred, gold)
    assert math_equal(gold, pred), (gold, pred)


@pytest.mark.parametrize("pred,gold", MATH_NEG)
def test_math_negative(pred, gold):
    assert not math_equal(pred, gold), (pred, gold)
    assert not math_equal(gold, pred), (gold, pred)


HOSTILE_MATH = [
    "9^{9^{9^9}}", "9^9^9^9", "10^{10^{10}}", "2^{2^{2^{2^{2^{2}}}}}", "(10^{10})!", "100000!", "10^{10}!",
    "x^{10^{10}}", "(1+x)^{10^{8}}", "\\sqrt{" * 300 + "2" + "}" * 300, "{" * 100_000 + "1" + "}" * 100_000,
    "(" * 5000 + "1" + ")" * 5000, "1" * 1_000_000, "x+" * 400_000 + "1", "\\frac{" * 1000 + "1",
    "__import__('os').system('echo pwned')", "().__class__.__bases__[0].__subclasses__()", "lambda: 1",
    "\\boxed{" * 50, "2^{-10^{10}}", "\\binom{10^{10}}{5000}",
]


def test_math_hostile_bounded():
    for s in HOSTILE_MATH:
        t0 = time.time()
        assert math_equal(s, "1") is False, s[:40]
        assert math_equal("1", s) is False, s[:40]
        assert time.time() - t0 < 2.5, (s[:40], time.time() - t0)


def test_math_worker_timeout_recovers():
    # something our pre-checks allow but sympy takes long on: bounded by the worker timeout, then a fresh worker
    # (values within the 30-digit enclosure of each other, so the in-process interval check cannot settle it)
    roots = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    slow = "(2x+" + "+".join(f"2\\sqrt{{{p}}}" for p in roots) + ")^{40}"
    same = "2^{40}(x+" + "+".join(f"\\sqrt{{{p}}}" for p in roots) + ")^{40}"       # equal, but only expand shows it
    assert math_equal("\\sqrt{8}", "2\\sqrt{2}") and mathcheck._worker["proc"] is not None   # worker running
    old = mathcheck._worker["proc"]
    t0 = time.time()
    assert math_equal(slow, same, timeout=0.3) is False
    assert time.time() - t0 < 1.5
    assert old.poll() is not None and mathcheck._worker["proc"] is not old    # killed (not waited for), replaced
    assert math_equal("\\sqrt{8}", "2\\sqrt{2}")                  # the next call starts a fresh one


def test_math_never_raises_and_threads():
    for bad in [None, 3, b"1", "\\", "\\frac", "{", "}", "^", "!", "()", "(,)", "\\{\\}", "=", "x = = 2", "\x00"]:
        assert math_equal(bad, "1") is False
    res = []
    threads = [threading.Thread(target=lambda: res.append(math_equal("\\sqrt{12}", "2\\sqrt{3}"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert res == [True] * 4


def test_math_never_uses_eval(monkeypatch):
    import builtins
    monkeypatch.setattr(builtins, "eval", lambda *a, **k: pytest.fail("eval called"))
    assert math_equal("\\frac{1}{2}", "0.5") and not math_equal("__import__('os')", "0")


# ----------------------------------------------------------------------------- countdown

def test_countdown():
    nums, t = [3, 5, 7, 2], 31
    assert countdown_check("(3 * 7) + 5 * 2", nums, t)
    assert countdown_check("7*5-(3+2)+1-1", [7, 5, 3, 2, 1, 1], 30)
    assert countdown_check("(7 - 5) * 3 * 2 = 12", [7, 5, 3, 2], 12)
    assert countdown_check("6 / 4 * 2", [6, 4, 2], 3)                            # exact fractions
    assert not countdown_check("(3 * 7) + 5 * 2 = 30", nums, t)
    assert not countdown_check("3 * 7 + 5 * 2 + 3", nums, t)                      # reused number
    assert not countdown_check("7 * 5 - 3 - 1", nums, t)                          # missing + extra
    assert not countdown_check("3 * 7 + 10", nums, t)                             # missing numbers
    assert not countdown_check("31", nums, t)
    assert not countdown_check("3 ** 7 ** 5 ** 2", nums, t)                       # power tower
    assert not countdown_check("3 ^ 7 + 5 - 2", nums, t)
    assert not countdown_check("7 / (5 - 5) + 3 + 2", [7, 5, 5, 3, 2], 12)        # division by zero
    assert not countdown_check("-3 + 7 * 5 - 2 + 1", [3, 7, 5, 2, 1], 31)         # unary minus
    assert not countdown_check("3.0 * 7 + 5 * 2", nums, t)
    assert not countdown_check("__import__('os').system('x')", nums, t)
    assert not countdown_check("(" * 1000 + "3" + ")" * 1000, [3], 3)
    assert not countdown_check("3 * 7 + 5 * 2", nums, 30)
    assert not countdown_check(None, nums, t)
    assert not countdown_check("1" * 10000, [1], 1)
    assert countdown_check("(100 - 2) / 2", [100, 2, 2], 49)


# ----------------------------------------------------------------------------- dispatch and score

def test_check_answer_dispatch():
    assert check_answer("391", P("multiplication", "391"))
    assert check_answer("3,910", P("multiplication", "3910"))
    assert not check_answer("391.0", P("multiplication", "391"))
    assert not check_answer("392", P("multiplication", "391"))
    assert not check_answer("", P("multiplication", "391"))
    assert check_answer("3*7+5*2", P("countdown", "", numbers=[3, 5, 7, 2], target=31))
    assert not check_answer("3*7+5*2", P("countdown", ""))                       # missing meta -> False
    assert check_answer("\\frac{1}{2}", P("math", "0.5"))
    assert check_answer("The answer is \\boxed{72}", P("gsm8k", "Natalia ... \n#### 72"))
    assert check_answer("72", P("gsm8k", "72"))
    assert check_answer("abc", P("reverse", "ABC")) and not check_answer("abd", P("reverse", "abc"))
    assert check_answer("```python\ndef f(x): return x+1\n```", P("code", "", tests=["assert f(1) == 2"]))


def test_score():
    p = P("multiplication", "391")
    good = score(" <think> 17*23 = 391 </think> <answer> 391 </answer>", p)
    assert good == {"reward": 1.1, "format": 1.0, "accuracy": 1.0, "language": 0.0, "answer": "391"}
    wrong = score(" <think> 17*23 = 392 </think> <answer> 392 </answer>", p)
    assert wrong["reward"] == pytest.approx(0.1) and wrong["accuracy"] == 0.0
    w = score(" <think> multiply the numbers </think> <answer> 391 </answer>", p,
              weights={"format": 0.0, "language": 0.5})
    assert w["reward"] == pytest.approx(1.5) and w["language"] == 1.0
    assert score("391", p)["reward"] == 0.0 and score("391", p)["answer"] is None
    m = score(" <think> so </think> <answer> $\\boxed{\\frac{1}{2}}$ </answer>", P("math", "0.5"))
    assert m["accuracy"] == 1.0 and m["answer"] == "\\frac{1}{2}"
    cd = score(" <think> t </think> <answer> (3*7)+5*2 </answer>", P("countdown", "", numbers=[3, 5, 7, 2], target=31))
    assert cd["accuracy"] == 1.0
    pre = score(" 17*23 = 391 </think> <answer> 391 </answer>", p, think_prefilled=True)
    assert pre["accuracy"] == 1.0
    rewards.TASK_WEIGHTS["multiplication"] = {"format": 0.5}
    try:
        assert score(" <think> r </think> <answer> 391 </answer>", p)["reward"] == pytest.approx(1.5)
    finally:
        rewards.TASK_WEIGHTS.pop("multiplication")


# ----------------------------------------------------------------------------- language

def test_language_consistency():
    assert language_consistency("First multiply 17 by 23, then add.", "en") == 1.0
    assert language_consistency("", "en") == 0.0 and language_consistency("123 + 456 = 579", "en") == 0.0
    assert language_consistency("我们 计算 first", "en") == pytest.approx(1 / 5)     # 4 CJK chars + 1 word
    assert language_consistency("我们计算", "zh") == 1.0
    assert language_consistency("Сначала multiply", "en") == 0.5
    assert language_consistency("Sie ist nicht hier", "en") == 0.5              # ist, nicht: German
    assert language_consistency("señor multiply", "en") == 0.5
    assert language_consistency("Привет мир", "ru") == 1.0
    with pytest.raises(ValueError):
        language_consistency("x", "klingon")


def test_tasks_contract():
    """Every well-formed completion tasks.py renders (what the corpus teaches) scores format 1 and
    accuracy 1, and a wrong answer in the same format scores accuracy 0."""
    import random

    import tasks
    rng = random.Random(0)
    for task in ["multiplication", "addition", "countdown"]:
        for p in tasks.make_problems(task, 10, seed=3):
            for mode in ["D", "S", "L", "LV"]:
                r = score(tasks.render_response(p, mode, rng), p)
                assert (r["format"], r["accuracy"]) == (1.0, 1.0), (task, mode, r)
            bad = score(f" <think> guess </think> <answer> {p.answer}1 </answer>", p)
            assert (bad["format"], bad["accuracy"]) == (1.0, 0.0), (task, bad)


def test_overlong_penalty_hand_values():
    from rewards import overlong_penalty
    assert overlong_penalty(50, 72, 16) == 0.0     # under 72 - 16 = 56: free
    assert overlong_penalty(56, 72, 16) == 0.0
    assert overlong_penalty(64, 72, 16) == -0.5    # (56 - 64) / 16
    assert overlong_penalty(68, 72, 16) == -0.75
    assert overlong_penalty(72, 72, 16) == -1.0
    assert overlong_penalty(90, 72, 16) == -1.0
