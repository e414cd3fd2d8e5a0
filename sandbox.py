"""The code-execution sandbox behind code_reward: run model-written Python against tests, with a real boundary.

RL optimises exactly the reward, so a program that can read the expected output, leave a process behind,
talk to a sibling run or crash the grader will be found and paid. Every program therefore runs as

    [sh: join a fresh cgroup] -> prlimit -> [setpriv: private uid, as root] -> bwrap -> python -I -S -B main.py

  - bubblewrap (`bwrap`) gives new user, pid (with its own /proc), ipc, uts, net, mount and cgroup namespaces; a
    private root holding only what the interpreter needs (its executable, its standard library, the directories of
    the shared libraries it maps, the symlinks on their paths), bound read-only, recursively, nosuid and nodev; a
    size-capped tmpfs /w as the only writable place (/tmp links to it); /dev and / remounted read-only;
    no_new_privs; no capabilities; no nested user namespaces; --die-with-parent; a new session (no TIOCSTI).
  - a seccomp filter (ours, 19 instructions, on every process inside) refuses the kernel keyring (add_key,
    request_key, keyctl: keys in the inherited session keyring outlive a run), ptrace, process_vm_readv/writev and
    pidfd_getfd (bwrap's own pid 1 is in the sandbox too), bpf, perf_event_open, userfaultfd, io_uring and
    foreign-arch calls.
  - a per-run cgroup limits memory (memory.max, no swap) and processes (pids.max) of the whole process tree: tmpfs
    and shared memory pages are charged to it too. cgroup v2 is used where it has the memory controller, else v1.
    It is also how the run ends: every process in it is SIGKILLed, and it must be empty before it is removed.
  - rlimits (core 0, file size, open files, CPU time, address space) per process, a wall-clock timeout.
  - the program's files, stdin, stdout and stderr are memfds: nothing of the run, the harness, the problems or
    another run exists on any file system the program can see.
  - test results are judged in the parent: stdout is compared line by line; for assert tests the sandbox only
    prints the values of the solution's calls and the parent evaluates the assert on them (see _compile_assert).

Why bubblewrap rather than our own unshare/mount/pivot_root through ctypes: it is a small C tool kept by the
Flatpak project, which confines untrusted desktop apps with it (setuid only on distributions that disable
unprivileged user namespaces); it handles the subtle steps (pivot_root, the recursive read-only remount of every
submount, /proc of the new pid namespace, uid maps, PR_SET_PDEATHSIG races) that a hand-written launcher gets
wrong in ways no test shows; and a C launcher costs ~1 ms where a Python launcher costs a second interpreter start
(~15 ms of CPU per program, a third of the budget at 50 programs/s on 2 cores). The cost is a system package
(`apt install bubblewrap`, `dnf install bubblewrap`, `pacman -S bubblewrap`).

Simplifications:
  1. Linux only, with bubblewrap >= 0.8 and util-linux (prlimit, setpriv) installed. Without root it needs
     unprivileged user namespaces (the default on Debian, Fedora, Arch; Ubuntu 24.04 restricts them through
     AppArmor, and the error names the setting) and a delegated cgroup v2 subtree with the memory controller
     (a systemd user session gives one to `systemd-run --user --scope -p Delegate=yes python train.py ...`; we
     then move our own process tree to a leaf, nano_r1_harness, so the scope may have children). Whatever is
     missing is named in a one-line error (python sandbox.py prints it). NANO_R1_SANDBOX_NO_CGROUP=1 accepts
     per-process rlimits instead of a whole-tree memory limit: a program can then use max_procs * memory_mb as
     root, and as many processes as the user may start without root.
  2. As root each running program also gets a private uid (SANDBOX_UIDS, claimed with an flock) outside its user
     namespace, so the sandbox owns nothing on the host and its process limit is its own.
  3. Assert tests are judged in the parent, so only forms the parent can evaluate are accepted: `assert EXPR[, msg]`
     where EXPR is built from literals, comparisons, and/or/not, + - * / // % on numbers, indexing, the pure
     builtins in _SAFE_FUNCS, and calls `f(args)` of solution functions (any other name; args: anything without
     another solution call). Each such call runs in the sandbox and sends back the repr of a plain value
     (numbers, str, bool, None, list, tuple, dict, set); a builtin outside _SAFE_FUNCS, such as range, is
     evaluated inside too, so it must give a plain value. Methods, attributes, lambdas, comprehensions, nested
     solution calls and `**` are refused: the test scores 0 with the reason (check_tests() reports them up front).
  4. seccomp is a deny list of a few calls, not an allow list; its filter is built for x86_64 and aarch64 only
     (elsewhere the keyring is namespaced per user namespace, but the inherited session keyring is reachable).
  5. Output is compared after dropping trailing spaces and trailing blank lines, nothing looser.

Threat model: the program is hostile and knows this file. It may use any Python and any system call the filter
allows, for as long as the timeout. It must not: read or write anything of the host, the harness, the problems or
another run; keep a process, file, IPC object or key after its run; exhaust the host's memory, processes or disk;
reach a network or a host socket; make the reward call raise or hang; or get a test credited without computing the
answer. Out of scope: kernel bugs reachable through the allowed calls (the boundary is the kernel's namespaces),
CPU time stolen from other programs within the timeout, and timing side channels.

Usage:
    from sandbox import code_reward, code_rewards, code_reward_details, check_sandbox
    check_sandbox()            # raises SandboxUnavailable with one line naming what is missing (call before work)
    code_reward("print(int(input())*2)", [{"input": "3\\n", "output": "6\\n"}])    # 1.0
    code_reward("def add(a, b): return a + b", ["assert add(2, 3) == 5"])           # 1.0
    code_reward_details(codes, tests_list)   # [{"reward", "passed", "reasons"}]: why a program got what it got
    python sandbox.py          # prints what isolation this machine gives, or the one-line error

Shapes: no tensors.
"""
import ast
import builtins
import fcntl
import itertools
import json
import math
import os
import platform
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

IS_ROOT = os.geteuid() == 0
SANDBOX_UIDS = range(61000, 61256)    # one private uid per running program (root only), across processes
_UID_LOCKS = "/tmp/nano_r1_sandbox_uids"
_TOOL_PATH = os.environ.get("PATH", "") + ":/usr/bin:/bin:/usr/sbin:/sbin"
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/w", "TMPDIR": "/w", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}


class SandboxUnavailable(RuntimeError):
    """This machine cannot give the isolation; the message is one line naming what is missing."""


def _strip_fences(code):
    """The code inside the first ```python (or ```py, or bare ```) fence; the text itself without one (rewards.py)."""
    m = re.search(r"```(?:python|py)?\s*\n(.*?)```", code, re.DOTALL)
    return m.group(1) if m else code


# ----------------------------------------------------------------------------- private uids (root only)

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
    """Give back a uid claimed by _claim_uid."""
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _world_executable(path):
    """True if any uid may execute path: every directory on its real path, and the file, has the x bit for others."""
    p = os.path.realpath(path)
    while p != "/":
        if not os.stat(p).st_mode & 0o001:
            return False
        p = os.path.dirname(p)
    return True


def _sandbox_python():
    """An interpreter the sandbox can execute: ours, or (as root, when ours sits under /root) a system one."""
    if not IS_ROOT or _world_executable(sys.executable):
        return os.path.realpath(sys.executable)
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(cand) and _world_executable(cand):
            return os.path.realpath(cand)
    raise SandboxUnavailable("no python3 that an unprivileged uid can execute (ours is under a private dir); "
                             "install python3 in /usr/bin")


# ----------------------------------------------------------------------------- the private root

_PROBE = ("import json, sys, sysconfig\n"
          "maps = sorted({l.split(None, 5)[5].strip() for l in open('/proc/self/maps') if l.count(' /')})\n"
          "print(json.dumps({'paths': sysconfig.get_paths(), 'maps': maps}))")


def _elf_interpreter(path):
    """The dynamic loader a 64-bit little-endian ELF executable names (PT_INTERP), or None."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:6] != b"\x7fELF\x02\x01":
            return None
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            p_type, _, p_offset, _, _, p_filesz = struct.unpack("<IIQQQQ", f.read(40))
            if p_type == 3:
                f.seek(p_offset)
                return f.read(p_filesz).rstrip(b"\0").decode()
    return None


def _expose(path, binds, links):
    """Make `path` resolve inside as it does outside: every symlink on the way re-created (links: {where: target}),
    the final real file or directory bound read-only (binds)."""
    parts = [p for p in os.path.normpath(path).split("/") if p]
    for i in range(len(parts)):
        cur = "/" + "/".join(parts[:i + 1])
        if os.path.islink(cur):
            target = os.readlink(cur)
            links[cur] = target
            return _expose(os.path.join(os.path.dirname(cur), target, *parts[i + 1:]), binds, links)
    binds.add(os.path.normpath(path))


def _root_args(python):
    """bwrap arguments building the private root: what `python -I -S` maps at start, its standard library, its
    loader, ld.so.cache; nothing else of the host."""
    out = subprocess.run([python, "-I", "-S", "-c", _PROBE], env=ENV, capture_output=True, timeout=30, cwd="/")
    if out.returncode:
        raise SandboxUnavailable(f"{python} -I -S failed: {out.stderr.decode(errors='replace').strip()[-200:]}")
    info = json.loads(out.stdout)
    wanted = {python, info["paths"]["stdlib"], info["paths"]["platstdlib"], "/etc/ld.so.cache"}
    wanted |= {os.path.dirname(os.path.realpath(m)) for m in info["maps"]          # shared objects' dirs
               if os.path.isfile(m) and os.path.realpath(m) != os.path.realpath(python)}
    interp = _elf_interpreter(python)
    if interp:
        wanted.add(interp)
    binds, links = set(), {}
    for p in wanted:
        if os.path.exists(p):
            _expose(p, binds, links)
    binds = sorted(b for b in binds if not any(b.startswith(o + "/") for o in binds))    # outermost only
    links = {w: t for w, t in links.items() if not any(w.startswith(b + "/") for b in binds)}
    args = []
    for b in binds:
        args += ["--ro-bind", b, b]
    for where in sorted(links, key=len):
        args += ["--symlink", links[where], where]
    return args


# ----------------------------------------------------------------------------- seccomp: a short deny list

# add_key request_key keyctl | bpf perf_event_open userfaultfd | io_uring x3 | ptrace process_vm_readv/writev
# pidfd_getfd
_DENY = {"x86_64": (0xC000003E, [248, 249, 250, 321, 298, 323, 425, 426, 427, 101, 310, 311, 438]),
         "aarch64": (0xC00000B7, [217, 218, 219, 280, 241, 282, 425, 426, 427, 117, 270, 271, 438])}


def _seccomp_filter():
    """Classic BPF for bwrap --seccomp: foreign architecture or x32 -> EPERM, a denied call -> EPERM, else allow."""
    arch = _DENY.get(platform.machine())
    if arch is None:
        return None
    audit_arch, calls = arch
    ins = lambda code, k, jt=0, jf=0: struct.pack("<HBBI", code, jt, jf, k)   # noqa: E731
    LD, JEQ, JGE, RET = 0x20, 0x15, 0x35, 0x06
    allow, deny = 0x7FFF0000, 0x00050001                 # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    n = len(calls)
    prog = [ins(LD, 4), ins(JEQ, audit_arch, 0, n + 3), ins(LD, 0), ins(JGE, 0x40000000, n + 1, 0)]
    prog += [ins(JEQ, nr, n - i, 0) for i, nr in enumerate(calls)]
    return b"".join(prog + [ins(RET, allow), ins(RET, deny)])


# ----------------------------------------------------------------------------- cgroups: the whole-tree limit

def _own_cgroup(controller):
    """Our path in the hierarchy holding `controller` ("" = the v2 unified one)."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, ctrls, path = line.rstrip("\n").split(":", 2)
            if (controller == "" and hid == "0") or (controller and controller in ctrls.split(",")):
                return path
    return None


def _cgroup_mounts():
    """{"cgroup2": [mount points], "memory": [...], "pids": [...]} from our mount table."""
    found = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ", 1)
            mnt, (fstype, _, opts) = left.split()[4], right.split()[:3]
            keys = ["cgroup2"] if fstype == "cgroup2" else [c for c in ("memory", "pids") if c in opts.split(",")]
            for k in keys if fstype.startswith("cgroup") else []:
                found.setdefault(k, []).append(mnt)
    return found


def _write(path, text):
    """Write text to a (cgroup control) file."""
    with open(path, "w") as f:
        f.write(text)


def _v2_parent(mnt):
    """A v2 cgroup under which we may create runs with memory + pids enabled, or raise OSError saying why not."""
    own = os.path.normpath(mnt + (_own_cgroup("") or "/"))
    for cand in ([mnt] if IS_ROOT and mnt != own else []) + [own]:
        with open(os.path.join(cand, "cgroup.controllers")) as f:
            have = f.read().split()
        if "memory" not in have or "pids" not in have:
            continue
        try:
            _write(os.path.join(cand, "cgroup.subtree_control"), "+memory +pids")
        except OSError as e:
            if e.errno != 16 or cand != own:                # EBUSY: processes live here (no internal processes)
                continue
            leaf = os.path.join(own, "nano_r1_harness")       # the documented move for a delegated subtree:
            os.makedirs(leaf, exist_ok=True)                 # we and our children go to a leaf, if nobody else
            for pid in _our_tree(_cgroup_pids(own)):        # lives in our cgroup (e.g. under systemd-run --scope)
                _write(os.path.join(leaf, "cgroup.procs"), str(pid))
            try:
                _write(os.path.join(cand, "cgroup.subtree_control"), "+memory +pids")
            except OSError:
                raise OSError(f"other processes share our cgroup {own}") from None
        return [cand]
    raise OSError(f"cgroup v2 at {own} has no memory+pids controllers we may enable")


def _our_tree(pids):
    """The pids among `pids` that are this process or its descendants."""
    me, ours = os.getpid(), []
    for pid in pids:
        p = pid
        while p > 1 and p != me:
            try:
                with open(f"/proc/{p}/stat") as f:
                    p = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                p = 0
        if p == me:
            ours.append(pid)
    return ours


def _cgroup_parents():
    """("v2", [dir]) or ("v1", [memory dir, pids dir or None]); raises OSError saying why no whole-tree limit."""
    mounts, why = _cgroup_mounts(), []
    for mnt in mounts.get("cgroup2", []):
        try:
            return "v2", _v2_parent(mnt)
        except OSError as e:
            why.append(str(e))
    if mounts.get("memory"):
        mem = os.path.normpath(mounts["memory"][0] + _own_cgroup("memory"))
        pids = os.path.normpath(mounts["pids"][0] + _own_cgroup("pids")) if mounts.get("pids") else None
        if os.access(mem, os.W_OK) and (pids is None or os.access(pids, os.W_OK)):
            return "v1", [mem, pids]
        why.append(f"cgroup v1 memory at {mem} is not writable by uid {os.geteuid()}")
    raise OSError("; ".join(why) or "no cgroup file system mounted")


_run_ids = itertools.count()


def _remove_stale(parents):
    """Remove run cgroups left by a process of ours that died mid-run (named nano_r1_<its pid>_<k>)."""
    for p in parents:
        for name in os.listdir(p) if p else []:
            m = re.fullmatch(r"nano_r1_(\d+)_\d+", name)
            if m and not os.path.exists(f"/proc/{m.group(1)}"):
                _cgroup_kill([os.path.join(p, name)])


def _cgroup_create(setup, memory_bytes, max_procs):
    """A fresh cgroup for one run: its directories (created, limits written)."""
    kind, parents = setup["cgroup"]
    name = f"nano_r1_{os.getpid()}_{next(_run_ids)}"
    dirs = [os.path.join(p, name) for p in parents if p]
    for d in dirs:
        os.mkdir(d)
    if kind == "v2":
        _write(os.path.join(dirs[0], "memory.max"), str(memory_bytes))
        if os.path.exists(os.path.join(dirs[0], "memory.swap.max")):
            _write(os.path.join(dirs[0], "memory.swap.max"), "0")
        _write(os.path.join(dirs[0], "pids.max"), str(max_procs))
    else:
        _write(os.path.join(dirs[0], "memory.limit_in_bytes"), str(memory_bytes))
        if os.path.exists(os.path.join(dirs[0], "memory.memsw.limit_in_bytes")):
            _write(os.path.join(dirs[0], "memory.memsw.limit_in_bytes"), str(memory_bytes))
        if len(dirs) > 1:
            _write(os.path.join(dirs[1], "pids.max"), str(max_procs))
    return dirs


def _cgroup_pids(d):
    """The pids in cgroup directory d ([] if it is gone)."""
    try:
        with open(os.path.join(d, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return []


def _cgroup_kill(dirs):
    """SIGKILL everything in the run's cgroup until it is empty, then remove it. Returns how many processes
    were still there at the end (0 unless the kernel refused): only this run's processes are counted."""
    if os.path.exists(os.path.join(dirs[0], "cgroup.kill")):
        try:
            _write(os.path.join(dirs[0], "cgroup.kill"), "1")
        except OSError:
            pass
    left = []
    for _ in range(400):
        left = _cgroup_pids(dirs[0])
        if not left:
            break
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.001)
    for d in dirs:
        for _ in range(50):
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.005)
    return len(left)


# ----------------------------------------------------------------------------- what this machine gives

_setup_lock = threading.Lock()
_setup_state = {}


def _setup():
    """Everything that is decided once per process: tools, the private root, seccomp, the cgroup parent.
    Raises SandboxUnavailable (one line) if the machine cannot give the isolation; the verdict is cached."""
    with _setup_lock:
        if "error" in _setup_state:
            raise SandboxUnavailable(_setup_state["error"])
        if "ok" in _setup_state:
            return _setup_state["ok"]
        try:
            _setup_state["ok"] = s = _build_setup()
            _smoke(s)
            return s
        except (SandboxUnavailable, OSError, ValueError, subprocess.SubprocessError) as e:
            _setup_state.pop("ok", None)
            _setup_state["error"] = str(e) if isinstance(e, SandboxUnavailable) else f"{type(e).__name__}: {e}"
            raise SandboxUnavailable(_setup_state["error"]) from None


def _build_setup():
    tools = {t: shutil.which(t, path=_TOOL_PATH) for t in ("bwrap", "prlimit", "setpriv", "sh")}
    missing = [t for t, p in tools.items() if p is None and (t != "setpriv" or IS_ROOT)]
    if missing:
        pkg = {"bwrap": "bubblewrap", "prlimit": "util-linux", "setpriv": "util-linux", "sh": "dash"}
        raise SandboxUnavailable(f"code sandbox needs {', '.join(missing)}: install "
                                 f"{' '.join(sorted({pkg[t] for t in missing}))} (e.g. apt install bubblewrap)")
    python = _sandbox_python()
    setup = {**tools, "python": python, "root": _root_args(python), "seccomp": _seccomp_filter(), "cgroup": None}
    try:
        setup["cgroup"] = _cgroup_parents()
        _remove_stale(setup["cgroup"][1])
    except OSError as e:
        if os.environ.get("NANO_R1_SANDBOX_NO_CGROUP") != "1":
            raise SandboxUnavailable(f"no whole-tree memory limit ({e}): run as root, or under `systemd-run --user "
                                     "--scope -p Delegate=yes ...` for a delegated cgroup v2, or set "
                                     "NANO_R1_SANDBOX_NO_CGROUP=1 to accept per-process limits only") from None
    return setup


def _smoke(setup):
    """One trivial run: turns a kernel that refuses user namespaces into a one-line reason."""
    r = _run(setup, {"a.py": "print(6 * 7)"}, "a.py", b"", 10.0, 256, 1 << 16, 1 << 20, 16)
    if r["stdout"].strip() != b"42":
        err = r["stderr"].decode(errors="replace").strip().splitlines()
        hint = ""
        if any("uid map" in e or "namespace" in e or "Operation not permitted" in e for e in err):
            hint = (" (unprivileged user namespaces are off: sysctl kernel.unprivileged_userns_clone=1, or "
                    "kernel.apparmor_restrict_unprivileged_userns=0 / an AppArmor profile for bwrap)")
        raise SandboxUnavailable(f"bwrap could not start a sandbox: {err[-1] if err else r['returncode']}{hint}")


def check_sandbox():
    """Raise SandboxUnavailable with a one-line reason unless code can be sandboxed here. Call it before work."""
    _setup()


def sandbox_capabilities():
    """What isolation this machine gives: {"ok", "error"?, "cgroup", "python", "root", ...} (runs one program)."""
    caps = {"root": IS_ROOT}
    try:
        s = _setup()
    except SandboxUnavailable as e:
        return {**caps, "ok": False, "error": str(e)}
    probe = ("import os, socket\nr = {'uid': os.getuid(), 'pid': os.getpid(), 'hostname': os.uname().nodename}\n"
             "r['nonewprivs'] = open('/proc/self/status').read().split('NoNewPrivs:')[1].split()[0]\n"
             "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=0.5); r['net'] = 'open'\n"
             "except OSError:\n    r['net'] = 'blocked'\nr['root_entries'] = sorted(os.listdir('/'))\nprint(r)\n")
    r = run_sandboxed({"p.py": probe}, "p.py", timeout=5.0)
    try:
        caps.update(ast.literal_eval(r["stdout"].decode().strip()))
    except (ValueError, SyntaxError):
        return {**caps, "ok": False, "error": r["stderr"].decode(errors="replace")[-300:]}
    cg = s["cgroup"]
    return {**caps, "ok": True, "cgroup": f"{cg[0]} {cg[1][0]}" if cg else "none (per-process rlimits only)",
            "seccomp": s["seccomp"] is not None, "python": s["python"]}


# ----------------------------------------------------------------------------- one run

def _memfd(name, data=b""):
    """An anonymous in-memory file (closed on exec unless passed on) holding data, read from its start."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    if data:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _wait(proc, timeout):
    """Wait for the sandbox to exit; False on timeout. A pidfd wakes us exactly at exit."""
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


_JOIN = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'


def _run(setup, files, main, stdin, timeout, memory_mb, output_cap, disk_bytes, max_procs):
    uid, uid_fd = _claim_uid() if IS_ROOT else (None, None)
    cg = _cgroup_create(setup, memory_mb << 20, max_procs) if setup["cgroup"] else None
    fds = []
    try:
        as_mb = 2 * memory_mb if cg else memory_mb      # virtual (thread stacks, arenas); the cgroup bounds real use
        limits = ["--core=0", f"--fsize={output_cap * 4}", "--nofile=64", f"--cpu={int(math.ceil(timeout)) + 1}",
                  f"--as={max(as_mb, 128) << 20}"]
        if not cg and IS_ROOT:
            limits.append(f"--nproc={max_procs}")
        cmd = [setup["prlimit"], *limits, "--"]
        if uid is not None:
            cmd += [setup["setpriv"], f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
        cmd += [setup["bwrap"], "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
                "--new-session", "--hostname", "sandbox", *setup["root"], "--proc", "/proc", "--dev", "/dev",
                "--size", str(disk_bytes), "--tmpfs", "/w", "--symlink", "/w", "/tmp"]
        for name, data in files.items():
            fds.append(_memfd(name, data.encode() if isinstance(data, str) else data))
            cmd += ["--file", str(fds[-1]), "/w/" + name]
        if setup["seccomp"]:
            fds.append(_memfd("seccomp", setup["seccomp"]))
            cmd += ["--seccomp", str(fds[-1])]
        cmd += ["--remount-ro", "/", "--remount-ro", "/dev", "--chdir", "/w", setup["python"], "-I", "-S", "-B", main]
        if cg:
            cmd = [setup["sh"], "-c", _JOIN, "sh", *[os.path.join(d, "cgroup.procs") for d in cg], "--", *cmd]
        fin = _memfd("stdin", stdin.encode() if isinstance(stdin, str) else stdin)
        fout, ferr = _memfd("stdout"), _memfd("stderr")
        fds += [fin, fout, ferr]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr, env=ENV, cwd="/", pass_fds=fds[:-3],
                                start_new_session=True)
        timed_out = not _wait(proc, timeout)
        if timed_out:
            try:
                os.killpg(proc.pid, signal.SIGKILL)   # bwrap itself; --die-with-parent takes its pid namespace
            except ProcessLookupError:
                pass
        proc.wait()
        left = _cgroup_kill(cg) if cg else 0           # every process of this run, wherever it forked to
        cg = None
        out = os.pread(fout, output_cap + 1, 0)
        return {"stdout": out[:output_cap], "stderr": os.pread(ferr, 1 << 16, 0), "returncode": proc.returncode,
                "timed_out": timed_out, "overflow": len(out) > output_cap, "wall": time.monotonic() - t0,
                "left": left}
    finally:
        for fd in fds:
            os.close(fd)
        if cg:
            _cgroup_kill(cg)
        if uid_fd is not None:
            _release_uid(uid_fd)


def run_sandboxed(files, main, stdin=b"", timeout=2.0, memory_mb=256, output_cap=1 << 20, disk_mb=16, max_procs=32):
    """Run `python -I -S -B main` in /w holding `files` ({name: str|bytes}), isolated (see the docstring).
    Returns {"stdout": bytes (<= output_cap), "stderr", "returncode", "timed_out", "overflow", "wall", "left"}
    ("left": processes of this run still alive after the kill, 0 normally). Raises SandboxUnavailable only if the
    machine cannot give the isolation, never because of the program."""
    return _run(_setup(), files, main, stdin, timeout, memory_mb, output_cap, disk_mb << 20, max_procs)


# ----------------------------------------------------------------------------- judging stdin/stdout tests

def _lines(b):
    """Output lines for comparison: decoded leniently, trailing spaces and trailing blank lines dropped."""
    lines = [ln.rstrip() for ln in b.decode("utf-8", errors="replace").replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _run_io_test(code, test, timeout, kw):
    """-> ([score], [reason])."""
    r = run_sandboxed({"solution.py": code}, "solution.py", stdin=test.get("input", ""), timeout=timeout, **kw)
    if r["timed_out"] or r["overflow"]:
        return [0.0], ["timed out" if r["timed_out"] else "output over the cap"]
    want = test["output"] if isinstance(test["output"], bytes) else test["output"].encode()
    ok = _lines(r["stdout"]) == _lines(want)
    return [1.0 if ok else 0.0], ["" if ok else f"wrong output (exit {r['returncode']})"]


# ----------------------------------------------------------------------------- judging assert tests outside

_SAFE_FUNCS = {"len": len, "sorted": sorted, "abs": abs, "min": min, "max": max, "sum": sum, "set": set,
               "frozenset": frozenset, "list": list, "tuple": tuple, "bool": bool, "all": all, "any": any,
               "str": str, "int": int, "float": float}
_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod)
_CMPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is, ast.IsNot)


def _is_solution_call(node):
    """A name or a call the sandbox evaluates: anything named that is not one of _SAFE_FUNCS."""
    return isinstance(node, ast.Name) and node.id not in _SAFE_FUNCS or (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id not in _SAFE_FUNCS)


def _solution_name(node):
    """A bare name that is neither a safe function nor a builtin: a solution's function (for nested-call checks)."""
    return isinstance(node, ast.Name) and node.id not in _SAFE_FUNCS and not hasattr(builtins, node.id)


def _compile_assert(test):
    """'assert EXPR[, msg]' -> (EXPR tree, {id(node): k}, [source k evaluated in the sandbox]).
    Raises ValueError naming the construct when the parent could not judge the assert (simplification 3)."""
    try:
        body = ast.parse(test.strip()).body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ValueError(f"assert test does not parse: {e}") from None
    if len(body) != 1 or not isinstance(body[0], ast.Assert):
        raise ValueError(f"not a single assert statement: {test[:80]!r}")
    slots, calls = {}, []

    def visit(node):
        if _is_solution_call(node):
            args = node.args + [k.value for k in node.keywords] if isinstance(node, ast.Call) else []
            if any(_solution_name(n) for a in args for n in ast.walk(a)):
                raise ValueError(f"nested solution calls cannot be judged outside: {ast.unparse(node)[:80]}")
            if any(k.arg is None for k in getattr(node, "keywords", [])):
                raise ValueError("**kwargs in a test call")
            slots[id(node)] = len(calls)
            calls.append(ast.unparse(node))
            return
        if isinstance(node, ast.Constant):
            return
        kids = {ast.List: lambda: node.elts, ast.Tuple: lambda: node.elts, ast.Set: lambda: node.elts,
                ast.Dict: lambda: node.keys + node.values, ast.Compare: lambda: [node.left, *node.comparators],
                ast.BoolOp: lambda: node.values, ast.UnaryOp: lambda: [node.operand],
                ast.BinOp: lambda: [node.left, node.right], ast.Subscript: lambda: [node.value, node.slice],
                ast.Slice: lambda: [node.lower, node.upper, node.step],
                ast.Call: lambda: node.args}.get(type(node))
        bad = (kids is None or isinstance(node, ast.BinOp) and not isinstance(node.op, _OPS)
               or isinstance(node, ast.UnaryOp) and not isinstance(node.op, (ast.Not, ast.USub, ast.UAdd))
               or isinstance(node, ast.Compare) and not all(isinstance(o, _CMPS) for o in node.ops)
               or isinstance(node, ast.Call) and (node.keywords or not isinstance(node.func, ast.Name))
               or isinstance(node, ast.Dict) and None in node.keys)
        if bad:
            raise ValueError(f"unsupported in an assert test ({type(node).__name__}): {ast.unparse(node)[:80]}")
        for k in kids():
            if k is not None:
                visit(k)

    visit(body[0].test)
    return body[0].test, slots, calls


def check_tests(tests):
    """Raise ValueError (one line) for a test code_reward cannot judge; use it when building a dataset."""
    for t in tests:
        if isinstance(t, str):
            _compile_assert(t)
        elif not (isinstance(t, dict) and isinstance(t.get("output"), (str, bytes))):
            raise ValueError(f"a test is an assert string or {{'input': str, 'output': str}}, got {t!r:.80}")


def _values_equal(a, b):
    """== on plain values, types strict (True != 1), floats within 1e-9 relative."""
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


def _judge(node, slots, values):
    """Evaluate the assert expression in the parent; the solution's calls are looked up in `values`."""
    ev = lambda n: _judge(n, slots, values)   # noqa: E731
    if id(node) in slots:
        return values[slots[id(node)]]
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](ev(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return {ev(k): ev(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.BoolOp):                        # Python's and/or: the deciding value, short-circuit
        for v in node.values:
            val = ev(v)
            if bool(val) != isinstance(node.op, ast.And):
                return val
        return val
    if isinstance(node, ast.UnaryOp):
        v = ev(node.operand)
        return not v if isinstance(node.op, ast.Not) else -v if isinstance(node.op, ast.USub) else +v
    if isinstance(node, ast.BinOp):
        a, b = ev(node.left), ev(node.right)
        if not isinstance(node.op, ast.Add) and not all(isinstance(v, (int, float)) for v in (a, b)):
            raise ValueError("arithmetic other than + on non-numbers")     # "x" * 10**12 would eat the trainer
        return {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b, ast.Div: lambda: a / b,
                ast.FloorDiv: lambda: a // b, ast.Mod: lambda: a % b}[type(node.op)]()
    if isinstance(node, ast.Subscript):
        return ev(node.value)[ev(node.slice)]
    if isinstance(node, ast.Slice):
        return slice(*(ev(x) if x is not None else None for x in (node.lower, node.upper, node.step)))
    if isinstance(node, ast.Call):
        return _SAFE_FUNCS[node.func.id](*[ev(a) for a in node.args])
    if isinstance(node, ast.Compare):
        left = ev(node.left)
        for op, right_node in zip(node.ops, node.comparators):
            right = ev(right_node)
            ok = {ast.Eq: lambda: _values_equal(left, right), ast.NotEq: lambda: not _values_equal(left, right),
                  ast.Lt: lambda: left < right, ast.LtE: lambda: left <= right, ast.Gt: lambda: left > right,
                  ast.GtE: lambda: left >= right, ast.In: lambda: left in right, ast.NotIn: lambda: left not in right,
                  ast.Is: lambda: left is right, ast.IsNot: lambda: left is not right}[type(op)]()
            if not ok:
                return False
            left = right
        return True
    raise ValueError(f"cannot judge {type(node).__name__}")


# The harness runs inside the sandbox, in the same process as the solution, so it holds no secret: it gets only
# the calls to make (never an expected value) and prints their values. Forging its report means knowing the values.
_HARNESS = r"""
import json, os
_fd = os.dup(1)
with open("calls.json") as _f:
    _calls = json.load(_f)
_g = {"__name__": "__main__"}
try:
    with open("solution.py") as _f:
        exec(compile(_f.read(), "solution.py", "exec"), _g)
except BaseException:
    pass
_PLAIN = (int, float, str, bool, type(None), list, tuple, dict, set, frozenset, complex)
def _plain(v, depth=0):
    if depth > 50 or type(v) not in _PLAIN: return False
    if type(v) in (list, tuple, set, frozenset): return all([_plain(x, depth + 1) for x in v])
    if type(v) is dict: return all([_plain(k, depth + 1) and _plain(x, depth + 1) for k, x in v.items()])
    return True
_res = []
for _c in _calls:
    try:
        _v = eval(compile(_c, "<test>", "eval"), _g)
        _res.append(["ok", repr(_v)] if _plain(_v) else ["error", "not a plain value"])
    except BaseException as _e:
        _res.append(["error", type(_e).__name__])
os.write(_fd, ("\n" + json.dumps(_res) + "\n").encode())
os._exit(0)                 # no atexit handler of the solution prints after the report
"""


def _parse_report(stdout, n):
    """The last line of stdout as n (status, value) pairs; None if it is not one. Never raises."""
    try:
        line = stdout.decode("utf-8", errors="replace").rstrip("\n").rsplit("\n", 1)[-1]
        res = json.loads(line)
        if not (isinstance(res, list) and len(res) == n and all(
                isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r) for r in res)):
            return None
        return [(s, ast.literal_eval(v) if s == "ok" else v) for s, v in res]
    except Exception:                 # RecursionError, MemoryError, ValueError, SyntaxError: a forged report
        return None


def _run_assert_tests(code, asserts, timeout, kw):
    """All assert tests of one program in one sandbox run; judged here. -> (scores, reasons)."""
    compiled, reasons = [], []
    for t in asserts:
        try:
            compiled.append(_compile_assert(t))
            reasons.append("")
        except ValueError as e:
            compiled.append(None)
            reasons.append(f"refused: {e}")
    calls = [c for comp in compiled if comp for c in comp[2]]
    report = []
    if calls:
        r = run_sandboxed({"solution.py": code, "calls.json": json.dumps(calls), "main.py": _HARNESS}, "main.py",
                          timeout=timeout, **kw)
        report = None if r["timed_out"] or r["overflow"] else _parse_report(r["stdout"], len(calls))
        if report is None:
            why = "timed out" if r["timed_out"] else "output over the cap" if r["overflow"] else "no report"
            return [0.0] * len(asserts), [x or why for x in reasons]
    scores, at = [], 0  # at: where this assert's calls start in the report
    for i, comp in enumerate(compiled):
        if comp is None:
            scores.append(0.0)
            continue
        tree, slots, mine = comp
        got, at = report[at:at + len(mine)], at + len(mine)
        bad = [v for s, v in got if s != "ok"]
        try:
            ok = not bad and bool(_judge(tree, slots, [v for _, v in got]))
        except Exception as e:              # a value of the wrong type, an index out of range, ...
            ok, reasons[i] = False, f"{type(e).__name__} judging the assert"
        scores.append(1.0 if ok else 0.0)
        if not ok and not reasons[i]:
            reasons[i] = f"error in the solution: {bad[0]}" if bad else "assert is false"
    return scores, reasons


# ----------------------------------------------------------------------------- the reward

_pool = {"ex": None}
_pool_lock = threading.Lock()

# Programs at a time. Four per core: much of a short run is namespace setup and teardown in the kernel, not CPU
# (measured on 2 busy cores: 33 programs/s with 4 at a time, 43 with 8).
SANDBOX_WORKERS = min(len(SANDBOX_UIDS), int(os.environ.get("NANO_R1_SANDBOX_WORKERS", 0)) or 4 * (os.cpu_count() or 1))


def _reset_after_fork():
    """A forked child (e.g. a data-loader worker) must not share our pool threads or possibly-held locks."""
    global _pool_lock, _setup_lock
    _pool["ex"] = None
    _pool_lock, _setup_lock = threading.Lock(), threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _executor():
    """The bounded pool every sandboxed test goes through (SANDBOX_WORKERS programs at a time)."""
    with _pool_lock:
        if _pool["ex"] is None:
            _pool["ex"] = ThreadPoolExecutor(max_workers=SANDBOX_WORKERS)
        return _pool["ex"]


_warned = []


def _guarded(job, n):
    """Run one job; any failure (sandbox unavailable, a bug, an OS error) -> n zero scores with the reason."""
    try:
        return job()
    except Exception as e:                 # the reward call never raises
        if isinstance(e, SandboxUnavailable) and not _warned:
            _warned.append(1)
            print(f"[sandbox] every code reward is 0: {e}", file=sys.stderr)
        return [0.0] * n, [f"{type(e).__name__}: {e}"[:300]] * n


def code_reward_details(codes, tests_list, timeout=2.0, **kw):
    """For each program: {"reward": fraction of its tests passed, "passed": [bool per test], "reasons": [why each
    failed test failed, "" for a pass]}; passed and reasons list the stdin/stdout tests first, then the assert
    tests, then anything that is neither (0, "not a test"), each in its given order. Never raises for anything a
    program or test does. Tests are {"input": str, "output": str} (stdin/stdout) or assert strings (judged
    outside, simplification 3).
    Extra keywords go to run_sandboxed (memory_mb, output_cap, disk_mb, max_procs)."""
    if len(codes) != len(tests_list):
        raise ValueError(f"got {len(codes)} programs but {len(tests_list)} test lists; they must match")
    ex, futures = _executor(), []
    for code, tests in zip(codes, tests_list):
        tests = list(tests) if isinstance(tests, (list, tuple)) else []
        io = [t for t in tests if isinstance(t, dict)] if isinstance(code, str) else []
        asserts = [t for t in tests if isinstance(t, str)] if isinstance(code, str) else []
        jobs = [ex.submit(_guarded, lambda c=code, t=t: _run_io_test(c, t, timeout, kw), 1)
                for t in io]
        if asserts:
            jobs.append(ex.submit(_guarded, lambda c=code, a=asserts: _run_assert_tests(c, a, timeout, kw),
                                  len(asserts)))
        futures.append((jobs, len(tests), len(tests) - len(io) - len(asserts)))
    out = []
    for jobs, n, unknown in futures:
        scores, reasons = [], []
        for f in jobs:
            s, r = f.result()
            scores += s
            reasons += r
        scores += [0.0] * unknown
        reasons += ["not a test"] * unknown
        out.append({"reward": sum(scores) / n if n else 0.0, "passed": [s == 1.0 for s in scores],
                    "reasons": reasons if n else ["no tests"]})
    return out


def code_rewards(codes, tests_list, timeout=2.0, **kw):
    """code_reward for many programs at once, all tests through the bounded sandbox pool."""
    return [d["reward"] for d in code_reward_details(codes, tests_list, timeout=timeout, **kw)]


def code_reward(code, tests, timeout=2.0, **kw):
    """Fraction of `tests` the program passes (0.0 with a reason in code_reward_details on any failure)."""
    return code_rewards([code], [tests], timeout=timeout, **kw)[0]


if __name__ == "__main__":
    caps = sandbox_capabilities()
    print(caps if caps["ok"] else f"code sandbox unavailable: {caps['error']}")
    raise SystemExit(0 if caps["ok"] else 1)
