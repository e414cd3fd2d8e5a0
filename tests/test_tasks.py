"""Tests for tasks.py: templates, synthetic tasks and splits, response modes, the corpus, loaders."""

import ast
import collections
import itertools
import json
import random
import re

import pytest

import tasks
from tasks import (EOS, Problem, corpus_docs, corpus_stats, corpus_stream, load_jsonl, make_problems,
                   mode_prefix, r1_zero_prompt, render_response, response_mode, split_of)

PAPER_TEMPLATE = (  # DeepSeek-R1 paper, Table 1, with "prompt" as the placeholder
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
    "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: prompt. Assistant:")


def test_templates_verbatim():
    assert r1_zero_prompt("prompt") == PAPER_TEMPLATE
    assert r1_zero_prompt("Compute {x} * 2").endswith("User: Compute {x} * 2. Assistant:")
    msgs = tasks.chat_messages("What is 2+2?")
    assert msgs == [{"role": "user", "content": "What is 2+2?\nPlease reason step by step, and put your final "
                                                "answer within \\boxed{}."}]


def _eval_countdown(expr):
    """Evaluate + - * / integer expressions exactly (no eval)."""
    def ev(n):
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant):
            return n.value
        a, b, op = ev(n.left), ev(n.right), type(n.op)
        return a + b if op is ast.Add else a - b if op is ast.Sub else a * b if op is ast.Mult else a / b
    return ev(ast.parse(expr, mode="eval"))


def test_make_problems_buckets_answers_determinism():
    shapes = {"E": {(1, 1), (2, 1)}, "M": {(2, 2), (3, 1)}, "H": {(3, 2), (4, 1)}, "VH": {(4, 2)}}
    ps = make_problems("multiplication", 400, seed=1)
    assert [p.bucket for p in ps[:8]] == ["E", "M", "H", "VH"] * 2
    for p in ps:
        a, b = p.meta["a"], p.meta["b"]
        assert (len(str(a)), len(str(b))) in shapes[p.bucket] and p.answer == str(a * b)
        assert p.question == f"Compute {a} * {b}" and p.task == "multiplication"
    seen = {(len(str(p.meta["a"])), len(str(p.meta["b"]))) for p in ps}
    assert seen == set().union(*shapes.values())
    assert make_problems("multiplication", 50, seed=1) == ps[:50]
    assert make_problems("multiplication", 50, seed=2) != ps[:50]
    for p in make_problems("addition", 100, seed=0):
        x, y = p.meta["numbers"]
        assert p.answer == str(x + y) and (len(str(x)), len(str(y))) in tasks.ADD_SHAPES[p.bucket]
        assert p.question == f"Compute {x} + {y}"
    for p in make_problems("countdown", 100, seed=0):
        nums, target = p.meta["numbers"], p.meta["target"]
        assert _eval_countdown(p.answer) == target
        assert sorted(int(x) for x in re.findall(r"\d+", p.answer)) == sorted(nums)
        assert len(nums) == tasks.COUNTDOWN_SIZES[p.bucket]
    assert len({p.question for p in make_problems("multiplication", 200, buckets=["VH"])}) == 200
    with pytest.raises(ValueError, match="unknown task"):
        make_problems("division", 3)
    with pytest.raises(ValueError, match="bucket"):
        make_problems("countdown", 3, buckets=["VH"])
    with pytest.raises(ValueError, match="split"):
        make_problems("addition", 3, split="val")


@pytest.mark.parametrize("task", ["multiplication", "addition", "countdown"])
def test_train_test_disjoint(task):
    train = make_problems(task, 3000, "train", seed=0)
    test = make_problems(task, 600, "test", seed=0)
    key = tasks._canonical_key
    assert not {key(p) for p in train} & {key(p) for p in test}
    assert all(split_of(task, key(p)) == "test" for p in test)
    if task == "multiplication":  # commuted operands are the same problem
        assert all(split_of(task, key(Problem("", "", task, "", {"a": p.meta["b"], "b": p.meta["a"]}))) == "test"
                   for p in test)


def test_corpus_never_contains_test_problems():
    """No test problem appears in the corpus, neither asked nor worked out as a sub-product."""
    test_keys = {tasks._canonical_key(p) for p in make_problems("multiplication", 300, "test", seed=0, buckets=["E"])}
    n = 0
    for doc in itertools.islice(corpus_stream(5), 3000):
        for a, b in re.findall(r"Compute (\d+) \* (\d+)", doc):
            assert tuple(sorted((int(a), int(b)))) not in test_keys
        if "Using the numbers" in doc:  # Countdown searches multiply small numbers incidentally
            continue
        for a, b in re.findall(r"(?<![\d+] )(?<!\d)(\d+) \* (\d+)(?= [:=])", doc):  # products shown anywhere
            key = tuple(sorted((int(a), int(b))))
            n += 1
            assert max(key) < 10 or split_of("multiplication", key) == "train", (key, doc)
        for x, y in re.findall(r"^add (\d+) \+ (\d+) :", doc, re.M):
            key = tuple(sorted((int(x), int(y))))
            assert split_of("addition", key) == "train" or "Compute" in doc
    assert n > 3000


def _check_arithmetic(text):
    """Every 'x op y = z' in the text holds (chains like '3 * 6 = 18 + 4 = 22' included)."""
    n = 0
    for m in re.finditer(r"(?<!\d)(?=(\d+) ([*+]) (\d+) = (\d+))", text):
        x, op, y, z = m.groups()
        assert (int(x) * int(y) if op == "*" else int(x) + int(y)) == int(z), f"{m.groups()} in {text}"
        n += 1
    return n


def _l_trace_consistent(text):
    """The long scratchpad's bookkeeping: each '-> w' extends the previous digits by one digit on the left."""
    for line in text.split("\n"):
        ws = re.findall(r"-> (\d+)", line)
        for prev, cur in zip(ws, ws[1:]):
            assert cur.endswith(prev) and len(cur) == len(prev) + 1, line


@pytest.mark.parametrize("task", ["multiplication", "addition", "countdown"])
def test_render_response_modes(task):
    rng = random.Random(0)
    for p in make_problems(task, 40, seed=3):
        for mode in ["D", "S", "L", "LV"]:
            r = render_response(p, mode, rng)
            m = re.fullmatch(r" <think> (.+) </think> <answer> (.+) </answer>", r, re.S)
            assert m and m.group(2) == p.answer, r
            if task != "countdown" and mode in ("D", "S"):  # chains of equal expressions
                for part in re.split(r" , | : ", m.group(1).removeprefix("split ")):
                    assert len({_eval_countdown(side) for side in part.split(" = ")}) == 1, part
            if task != "countdown" and mode == "L":
                _check_arithmetic(m.group(1))
            if mode == "L" and task != "countdown":
                _l_trace_consistent(m.group(1))
                assert m.group(1).endswith(p.answer)
    with pytest.raises(ValueError, match="mode"):
        render_response(p, "X")


def test_long_mode_is_step_by_step_and_correct():
    rng = random.Random(1)
    for p in make_problems("multiplication", 200, seed=4, buckets=["H", "VH"]):
        think = render_response(p, "L", rng)
        a, b = p.meta["a"], p.meta["b"]
        lines = think.split("\n")
        assert lines[0] == f" <think> {a} * {b} :"
        nonzero = [c for c in str(b) if c != "0"]
        assert sum(line.startswith(f"{a} * ") for line in lines) == len(nonzero)  # one line per digit of b
        assert sum(line.startswith("add ") for line in lines) == len(nonzero) - 1
        assert _check_arithmetic(think) >= len(str(a)) * len(nonzero)
        _l_trace_consistent(think)
        assert think.startswith(mode_prefix(p, "L"))
        for mode in ["D", "S", "LV"]:
            assert render_response(p, mode, rng).startswith(mode_prefix(p, mode))
        assert not render_response(p, "S").startswith(mode_prefix(p, "D"))
        # locality: each step's digit(s) are the last digit(s) of the remainder that opens it
        for rest, x in re.findall(r"; (\d+) : (\d) \* \d", think):
            assert rest[-1] == x and str(a).startswith(rest)
        for xs, ys, cx, cy in re.findall(r"; (\d+) \+ (\d+) : (\d) \+ (\d)", think):
            assert (xs[-1], ys[-1]) == (cx, cy) and len(xs) == len(ys)
        assert len(re.findall(r"; (\d+) : (\d) \* \d", think)) == (len(str(a)) - 1) * len(nonzero)
        # every multiplication step multiplies one digit of a by one digit of b
        for x, d in re.findall(r"(?<!\d)(\d+) \* (\d+) = \d+ ", think.split("\n", 1)[1].replace(f"{a} * ", "")):
            assert len(x) == 1 and len(d) == 1


def test_lv_slips_are_caught_and_corrected():
    rng = random.Random(2)
    probs = make_problems("multiplication", 300, seed=5, buckets=["M", "H", "VH"])
    n_slip = 0
    for p in probs:
        r = render_response(p, "LV", rng)
        assert r.endswith(f"<answer> {p.answer} </answer>")
        checks = re.findall(r"check .*", r)
        assert checks
        if "wrong" in r or "mistake" in r:
            n_slip += 1
            bad = [c for c in checks if "!=" in c]
            assert len(bad) == 1 and ("wait" in bad[0]) and "redo" in bad[0]
            assert r.index("redo") < r.index("</think>")
        assert checks[-1].rstrip().endswith("ok") or "ok" in checks[-1]
    assert 0.2 < n_slip / len(probs) < 0.47


def test_corpus_stream_format_and_composition():
    docs = list(itertools.islice(corpus_docs(0), 6000))
    assert [d for _, d in itertools.islice(corpus_docs(0), 50)] == [d for _, d in docs[:50]]
    assert [d for _, d in itertools.islice(corpus_docs(1), 50)] != [d for _, d in docs[:50]]
    prompt_head = r1_zero_prompt("")[:60]
    n_ok = n_dialog = 0
    l_share = {}
    for info, doc in docs:
        assert doc.endswith(EOS) and doc.count(EOS) == 1
        if info["kind"] == "dialogue":
            n_dialog += 1
            assert doc.startswith(prompt_head) and ". Assistant:" in doc
            body = doc.split(". Assistant:", 1)[1][:-len(EOS)]
            well_formed = re.fullmatch(r" <think> (.+) </think> <answer> (.+) </answer>", body, re.S) is not None
            assert well_formed != info["defect"], body
            n_ok += well_formed
            b = info["bucket"]
            tot, longs = l_share.get(b, (0, 0))
            l_share[b] = (tot + 1, longs + (info["mode"] in ("L", "LV")))
        elif info["kind"] == "filler":
            assert "<think>" not in doc and re.search(r"\b(wait|check|[Hh]owever)\b", doc)
        elif info["kind"] == "drill":
            assert "Assistant:" not in doc
    assert 0.25 < 1 - n_ok / n_dialog < 0.35
    shares = [longs / tot for tot, longs in l_share.values()]  # mode independent of difficulty
    assert max(shares) - min(shares) < 0.08 and 0.06 < sum(shares) / len(shares) < 0.18
    s = corpus_stats(0, n_docs=3000)
    assert abs(s["doc_share"]["drill"] - 0.45) < 0.04 and abs(s["doc_share"]["dialogue"] - 0.35) < 0.04
    assert abs(sum(s["char_share"][k] for k in ["drill", "textbook", "dialogue", "filler"]) - 1) < 1e-9
    assert s["mb_per_s"] > 1.0  # >= 5 MB/s on an idle core (bench); loose here on busy CI
    assert 0.25 < s["dialogue_defect_rate"] < 0.36


def test_corpus_mix_overrides_and_errors():
    only = list(itertools.islice(corpus_docs(0, {"kinds": {"dialogue": 1}, "dialogue_modes": {"L": 1},
                                                 "defect_rate": 0, "tasks": {"multiplication": 1}}), 100))
    assert all(i["kind"] == "dialogue" and i["mode"] == "L" and not i["defect"] for i, _ in only)
    assert all("carry" in d for _, d in only)
    with pytest.raises(ValueError, match="unknown mix key"):
        next(corpus_stream(0, {"kindz": {}}))
    with pytest.raises(ValueError, match="weights"):
        next(corpus_stream(0, {"kinds": {"drill": -1}}))
    with pytest.raises(ValueError, match="weights"):
        next(corpus_stream(0, {"tasks": {"division": 1}}))


def test_loaders(tmp_path):
    g = tmp_path / "gsm.jsonl"
    g.write_text(json.dumps({"question": "How many?", "answer": "3 + 4 = 7\n#### 1,234"}) + "\n\n")
    [p] = load_jsonl(str(g), "gsm8k")
    assert (p.question, p.answer, p.task) == ("How many?", "1234", "gsm8k")
    m = tmp_path / "math.jsonl"
    m.write_text(json.dumps({"problem": "Find x.", "solution": "so \\boxed{1} no, \\boxed{\\frac{1}{2}}.",
                             "level": "Level 3", "type": "Algebra"}) + "\n")
    [p] = load_jsonl(str(m), "math")
    assert (p.answer, p.bucket, p.meta["type"]) == ("\\frac{1}{2}", "L3", "Algebra")
    c = tmp_path / "gen.jsonl"
    c.write_text(json.dumps({"q": "2+2", "a": 4}) + "\n" + json.dumps({"q": "3+3", "a": 6}) + "\n")
    ps = load_jsonl(str(c), "generic", question_field="q", answer_field="a")
    assert [(p.question, p.answer) for p in ps] == [("2+2", "4"), ("3+3", "6")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "x", "answer": "#### 1"}) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: invalid JSON"):
        load_jsonl(str(bad), "gsm8k")
    bad.write_text(json.dumps({"question": "x", "answer": "no final"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: GSM8K answer has no final"):
        load_jsonl(str(bad), "gsm8k")
    bad.write_text(json.dumps({"problem": "x", "solution": "none"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: MATH solution has no"):
        load_jsonl(str(bad), "math")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: expected an object with fields 'q'"):
        load_jsonl(str(bad), "generic", question_field="q")
    with pytest.raises(ValueError, match="kind"):
        load_jsonl(str(bad), "csv")
    with pytest.raises(FileNotFoundError):
        load_jsonl(str(tmp_path / "missing.jsonl"))


def test_count_task_modes_and_split():
    rng = random.Random(5)
    train = make_problems("count", 200, seed=1)
    test = make_problems("count", 100, split="test", seed=1)
    key = lambda p: "".join(p.meta["letters"])  # noqa: E731
    assert not {key(p) for p in train} & {key(p) for p in test}
    for p in train[:50]:
        assert len(set(p.meta["letters"])) == len(p.meta["letters"])  # distinct: the next letter is unambiguous
        assert p.answer == str(sum(x <= "m" for x in p.meta["letters"]))
        for mode in ["D", "S", "L", "LV"]:
            r = render_response(p, mode, rng)
            assert r.startswith(mode_prefix(p, mode)) and r.endswith(f"<answer> {p.answer} </answer>")
        steps = re.findall(r"([a-z]) (yes|no) (\d+)", render_response(p, "L", rng).split("step ")[1])
        assert [x for x, _, _ in steps] == list("abcdefghijklm")  # one look-up per letter of a..m, in order
        run = 0
        for x, seen, c in steps:  # each look-up and the running count are right
            assert (seen == "yes") == (x in p.meta["letters"])
            run += seen == "yes"
            assert int(c) == run
    lengths = {b: [len(p.meta["letters"]) for p in make_problems("count", 40, buckets=[b])] for b in "E M H VH".split()}
    assert max(lengths["E"]) < min(lengths["M"]) and max(lengths["H"]) < min(lengths["VH"])


ADD_MIX = {"tasks": {"addition": 1.0}, "drills": {"add_line": 0.7, "add_facts": 0.3}}


def test_addition_long_mode_grows_with_digits_and_is_local():
    """L: one column per digit (so its length grows with the bucket), every fact right, each column reading
    the last digits of the remainders that open it; D/S stay short."""
    rng = random.Random(3)
    mean_len = {}
    for b in ["E", "M", "H", "VH"]:
        lens = []
        for p in make_problems("addition", 60, seed=6, buckets=[b]):
            x, y = p.meta["numbers"]
            n = max(len(str(x)), len(str(y)))
            think = render_response(p, "L", rng)
            assert think.startswith(mode_prefix(p, "L")) and response_mode(p, think) == "L"
            assert think.count(" carry ") == n + (x + y >= 10 ** n)  # one column per digit (+ a final carry)
            assert _check_arithmetic(think) >= n
            _l_trace_consistent(think)
            for xs, ys, cx, cy in re.findall(r"; (\d+) \+ (\d+) : (\d) \+ (\d)", think):
                assert (xs[-1], ys[-1]) == (cx, cy) and len(xs) == len(ys)
            assert render_response(p, "D", rng).startswith(mode_prefix(p, "D"))
            assert response_mode(p, render_response(p, "D", rng)) == "other"
            lens.append(len(think.split()))
        mean_len[b] = sum(lens) / len(lens)
    assert mean_len["E"] < mean_len["M"] < mean_len["H"] < mean_len["VH"]
    assert mean_len["VH"] > 2 * mean_len["E"]


def checked_columns(r: str, x: int, y: int) -> list[tuple]:
    """The checked columns of an LV trace of x + y, each asserted consistent: the check reads the fact as written,
    says ok exactly when the difference is the digit the column added, and otherwise says wrong and rewrites
    the right fact."""
    cols = re.findall(r"(\d) \+ (\d) = (\d+) , check (\d+) - (\d) = (-?\d+)( ok|[^;]*? \. \d \+ \d = \d+)", r)
    assert len(cols) == max(len(str(x)), len(str(y)))
    for cx, cy, s, s2, cy2, diff, verdict in cols:
        assert s == s2 and cy == cy2 and int(s) - int(cy) == int(diff)  # the check reads what was written
        assert (verdict == " ok") == (int(diff) == int(cx))
        if verdict != " ok":
            assert re.search("wrong|mistake", verdict) and verdict.endswith(f"{cx} + {cy} = {int(cx) + int(cy)}")
    return cols


def test_addition_lv_checks_every_column_by_the_inverse_and_fixes_slips():
    """LV adds by columns and checks each column fact right after it by subtraction, from the numbers just
    written; the verdict compares the difference with the digit the column added, so it catches a slip the
    model makes itself. An injected wrong fact (about a third of traces) fails its check, is called wrong in
    words, and is followed by the right fact; the columns go on from it and the answer is right."""
    rng = random.Random(4)
    slipped, n = 0, 600
    for p in make_problems("addition", n, seed=7, buckets=["M", "H", "VH"]):
        x, y = p.meta["numbers"]
        r = render_response(p, "LV", rng)
        assert r.startswith(mode_prefix(p, "LV")) and response_mode(p, r) == "LV"
        assert r.endswith(f"so the sum is {x + y} </think> <answer> {p.answer} </answer>")
        cols = checked_columns(r, x, y)
        slipped += any(v != " ok" for *_, v in cols)
        assert len(re.findall("wrong|mistake", r)) == sum(v != " ok" for *_, v in cols) <= 1
    assert 0.25 < slipped / n < 0.42, slipped / n


def test_add_check_drill_is_lvs_scratchpad_and_catches_its_slips():
    rng = random.Random(5)
    caught = 0
    for _ in range(100):
        for line in tasks._drill(rng, "add_check").split("\n"):
            x, y = map(int, re.match(r"add (\d+) \+ (\d+) :", line).groups())
            assert split_of("addition", tuple(sorted((x, y)))) == "train"
            assert line.endswith(f"-> {x + y}") and line.count(", check") == len(str(max(x, y)))
            caught += bool(re.search("wrong|mistake", line))
    assert caught > 50


def test_addition_lv_per_column_slips_are_each_caught_and_fixed():
    """LV adds by columns and checks each column fact right after it by subtraction, from the numbers just
    written; the verdict compares the difference with the digit the column added, so it catches a slip the
    model makes itself. An injected wrong fact (each column with probability slip_rate, 1/3 by default) fails its
    check, is called wrong in words, and is followed by the right fact; the columns go on from it and the answer
    is right."""
    rng = random.Random(4)
    slipped, columns, n = 0, 0, 600
    for p in make_problems("addition", n, seed=7, buckets=["M", "H", "VH"]):
        x, y = p.meta["numbers"]
        r = tasks.think_text(p, "LV", rng, per_column=True)
        assert r.startswith(mode_prefix(p, "LV")[len(" <think> "):]) and r.endswith(f"so the sum is {x + y}")
        cols = checked_columns(r, x, y)
        slipped += sum(v != " ok" for *_, v in cols)
        columns += len(cols)
        assert len(re.findall("wrong|mistake", r)) == sum(v != " ok" for *_, v in cols)
    assert 0.29 < slipped / columns < 0.38, slipped / columns


def test_per_column_add_check_drill_is_under_lvs_head_and_catches_its_slips():
    rng = random.Random(5)
    caught = columns = 0
    for _ in range(100):
        for line in tasks.unmark(tasks._drill(rng, "add_check", slip_rate=0.3, per_column=True))[0].split("\n"):
            x, y = map(int, re.match(r"add and check (\d+) \+ (\d+) :", line).groups())  # LV's head
            assert split_of("addition", tuple(sorted((x, y)))) == "train"
            assert line.endswith(f"-> {x + y}") and line.count(", check") == len(str(max(x, y)))
            caught += len(re.findall("wrong|mistake", line))
            columns += line.count(", check")
    assert 0.25 < caught / columns < 0.35, caught / columns


def test_unmark_returns_the_text_and_the_spans_of_the_marked_facts():
    a, b = tasks.SLIP_MARKS
    text, spans = tasks.unmark(f"2 + 7 = {a}10{b} , check 10 - 7 = 3 ; 5 + 5 = {a}9{b} .")
    assert text == "2 + 7 = 10 , check 10 - 7 = 3 ; 5 + 5 = 9 ." and [text[i:j] for i, j in spans] == ["10", "9"]
    assert tasks.unmark("no slips") == ("no slips", [])


def test_corpus_spans_are_exactly_the_injected_wrong_facts():
    """Every span corpus_docs reports is the sum of a column that its check then calls wrong, and every column
    called wrong is a span: the masked tokens are the slips and nothing else. No mark leaks into a document."""
    mix = {"tasks": {"addition": 1.0}, "drills": {"add_check": 1.0}, "slip_rate": 0.3, "mask_slips": 1}
    n_spans = 0
    for info, doc in itertools.islice(tasks.corpus_docs(seed=2, mix=mix), 300):
        assert not set(tasks.SLIP_MARKS) & set(doc)
        wrong = [m.start(1) for m in re.finditer(r"\d \+ \d = (\d+) , check \d+ - \d = \d+ , wait", doc)]
        assert [a for a, _ in info["slips"]] == wrong
        for (a, b) in info["slips"]:
            cx, cy = map(int, re.findall(r"(\d) \+ (\d) = $", doc[:a])[0])
            assert int(doc[a:b]) != cx + cy
        n_spans += len(wrong)
    assert n_spans > 100


def test_own_slips_are_learned_in_l_and_lv_carried_to_ls_answer_and_caught_by_lv():
    """own_slip_rate: each column fact of L and LV dialogues slips with that probability and is not masked (the
    model learns to slip); L's slip carries into its sum and answer, LV's check catches it. LV's marked slips top
    its columns up to slip_rate; the masked spans are exactly those."""
    mix = {"tasks": {"addition": 1.0}, "kinds": {"dialogue": 1.0}, "dialogue_modes": {"L": 0.5, "LV": 0.5},
           "defect_rate": 0.0, "slip_rate": 0.3, "mask_slips": 1, "own_slip_rate": 0.1}
    column = re.compile(r"(\d) \+ (\d) = (\d+)( , check \d+ - \d = \d+ (?:ok|, wait))?")  # a rewrite has no check
    c = collections.Counter()
    for info, doc in itertools.islice(tasks.corpus_docs(seed=3, mix=mix), 2000):
        x, y = map(int, re.search(r"Compute (\d+) \+ (\d+)", doc).groups())
        start = doc.index("Assistant: <think>")
        think = doc[start:doc.rindex("</think>")]
        said = int(re.search(r"so the sum is (\d+)", think).group(1))
        assert f"<answer> {said} </answer>" in doc  # the answer is what the trace says
        masked = {a - start for a, _ in info["slips"]}
        for m in column.finditer(think):
            if info["mode"] == "LV" and not m.group(4):
                continue  # the right fact rewritten after a "wrong" verdict
            slipped = int(m.group(1)) + int(m.group(2)) != int(m.group(3))
            if info["mode"] == "L":
                assert m.start(3) not in masked
                c["L columns"], c["L slips"] = c["L columns"] + 1, c["L slips"] + slipped
            else:
                assert slipped == ("wait" in m.group(4))  # every slip is caught, and only slips
                assert slipped or m.start(3) not in masked
                kind = "LV masked slips" if m.start(3) in masked else "LV own slips"
                c["LV columns"], c[kind] = c["LV columns"] + 1, c[kind] + slipped
        if info["mode"] == "L":
            c["L wrong answers"] += said != x + y
        else:
            assert said == x + y
    assert 0.08 < c["L slips"] / c["L columns"] < 0.12, c  # L's own slips, in the loss
    assert 0.08 < c["LV own slips"] / c["LV columns"] < 0.12, c  # LV slips as often, in the loss
    assert 0.27 < (c["LV own slips"] + c["LV masked slips"]) / c["LV columns"] < 0.33, c  # the check taught at 0.3
    assert c["L wrong answers"] > 100, c


def test_operands_first_opens_every_mode_but_s_with_the_operands_and_keeps_the_scratchpads():
    """operands_first: L and LV dialogues (and their drills) open with the problem's operands, then their head, as
    D opens with them then '='; the forced-mode prefixes (lead=True) are what the corpus writes, response_mode
    reads both layouts, and past the opening every trace is the one of the default layout."""
    mix = {"tasks": {"addition": 1.0}, "kinds": {"dialogue": 0.7, "drill": 0.3}, "defect_rate": 0.0,
           "drills": {"add_line": 0.5, "add_check": 0.5}, "dialogue_modes": {"D": 0.3, "L": 0.35, "LV": 0.35},
           "slip_rate": 0.3, "mask_slips": 1, "own_slip_rate": 0.1}
    seen = collections.Counter()
    old, new = tasks.corpus_docs(seed=4, mix=mix), tasks.corpus_docs(seed=4, mix={**mix, "operands_first": 1})
    for (info, a), (_, b) in itertools.islice(zip(old, new), 600):
        if info["kind"] == "drill":  # the same lines with the heads after the operands
            head = r"(add|add and check) (\d+ \+ \d+) :"
            assert re.sub(head, lambda m: f"{m[2]} {tasks.heads(True)[m[1] != 'add']} :", a) == b
            seen["drill"] += 1
            continue
        x, y = map(int, re.search(r"Compute (\d+) \+ (\d+)", b).groups())
        p = tasks.Problem(f"Compute {x} + {y}", str(x + y), "addition", info["bucket"], {"numbers": [x, y]})
        response = b[b.index("Assistant:") + len("Assistant:"):]
        assert response.startswith(tasks.mode_prefix(p, info["mode"], lead=True))
        assert response_mode(p, response) == response_mode(p, a[a.index("Assistant:") + 10:]) == \
            {"D": "other", "L": "L", "LV": "LV"}[info["mode"]]
        if info["mode"] != "D":  # the same scratchpad after the opening
            assert b.split(" :", 1)[1] == a.split(" :", 1)[1]
            assert re.match(r" <think> \d+ \+ \d+ by columns", response)
        seen[info["mode"]] += 1
    assert min(seen.values()) > 50, seen


def test_add_small_drill_is_direct_and_never_a_test_problem():
    rng = random.Random(2)
    for _ in range(50):
        for line in tasks._drill(rng, "add_small").split("\n"):
            x, y, z = map(int, re.fullmatch(r"(\d+) \+ (\d+) = (\d+)", line).groups())
            assert x + y == z and split_of("addition", tuple(sorted((x, y)))) == "train"


def test_response_mode():
    p = make_problems("addition", 1, seed=0, buckets=["H"])[0]
    assert [response_mode(p, render_response(p, m)) for m in ["D", "S", "L", "LV"]] == ["other", "other", "L", "LV"]
    q = make_problems("multiplication", 1, seed=0, buckets=["H"])[0]
    assert [response_mode(q, render_response(q, m)) for m in ["D", "L", "LV"]] == ["other", "L", "LV"]
    assert response_mode(Problem("What?", "3", "gsm8k", "L1"), " <think> x") is None


def test_addition_corpus_never_contains_test_problems():
    test_keys = {tasks._canonical_key(p) for p in make_problems("addition", 400, "test", seed=0)}
    n = 0
    for doc in itertools.islice(corpus_stream(3, ADD_MIX), 3000):
        for x, y in re.findall(r"Compute (\d+) \+ (\d+)", doc):
            assert tuple(sorted((int(x), int(y)))) not in test_keys
        for x, y in re.findall(r"^(?:add|add and check|check|redo) (\d+) \+ (\d+) :", doc, re.M):
            n += 1
            assert split_of("addition", tuple(sorted((int(x), int(y))))) == "train", doc
    assert n > 1000


def test_response_mode_counts_attempts_with_miscopied_operands():
    p = make_problems("addition", 1, seed=0, buckets=["VH"])[0]
    assert response_mode(p, " <think> add 1234 + 9999 : 4 + 9 = 13") == "L"  # operands miscopied: still L
    assert response_mode(p, " <think> add and check 12 + 99 : 2 + 9 = 11") == "LV"
    assert response_mode(p, " <think> 1234 + 9999 = 11233 </think>") == "other"
    q = make_problems("multiplication", 1, seed=0, buckets=["H"])[0]
    assert response_mode(q, " <think> 12 * 34 :\n12 * 4 : 2 * 4 = 8") == "L"
    assert response_mode(q, " <think> 12 * 34 = 408") == "other"


def test_max_task_the_reference_of_exercise_6():
    probs = make_problems("max", 300, seed=0)
    assert {p.bucket for p in probs} == {"E", "M", "H"}
    assert all(p.answer == str(max(p.meta["numbers"])) and len(set(p.meta["numbers"])) == len(p.meta["numbers"])
               for p in probs)
    assert [len(p.meta["numbers"]) for p in probs[:3]] == [3, 6, 10]
    test = make_problems("max", 300, split="test", seed=0)
    assert not {tasks._canonical_key(p) for p in probs} & {tasks._canonical_key(p) for p in test}
    p = probs[0]
    import rewards
    assert rewards.score(f" <think> ... </think> <answer> {p.answer} </answer>", p)["accuracy"] == 1.0
