"""mathworker.py: the killable sympy process behind mathcheck.math_equal's symbolic verdicts.

mathcheck.py parses answers into trees (tuples) with its own allowlist parser; when exact arithmetic and
interval enclosures cannot decide, it sends pairs of trees here. A child process (started once, ~1 s to
import sympy) rebuilds each tree in sympy and answers "equal" only when it proves it. Model text never
reaches this process: only JSON trees of known operators, so nothing is eval'd or sympify'd.

Simplifications:
 1. One worker per process, one request at a time (a lock); a forked child starts its own.
 2. A timeout kills the worker and starts a fresh one at once (its answer for that request: {}, which the
    caller reads as unequal).
 3. The worker's memory is capped by RLIMIT_AS (4 GiB); CPU time only by the caller's timeout.

Use (mathcheck.py does):
    verdicts = _sympy_verdicts([("eq", tree_a, tree_b)], timeout=1.0)   # {("eq", a, b): True/False}, {} on timeout

Shapes: no tensors.
"""
import json
import os
import select
import subprocess
import sys
import threading
import time


def _to_json(node):
    """A mathcheck tree (tuples; numbers as ("num", Fraction)) as JSON lists, numbers as ["num", p, q]."""
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

    def build(node):
        """A JSON tree as a sympy expression (children built first; strings such as a function name kept)."""
        op, a = node[0], node[1:]
        if op == "num":
            return sp.Rational(a[0], a[1])
        if op == "sym":
            return sp.Symbol(a[0])
        if op == "const":
            return consts[a[0]]
        x = [build(c) if isinstance(c, list) else c for c in a]  # the operands, built
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


_worker = {"proc": None, "ready": False}  # this process's worker, and whether it has said "ready"
_worker_lock = threading.Lock()


def _reset_after_fork():
    """A forked child (e.g. a data-loader worker) must not share our sympy worker pipes or possibly-held
    locks: it starts its own on first use."""
    global _worker_lock
    _worker["proc"] = None
    _worker_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _start_worker():
    """Start the child (it imports sympy, then prints "ready"); _sympy_verdicts waits for that line."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = f"import sys; sys.path.insert(0, {here!r}); import mathworker; mathworker._math_worker()"
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
    """One line from the worker's stdout, or None if it is not complete within timeout seconds (or the pipe closed)."""
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
    """{(mode, a, b): bool} for pairs [(mode, tree_a, tree_b)], proven verdicts from the worker; {} when it
    fails. A reply past timeout (or a malformed one) kills the worker and starts a replacement at once; a worker
    that never got ready, or a broken pipe, is killed and a fresh one starts on the next call."""
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
