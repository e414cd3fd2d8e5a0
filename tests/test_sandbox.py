"""Tests for the code-execution reward: correctness of scoring and a suite of hostile programs, each of
which must be contained (no side effect outside its work dir, no surviving process), leave the parent
alive, and finish within its time bound. Hostile programs run in parallel through a thread pool."""
import os
import stat
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rewards  # noqa: E402
import sandbox  # noqa: E402
from sandbox import code_reward, code_rewards, run_sandboxed  # noqa: E402

TIMEOUT = 1.5
SLACK = 2.5          # setup + kill sweep on 2 busy cores


@pytest.fixture(scope="module")
def canary():
    """World-writable dir with a world-writable file: only the read-only mount protects it."""
    d = f"/tmp/nano_r1_canary_{os.getpid()}"
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o777)
    path = os.path.join(d, "canary.txt")
    with open(path, "w") as f:
        f.write("alive")
    os.chmod(path, 0o666)
    secret = os.path.join(d, "secret.txt")
    with open(secret, "w") as f:
        f.write("TOPSECRET-0600")
    os.chmod(secret, 0o600)
    yield d
    for name in os.listdir(d):
        os.unlink(os.path.join(d, name))
    os.rmdir(d)


def hostile_programs(canary):
    c = canary
    return {
        "infinite_loop": "while True: pass",
        "sleep_forever": "import time\ntime.sleep(1000)",
        "huge_power": "print(10**10**10)",
        "memory_bomb": "x = bytearray(8 << 30)\nprint('allocated')",
        "memory_creep": "x = []\nwhile True: x.append(' ' * (1 << 20))",
        "fork_bomb": "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass",
        "thread_bomb": ("import threading, time\nwhile True:\n"
                        "    try: threading.Thread(target=time.sleep, args=(100,)).start()\n"
                        "    except Exception: pass"),
        "os_system": f"import os\nos.system('echo pwned > {c}/pwned_system; rm -f {c}/canary.txt')",
        "subprocess": (f"import subprocess\nsubprocess.run(['sh', '-c', 'echo x > {c}/pwned_sub'])\n"
                       f"subprocess.run(['rm', '-rf', '{c}'])"),
        "delete_outside": f"import os, shutil\nos.remove('{c}/canary.txt')",
        "write_outside": (f"for p in ['{c}/pwned_w', '/tmp/pwned_w', '/var/tmp/pwned_w', '/dev/shm/pwned_w']:\n"
                          "    try: open(p, 'w').write('x')\n    except OSError as e: print('blocked', p)"),
        "overwrite_canary": f"open('{c}/canary.txt', 'w').write('dead')",
        "read_secret": f"print(open('{c}/secret.txt').read())",
        "read_root_files": "print(open('/etc/shadow').read())",
        "environ": "import os\nprint(dict(os.environ))",
        "proc_environ": ("import os\nfor p in [os.getppid(), 1, 'self']:\n"
                         "    try: print(open(f'/proc/{p}/environ', 'rb').read())\n"
                         "    except OSError as e: print('denied', p)"),
        "network": ("import socket\nprint(socket.if_nameindex())\n"
                    "for host in [('1.1.1.1', 80), ('8.8.8.8', 53), ('127.0.0.1', 22)]:\n"
                    "    try: socket.create_connection(host, timeout=0.5); print('CONNECTED', host)\n"
                    "    except OSError as e: print('blocked', host)"),
        "disk_flood": "f = open('big', 'wb')\nwhile True: f.write(b'x' * (1 << 20))",
        "many_files": "i = 0\nwhile True:\n    open(f'f{i}', 'wb').write(b'x' * 65536); i += 1",
        "stdout_flood": "while True: print('x' * 10000)",
        "stderr_flood": "import sys\nwhile True: sys.stderr.write('x' * 10000)",
        "deep_recursion": "import sys\nsys.setrecursionlimit(10**9)\ndef f(n): return f(n + 1)\nf(0)",
        "ignore_sigterm": "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(1000)",
        "fd_exhaustion": "fs = []\nwhile True: fs.append(open('/dev/null'))",
        "double_fork_daemon": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                               "        time.sleep(1000)\n    os._exit(0)\nprint('parent done')"),
        "non_utf8": "import sys\nsys.stdout.buffer.write(bytes(range(256)) * 10)",
        "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(1, signal.SIGKILL)",
    }


def _leftover_pids():
    uids = set(sandbox.SANDBOX_UIDS)
    left = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid in uids:
                    with open(f"/proc/{d}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                            left.append(int(d))
            except (FileNotFoundError, IndexError):
                pass
    return left


@pytest.fixture(scope="module")
def hostile_results(canary):
    os.environ["NANO_R1_TEST_SECRET"] = "ENV-SECRET-XYZ"
    progs = hostile_programs(canary)
    with ThreadPoolExecutor(8) as ex:
        futs = {name: ex.submit(run_sandboxed, {"solution.py": src}, "solution.py", timeout=TIMEOUT)
                for name, src in progs.items()}
        return {name: f.result() for name, f in futs.items()}


def test_hostile_suite_contained(hostile_results, canary):
    assert os.getpid() > 0                                     # the parent survived
    assert len(hostile_results) >= 25
    for name, r in hostile_results.items():
        assert r["wall"] < TIMEOUT + SLACK, f"{name} took {r['wall']:.2f}s"
        assert len(r["stdout"]) <= 1 << 20, name
    # file system: canary intact, nothing written outside the work dir
    with open(os.path.join(canary, "canary.txt")) as f:
        assert f.read() == "alive"
    assert sorted(os.listdir(canary)) == ["canary.txt", "secret.txt"]
    for p in ["/tmp/pwned_w", "/var/tmp/pwned_w", "/dev/shm/pwned_w"]:
        assert not os.path.exists(p), p
    out = {k: r["stdout"] for k, r in hostile_results.items()}
    if sandbox.IS_ROOT:         # without root the program runs as our own uid: same-uid files stay readable
        assert _leftover_pids() == []                          # nothing of any sandbox uid survives
        assert b"TOPSECRET" not in out["read_secret"]
    assert b"root:" not in out["read_root_files"]
    assert b"ENV-SECRET-XYZ" not in out["environ"] and b"ENV-SECRET-XYZ" not in out["proc_environ"]
    assert b"CONNECTED" not in out["network"] and b"'lo'" in out["network"] and b"eth" not in out["network"]
    assert out["write_outside"].count(b"blocked") == 4
    assert b"allocated" not in out["memory_bomb"]
    for name in ["infinite_loop", "sleep_forever", "ignore_sigterm", "thread_bomb"]:
        assert hostile_results[name]["timed_out"], name
    assert hostile_results["stdout_flood"]["overflow"]
    assert hostile_results["double_fork_daemon"]["stdout"].strip() == b"parent done"


def test_no_leak_between_runs():
    r1 = run_sandboxed({"a.py": "open('left.txt', 'w').write('x'); print(__import__('os').getcwd())"}, "a.py")
    r2 = run_sandboxed({"a.py": "import os; print(os.listdir('.'))"}, "a.py")
    assert r1["returncode"] == 0 and r2["stdout"].strip() == b"['a.py']"


def test_io_scoring_and_partial_output():
    tests = [{"input": "3\n", "output": "6\n"}, {"input": "5\n", "output": "10"}, {"input": "0\n", "output": "0\n"}]
    assert code_reward("print(int(input()) * 2)", tests, timeout=TIMEOUT) == 1.0
    wrong_on_5 = "n = int(input())\nprint(n * 2 if n != 5 else 11)"
    assert code_reward(wrong_on_5, tests, timeout=TIMEOUT) == pytest.approx(2 / 3)
    two = [{"input": "", "output": "1\n2\n"}]
    assert code_reward("print(1)", two, timeout=TIMEOUT) == 0.0                  # only part of the output
    assert code_reward("print(1)\nprint(2)\nprint(3)", two, timeout=TIMEOUT) == 0.0  # extra lines
    assert code_reward("import os\nos._exit(0)", two, timeout=TIMEOUT) == 0.0      # silent exit
    assert code_reward("print(1)   \nprint(2)\n\n", two, timeout=TIMEOUT) == 1.0    # trailing space ok
    assert code_reward("this is not python", two, timeout=TIMEOUT) == 0.0
    assert code_reward("print(1)\nprint(2)", [], timeout=TIMEOUT) == 0.0


def test_assert_scoring_and_cheats():
    tests = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add(0.1, 0.2) == 0.3"]
    assert code_reward("def add(a, b): return a + b", tests, timeout=TIMEOUT) == 1.0
    assert code_reward("def add(a, b): return 5", tests, timeout=TIMEOUT) == pytest.approx(1 / 3)
    cheats = {
        "always_equal": "class A:\n    __eq__ = lambda s, o: True\ndef add(a, b): return A()",
        "int_subclass": "class I(int):\n    __eq__ = lambda s, o: True\ndef add(a, b): return I(0)",
        "exit_before_asserts": "import os\nos._exit(0)\ndef add(a, b): return a + b",
        "sys_exit_first": "import sys\nsys.exit(0)\ndef add(a, b): return a + b",
        "patch_builtins": ("import builtins\nbuiltins.repr = lambda x: '5'\nbuiltins.all = lambda x: True\n"
                           "builtins.type = lambda x: int\nclass A: pass\ndef add(a, b): return A()"),
        "print_fake_report": "print('ok'*3)\nimport sys\nsys.exit(0)",
        "raise_everything": "raise SystemExit(0)",
    }
    got = code_rewards(list(cheats.values()), [tests] * len(cheats), timeout=TIMEOUT)
    assert dict(zip(cheats, got)) == {k: 0.0 for k in cheats}


def test_other_assert_forms_run_in_child():
    code = "def f(x): return sorted(x)"
    assert code_reward(code, ["assert f([3, 1]) == [1, 3]", "assert len(f([1])) == 1",
                              "assert f([2, 1])[0] < 2"], timeout=TIMEOUT) == 1.0
    assert code_reward(code, ["assert f([2, 1])[0] > 2"], timeout=TIMEOUT) == 0.0


def test_sandbox_throughput_sanity():
    t0 = time.monotonic()
    got = code_rewards(["print(int(input()) + 1)"] * 8, [[{"input": "1", "output": "2"}]] * 8, timeout=TIMEOUT)
    assert got == [1.0] * 8
    assert time.monotonic() - t0 < 10


def test_capabilities_report():
    caps = sandbox.sandbox_capabilities()
    assert caps["ok"] and caps["net"] == "blocked"
    if sandbox.IS_ROOT:
        assert caps["uid"] in sandbox.SANDBOX_UIDS and caps["tmp"] == "read-only"


def test_bad_arguments():
    with pytest.raises(ValueError):
        code_rewards(["print(1)"], [])
    assert stat.S_IMODE(os.stat("/tmp").st_mode) & 0o1000         # sanity: /tmp is sticky as assumed


def test_score_code_partial_credit():
    from types import SimpleNamespace
    p = SimpleNamespace(task="code", answer="", meta={"tests": ["assert add(2, 3) == 5", "assert add(1, 1) == 3"]})
    done = "<think> add them </think> <answer>\n```python\ndef add(a, b):\n    return a + b\n```\n</answer>"
    r = rewards.score(done, p)
    assert r["accuracy"] == 0.5 and r["format"] == 1.0 and r["reward"] == pytest.approx(0.6)


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
