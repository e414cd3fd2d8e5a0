"""Tests for sandbox.py, the code-execution reward: scoring of stdin/stdout and assert tests, the assert forms
judged outside the sandbox, the one-line errors when the machine cannot isolate, and the pieces (seccomp filter,
private root, uid claims). The hostile programs are in test_sandbox_hostile.py."""
import ast
import os
import struct
from types import SimpleNamespace

import pytest

import rewards
import sandbox
from sandbox import code_reward, code_reward_details, code_rewards, run_sandboxed

TIMEOUT = 1.5


def test_io_scoring_and_partial_output():
    tests = [{"input": "3\n", "output": "6\n"}, {"input": "5\n", "output": "10"}, {"input": "0\n", "output": "0\n"}]
    assert code_reward("print(int(input()) * 2)", tests, timeout=TIMEOUT) == 1.0
    wrong_on_5 = "n = int(input())\nprint(n * 2 if n != 5 else 11)"
    assert code_reward(wrong_on_5, tests, timeout=TIMEOUT) == pytest.approx(2 / 3)
    two = [{"input": "", "output": "1\n2\n"}]
    cases = {"print(1)": 0.0,                                   # only part of the output
             "print(1)\nprint(2)\nprint(3)": 0.0,               # extra lines
             "import os\nos._exit(0)": 0.0,                     # silent exit
             "print(1)   \nprint(2)\n\n": 1.0,                  # trailing space and blank lines are fine
             "this is not python": 0.0}
    assert code_rewards(list(cases), [two] * len(cases), timeout=TIMEOUT) == list(cases.values())
    assert code_reward("print(1)\nprint(2)", [], timeout=TIMEOUT) == 0.0


def test_assert_scoring():
    tests = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(0.1, 0.2) == 0.3"]
    assert code_reward("def add(a, b): return a + b", tests, timeout=TIMEOUT) == 1.0
    d = code_reward_details(["def add(a, b): return 5"], [tests], timeout=TIMEOUT)[0]
    assert d["reward"] == pytest.approx(1 / 3) and d["passed"] == [True, False, False]
    assert d["reasons"] == ["", "assert is false", "assert is false"]


def test_assert_forms_judged_outside():
    code = "def f(x): return sorted(x)\nK = 7"
    ok = ["assert f([3, 1]) == [1, 3]", "assert len(f([1])) == 1", "assert f([2, 1])[0] < 2", "assert K == 7",
          "assert f([5, 4])[-1] in (5, 6)", "assert f([]) == [] and not f([])", "assert sum(f([1, 2])) * 2 == 6",
          "assert f(list(range(3))) == [0, 1, 2]", "assert f([1]) != [2], 'message'", "assert f(x=[2, 1])[1:] == [2]"]
    got = code_reward_details([code], [ok], timeout=TIMEOUT)[0]
    assert got["passed"] == [True] * len(ok), got["reasons"]
    assert code_reward(code, ["assert f([2, 1])[0] > 2"], timeout=TIMEOUT) == 0.0
    refused = ["assert f([1]).count(1) == 1", "assert f(f([1])) == [1]", "assert [x for x in f([1])] == [1]",
               "assert (lambda: 1)() == 1", "assert f([2]) ** 2 == 4", "x = 1", "assert 1\nassert 2"]
    d = code_reward_details([code], [refused], timeout=TIMEOUT)[0]
    assert d["reward"] == 0.0 and all(r.startswith("refused") for r in d["reasons"]), d["reasons"]
    with pytest.raises(ValueError, match="unsupported in an assert test"):
        sandbox.check_tests(["assert f([1]).count(1) == 1"])
    sandbox.check_tests(ok + [{"input": "1", "output": "2"}])


def test_compile_assert_sends_no_expected_value():
    """The sandbox gets only the solution's calls: the literal 987654 never goes in."""
    tree, slots, calls = sandbox._compile_assert("assert g(1, 'a') == 987654 and len(h()) == 3")
    assert calls == ["g(1, 'a')", "h()"] and "987654" not in "".join(calls)
    assert sandbox._judge(tree, slots, [987654, [0, 0, 0]]) is True
    assert sandbox._judge(tree, slots, ["987654", [0, 0, 0]]) is False        # strict types: str != int
    assert sandbox._judge(tree, slots, [987654, (0, 0)]) is False
    tree, slots, _ = sandbox._compile_assert("assert (f(1) or 5) == 5 and (f(2) and 7) == 0")
    assert sandbox._judge(tree, slots, [0, 0]) is True and sandbox._judge(tree, slots, [4, 0]) is False
    tree, slots, _ = sandbox._compile_assert("assert f(1) * 3 == 'aaa'")
    with pytest.raises(ValueError):                                            # "a" * 10**12 never built
        sandbox._judge(tree, slots, ["a"])


def test_values_equal_is_strict():
    eq = sandbox._values_equal
    assert eq(0.1 + 0.2, 0.3) and eq([1, (2, 3)], [1, (2, 3)]) and eq({"a": 1.0}, {"a": 1.0 + 1e-12})
    assert not eq(True, 1) and not eq(1, "1") and not eq([1, 2], (1, 2)) and not eq(1.0, True)
    assert not eq(float("nan"), float("nan")) and not eq({1: 2}, {1: 3})


def test_parse_report_never_raises():
    """A forged report (hole 11: "[" * 200000 raised RecursionError out of the reward) is just no report."""
    bad = [b"[" * 200000, b"[[\"ok\", \"" + b"(" * 100000 + b"\"]]", b"[[\"ok\", \"9" + b"9" * 100000 + b"\"]]",
           b"\xff\xfe", b"", b"null", b"[[\"ok\", \"__import__('os')\"]]", b"[[\"ok\", 1]]", b"{}" * 1000]
    for out in bad:
        assert sandbox._parse_report(out, 1) is None, out[:40]
    assert sandbox._parse_report(b"noise\n[[\"ok\", \"[1, 2]\"]]\n", 1) == [("ok", [1, 2])]


def test_reward_never_raises_on_junk():
    junk_tests = [None, 5, [{"input": 1}], ["assert"], [b"bytes"], [{"output": 3}], ["assert f(" * 50000]]
    got = code_reward_details(["print(1)"] * len(junk_tests), junk_tests, timeout=TIMEOUT)
    assert [g["reward"] for g in got] == [0.0] * len(junk_tests)
    assert code_rewards([None, 3, b"print(1)"], [[{"input": "", "output": "1"}]] * 3) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="must match"):              # a caller's bug, not a program's
        code_rewards(["print(1)"], [])


def test_unavailable_sandbox_is_reward_zero_with_reason(monkeypatch):
    monkeypatch.setattr(sandbox, "_setup_state", {"error": "code sandbox needs bwrap: install bubblewrap"})
    d = code_reward_details(["print(1)"], [[{"input": "", "output": "1"}]])[0]
    assert d["reward"] == 0.0 and "install bubblewrap" in d["reasons"][0]
    with pytest.raises(sandbox.SandboxUnavailable, match="bubblewrap"):
        sandbox.check_sandbox()
    caps = sandbox.sandbox_capabilities()
    assert caps["ok"] is False and "\n" not in caps["error"]


def test_missing_tools_and_cgroup_give_one_line_errors(monkeypatch):
    monkeypatch.setattr(sandbox.shutil, "which", lambda name, path=None: None if name == "bwrap" else "/bin/" + name)
    with pytest.raises(sandbox.SandboxUnavailable, match="needs bwrap: install bubblewrap"):
        sandbox._build_setup()
    monkeypatch.undo()

    def no_cgroup():
        raise OSError("cgroup v2 at /user.slice has no memory+pids controllers we may enable")
    monkeypatch.setattr(sandbox, "_cgroup_parents", no_cgroup)
    monkeypatch.delenv("NANO_R1_SANDBOX_NO_CGROUP", raising=False)
    with pytest.raises(sandbox.SandboxUnavailable, match="NANO_R1_SANDBOX_NO_CGROUP=1") as e:
        sandbox._build_setup()
    assert "\n" not in str(e.value) and "Delegate=yes" in str(e.value)
    monkeypatch.setenv("NANO_R1_SANDBOX_NO_CGROUP", "1")               # the user accepts the risk
    s = sandbox._build_setup()
    assert s["cgroup"] is None
    r = sandbox._run(s, {"a.py": "print(6 * 7)"}, "a.py", b"", 5.0, 256, 1 << 16, 1 << 20, 16)
    assert r["stdout"] == b"42\n"


def test_seccomp_filter_program():
    prog = sandbox._seccomp_filter()
    if prog is None:
        pytest.skip("no seccomp filter for this architecture")
    ins = [struct.unpack("<HBBI", prog[i:i + 8]) for i in range(0, len(prog), 8)]
    assert ins[0] == (0x20, 0, 0, 4) and ins[-2][3] == 0x7FFF0000 and ins[-1][3] == 0x00050001

    def run(arch, nr):                          # a tiny classic-BPF interpreter for this program's instructions
        pc, acc = 0, 0
        while True:
            code, jt, jf, k = ins[pc]
            if code == 0x20:
                acc = arch if k == 4 else nr
            elif code == 0x06:
                return k
            else:
                pc += jt if (acc == k if code == 0x15 else acc >= k) else jf
            pc += 1
    audit_arch, denied = sandbox._DENY[sandbox.platform.machine()]
    assert all(run(audit_arch, nr) == 0x00050001 for nr in denied)
    assert run(audit_arch, 0) == run(audit_arch, 1) == run(audit_arch, 59) == 0x7FFF0000
    assert run(0x40000003, 250) == 0x00050001 and run(audit_arch, 0x40000000 + 250) == 0x00050001


def test_private_root_binds_only_the_interpreter():
    args = sandbox._setup()["root"]
    binds = [args[i + 1] for i, a in enumerate(args) if a == "--ro-bind"]
    assert "--bind" not in args and sandbox._setup()["python"] in " ".join(binds)
    for b in binds:
        assert b.startswith(("/usr/lib", "/lib", "/etc/ld.so.cache", os.path.dirname(sandbox._setup()["python"]))), b
        assert b not in ("/", "/usr", "/etc", "/tmp", "/home", "/root", "/usr/bin"), b
    r = run_sandboxed({"a.py": "import os\nprint((sorted(os.listdir('/')), sorted(os.listdir('/w'))))"}, "a.py")
    top, work = ast.literal_eval(r["stdout"].decode())
    assert set(top) <= {"usr", "lib", "lib64", "lib32", "etc", "proc", "dev", "w", "tmp", "bin"} and work == ["a.py"]


def test_no_leak_between_runs():
    r1 = run_sandboxed({"a.py": "open('left.txt', 'w').write('x'); print(__import__('os').getcwd())"}, "a.py")
    r2 = run_sandboxed({"a.py": "import os; print(os.listdir('.'), os.listdir('/tmp'))"}, "a.py")
    assert r1["stdout"].strip() == b"/w" and r2["stdout"].strip() == b"['a.py'] ['a.py']"
    assert r1["left"] == r2["left"] == 0


def test_score_code_partial_credit():
    p = SimpleNamespace(task="code", answer="", meta={"tests": ["assert add(2, 3) == 5", "assert add(1, 1) == 3"]})
    done = "<think> add them </think> <answer>\n```python\ndef add(a, b):\n    return a + b\n```\n</answer>"
    r = rewards.score(done, p)
    assert r["accuracy"] == 0.5 and r["format"] == 1.0 and r["reward"] == pytest.approx(0.6)


def test_capabilities_report():
    caps = sandbox.sandbox_capabilities()
    assert caps["ok"] and caps["net"] == "blocked" and caps["pid"] <= 3 and caps["nonewprivs"] == "1"
    assert caps["hostname"] == "sandbox" and caps["seccomp"] == (sandbox._seccomp_filter() is not None)
    if sandbox.IS_ROOT:
        assert caps["uid"] in sandbox.SANDBOX_UIDS


def test_uid_claims_are_exclusive_across_processes():
    a, fa = sandbox._claim_uid()
    b, fb = sandbox._claim_uid()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                  # another process must get a third uid
        c, _ = sandbox._claim_uid()
        os.write(w, str(c).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    c = int(os.read(r, 32))
    assert len({a, b, c}) == 3 and {a, b, c} <= set(sandbox.SANDBOX_UIDS)
    sandbox._release_uid(fb)
    b2, fb2 = sandbox._claim_uid()
    assert b2 == b                                # released uids are reused
    sandbox._release_uid(fb2)
    sandbox._release_uid(fa)


def test_cgroup_v2_logic_on_a_fake_tree(tmp_path, monkeypatch):
    """This machine's memory controller may be on cgroup v1; the v2 path is checked on a directory tree shaped like
    one: the controllers are enabled for children, limits are written, and a v2 without memory is refused."""
    (tmp_path / "cgroup.controllers").write_text("cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    monkeypatch.setattr(sandbox, "_cgroup_mounts", lambda: {"cgroup2": [str(tmp_path)]})
    monkeypatch.setattr(sandbox, "_own_cgroup", lambda controller: "/")
    kind, parents = sandbox._cgroup_parents()
    assert (kind, parents) == ("v2", [str(tmp_path)])
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +pids"
    (d,) = sandbox._cgroup_create({"cgroup": (kind, parents)}, 256 << 20, 16)
    assert open(os.path.join(d, "memory.max")).read() == str(256 << 20)
    assert open(os.path.join(d, "pids.max")).read() == "16"
    (tmp_path / "cgroup.controllers").write_text("cpu io\n")
    with pytest.raises(OSError, match="no memory\\+pids controllers"):
        sandbox._cgroup_parents()


def test_userns_refused_gives_the_fix(monkeypatch):
    """What bwrap says when the kernel refuses unprivileged user namespaces becomes one line with the fix."""
    msg = (b"bwrap: No permissions to creating new namespace, likely because the kernel does not allow "
           b"non-privileged user namespaces.\n")
    monkeypatch.setattr(sandbox, "_run", lambda *a: {"stdout": b"", "stderr": msg, "returncode": 1})
    with pytest.raises(sandbox.SandboxUnavailable, match="unprivileged user namespaces are off") as e:
        sandbox._smoke({})
    assert "\n" not in str(e.value) and "kernel.unprivileged_userns_clone=1" in str(e.value)


def test_our_tree_moves_only_our_processes():
    """On cgroup v2 we may move ourselves and our children to a leaf, never a process that is not ours."""
    import subprocess
    child = subprocess.Popen(["sleep", "5"])
    try:
        got = sandbox._our_tree([os.getpid(), child.pid, 1, os.getppid()])
        assert got == [os.getpid(), child.pid]
    finally:
        child.kill()
        child.wait()
