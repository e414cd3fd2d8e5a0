"""Hostile programs against the code sandbox: 0 escapes, 0 reward hacks, 0 crashes of the reward call; the parent
survives and nothing outlives the timeout.

Every program genuinely tries its attack and prints "ESCAPE <what>" if it got anywhere; the parent also checks the
host side (files, sockets, IPC, processes). The programs run concurrently through a thread pool, in two phases (the
second looks for what the first tried to leave behind). Issue 15's holes are marked h1..h11."""
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import sandbox
from sandbox import code_reward_details, run_sandboxed

TIMEOUT = 1.5
SLACK = 3.0                       # bwrap setup + the kill on 2 busy cores
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = f"nr1left{os.getpid() % 100000}"     # comm name of processes that try to outlive their run
LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
STAY = f"{LIBC}libc.prctl(15, b'{TOKEN}', 0, 0, 0)\n"          # PR_SET_NAME: how the parent finds survivors


def _attempts(paths, action):
    """Program text: for each path try `action` (uses p); ESCAPE if it works."""
    return (f"for p in {paths!r}:\n    try:\n        {action}\n        print('ESCAPE', p)\n"
            "    except (OSError, ValueError) as e:\n"
            "        print('blocked', p, e.errno if hasattr(e, 'errno') else e)")


def programs(host):
    """name -> source of phase 1. `host`: paths the fixture made on the host."""
    c, secret, problems, sock = host["canary"], host["secret"], host["problems"], host["socket"]
    old = {   # the 27 programs of the first suite
        "infinite_loop": "while True: pass",
        "sleep_forever": "import time\ntime.sleep(1000)",
        "huge_power": "print(10**10**10)",
        "memory_bomb": "x = bytearray(8 << 30)\nprint('ESCAPE allocated')",
        "memory_creep": "x = []\nwhile True: x.append(' ' * (1 << 20))",
        "fork_bomb": "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass",
        "thread_bomb": ("import threading, time\nwhile True:\n"
                        "    try: threading.Thread(target=time.sleep, args=(100,)).start()\n"
                        "    except Exception: pass"),
        "os_system": f"import os\nos.system('echo pwned > {c}/pwned_system; rm -f {c}/canary.txt')",
        "subprocess": (f"import subprocess\nsubprocess.run(['sh', '-c', 'echo x > {c}/pwned_sub'])\n"
                       f"subprocess.run(['rm', '-rf', '{c}'])"),
        "delete_outside": f"import os\nos.remove('{c}/canary.txt')\nprint('ESCAPE deleted')",
        "write_outside": _attempts([f"{c}/pwned_w", "/tmp/../pwned_w", "/var/tmp/pwned_w", "/dev/shm/pwned_w",
                                    "/usr/lib/pwned_w", "/etc/pwned_w", "/pwned_w", "/dev/pwned_w"],
                                   "open(p, 'w').write('x')"),
        "overwrite_canary": f"open('{c}/canary.txt', 'w').write('dead')\nprint('ESCAPE overwrote')",
        "read_secret": _attempts([secret], "print(open(p).read())"),
        "read_root_files": _attempts(["/etc/shadow", "/etc/passwd", "/root/.bashrc", "/etc/hostname"],
                                     "print(open(p).read()[:20])"),
        "environ": "import os\nprint(dict(os.environ))",
        "proc_environ": ("import os\nfor p in [os.getppid(), 1, 'self']:\n"
                         "    try: print(open(f'/proc/{p}/environ', 'rb').read())\n"
                         "    except OSError as e: print('denied', p)"),
        "network": ("import socket\nprint(socket.if_nameindex())\n"
                    "for host in [('1.1.1.1', 80), ('8.8.8.8', 53), ('127.0.0.1', 22)]:\n"
                    "    try: socket.create_connection(host, timeout=0.5); print('ESCAPE CONNECTED', host)\n"
                    "    except OSError as e: print('blocked', host)"),
        "disk_flood": "f = open('big', 'wb')\nwhile True: f.write(b'x' * (1 << 20))",
        "many_files": "i = 0\nwhile True:\n    open(f'f{i}', 'wb').write(b'x' * 65536); i += 1",
        "stdout_flood": "while True: print('x' * 10000)",
        "stderr_flood": "import sys\nwhile True: sys.stderr.write('x' * 10000)",
        "deep_recursion": "import sys\nsys.setrecursionlimit(10**9)\ndef f(n): return f(n + 1)\nf(0)",
        "ignore_sigterm": "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(1000)",
        "fd_exhaustion": "fs = []\nwhile True: fs.append(open('/dev/null'))",
        "double_fork_daemon": (f"{STAY}import time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                               "        time.sleep(1000)\n    os._exit(0)\nprint('parent done')"),
        "non_utf8": "import sys\nsys.stdout.buffer.write(bytes(range(256)) * 10)",
        "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(1, signal.SIGKILL)",
    }
    holes = {
        # h1: a sibling run's files (its input and expected output) must not be visible; runs beside "honest"
        "h1_sibling_snoop": ("import os, time\nt = time.time()\nwhile time.time() - t < 1.0:\n"
                             "    for top in ['/', '/tmp', '/w', '/proc', '/dev/shm', '/run', '/var']:\n"
                             "        for d, _, fs in os.walk(top):\n"
                             "            if d.startswith(('/proc/sys', '/usr', '/proc/self', '/proc/thread-self')):"
                             " continue\n"
                             "            for f in fs:\n"
                             "                try:\n"
                             "                    b = open(os.path.join(d, f), 'rb').read(1 << 16)\n"
                             "                except OSError: continue\n"
                             "                if b'SIBLING' + b'-SECRET' in b:\n"
                             "                    print('ESCAPE found', d, f); raise SystemExit"
                             "\n    time.sleep(0.05)"),
        "h1_tmp_listing": "import os\nfor d in ['/tmp', '/tmp/..', '/']:\n    print(d, os.listdir(d))\n"
                          "print('ESCAPE' if any(n.startswith(('nano_r1', 'pytest')) for n in os.listdir('/tmp')) "
                          "else 'clean')",
        # h2: a world-readable problems file and the project's own files
        "h2_problems_file": _attempts([problems, f"{REPO}/tasks.py", f"{REPO}/rewards.py", f"{REPO}/sandbox.py"],
                                      "print(open(p).read()[:30])"),
        # h3: unix path socket on the host, an abstract one, the host's docker/systemd sockets
        "h3_unix_socket": ("import socket\nfor a in [" + repr(sock) + ", '\\0' + " + repr(host["abstract"])
                           + ", '/run/docker.sock', '/run/systemd/private', '/var/run/dbus/system_bus_socket']:\n"
                           "    s = socket.socket(socket.AF_UNIX)\n"
                           "    try: s.connect(a); print('ESCAPE connected', a)\n"
                           "    except OSError as e: print('blocked', a, e.errno)"),
        # h4: every mount but /w (and /dev/null-like nodes) must refuse writes, recursively
        "h4_every_mount_readonly": ("import os\nfor line in open('/proc/self/mountinfo'):\n"
                                    "    m = line.split()[4]\n"
                                    "    if m in ('/w',) or m.startswith(('/proc', '/dev/')): continue\n"
                                    "    p = os.path.join(m, 'pwned_h4')\n"
                                    "    try: open(p, 'w').write('x'); print('ESCAPE wrote', p)\n"
                                    "    except OSError as e: print('blocked', p, e.errno)\n"
                                    "print(open('/proc/self/mountinfo').read())"),
        "h4_mount_flags": ("bad = [l for l in open('/proc/self/mountinfo') if l.split()[4] not in ('/w',) and "
                           "not l.split()[4].startswith('/proc') and ('nosuid' not in l.split()[5] or "
                           "(l.split()[4] != '/dev' and not l.split()[4].startswith('/dev/') and "
                           "('nodev' not in l.split()[5] or not l.split()[5].startswith('ro'))))]\n"
                           "print('ESCAPE' if bad else 'ok', bad)"),
        # h5: the host's /proc: its pids, the parent's command line, host mountinfo
        "h5_host_proc": ("import os\npids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
                         f"print(pids)\nif {os.getpid()} != 1 and str({os.getpid()}) in pids: print('ESCAPE pid')\n"
                         "for p in pids:\n    c = open(f'/proc/{p}/cmdline', 'rb').read()\n"
                         "    if b'pytest' in c or b'bwrap' not in c and b'python' not in c: print('ESCAPE', c)\n"
                         "if len(pids) > 4: print('ESCAPE many pids')\n"
                         "if 'cgroup' in open('/proc/self/mountinfo').read(): print('ESCAPE host mounts')"),
        # h6: SysV IPC written here must not be readable by the next run (phase 2) nor outlive this one
        "h6_sysv_ipc_writer": (f"{LIBC}libc.shmget.restype = ctypes.c_int\nlibc.shmat.restype = ctypes.c_void_p\n"
                               "ids = [libc.shmget(0x4E5231 + i, 64 << 20, 0o1666) for i in range(4)]\n"
                               "for i in ids:\n    a = libc.shmat(i, None, 0)\n"
                               "    if a not in (None, ctypes.c_void_p(-1).value): ctypes.memset(a, 65, 64 << 20)\n"
                               "q = libc.msgget(0x4E5232, 0o1666)\n"
                               "msg = ctypes.create_string_buffer(struct_ := b'\\1\\0\\0\\0\\0\\0\\0\\0HELLO')\n"
                               "print('shm', ids, 'msg', q, libc.msgsnd(q, msg, 5, 0o4000))"),
        # h7: the kernel keyring: keys added here must not be found by the next run (phase 2)
        "h7_keyring_writer": (f"{LIBC}for ring in (-3, -4, -5):\n"
                              "    r = libc.syscall(248, b'user', b'nr1key', b'KEYSECRET', 9, ring)\n"
                              "    print('add_key', ring, r, ctypes.get_errno())\n"
                              "    if r > 0: print('ESCAPE key added', ring)"),
        # h8: setuid: no_new_privs, nosuid everywhere, no setuid file reachable; a setuid copy of python
        "h8_setuid": ("import os, stat, shutil, sys\n"
                      "if open('/proc/self/status').read().split('NoNewPrivs:')[1].split()[0] != '1':\n"
                      "    print('ESCAPE nnp')"
                      "\nmounts = {l.split()[4]: l.split()[5] for l in open('/proc/self/mountinfo')}\n"
                      "for d, _, fs in os.walk('/'):\n    if d.startswith('/proc'): continue\n    for f in fs:\n"
                      "        p = os.path.join(d, f)\n"
                      "        try: m = os.lstat(p).st_mode\n        except OSError: continue\n"
                      "        if m & (stat.S_ISUID | stat.S_ISGID) and stat.S_ISREG(m):\n"
                      "            mnt = max((k for k in mounts if p.startswith(k.rstrip('/') + '/')), key=len)\n"
                      "            print('setuid file', p, 'on', mnt, mounts[mnt])\n"
                      "            if 'nosuid' not in mounts[mnt]: print('ESCAPE setuid honoured', p)\n"
                      "shutil.copy(sys.executable, '/w/py')\nos.chmod('/w/py', 0o6755)\n"
                      "os.execv('/w/py', ['/w/py', '-c', "
                      "'import os; r = os.getresuid() + os.getresgid(); print(\"ids\", r)"
                      "; print(\"ESCAPE\" if len(set(r)) > 2 else \"same\")'])"),
        # h9: memory beyond the limit: private tmpfs, forks, shared memory, memfd
        "h9_tmpfs_in_userns": (f"{LIBC}print('unshare', libc.unshare(0x10000000 | 0x20000), ctypes.get_errno())\n"
                               "print('mount', libc.mount(b'tmpfs', b'/w', b'tmpfs', 0, b'size=2g'),"
                               " ctypes.get_errno())\n"
                               "f = open('/w/big', 'wb')\nn = 0\ntry:\n    while n < 1100:\n"
                               "        f.write(b'x' * (1 << 20)); n += 1\nexcept OSError: pass\n"
                               "print('MB', n)\nif n > 20: print('ESCAPE wrote', n, 'MB')"),
        "h9_fork_memory": ("import os, time\nfor i in range(6):\n    if os.fork() == 0:\n"
                           "        try:\n            b = bytearray(200 << 20)\n"
                           "            for j in range(0, len(b), 4096): b[j] = 1\n"
                           "            print('held', i, flush=True); time.sleep(1)\n        except MemoryError: pass\n"
                           "        os._exit(0)\nfor i in range(6):\n    try: os.wait()\n    except OSError: pass"),
        "h9_memfd_memory": ("import os, mmap\nfd = os.memfd_create('x')\nn = 0\ntry:\n    while n < 1100:\n"
                            "        os.write(fd, b'x' * (1 << 20)); n += 1\nexcept OSError: pass\n"
                            "print('MB', n)\nif n > 300: print('ESCAPE memfd', n)"),
        "h9_shared_anon": ("import mmap\nms = []\ntry:\n    for i in range(12):\n"
                           "        m = mmap.mmap(-1, 100 << 20, flags=mmap.MAP_SHARED)\n"
                           "        for j in range(0, 100 << 20, 4096): m[j] = 1\n        ms.append(m)\n"
                           "except (OSError, MemoryError): pass\nprint('held', len(ms))\n"
                           "if len(ms) > 3: print('ESCAPE shared', len(ms))"),
        # h10: forge the harness report / find expected values (run through code_reward below, too)
        "h10_find_answers": ("import os\nfor d, _, fs in os.walk('/'):\n"
                             "    if d.startswith(('/proc', '/usr')): continue\n"
                             "    for f in fs:\n        try: b = open(os.path.join(d, f), 'rb').read()\n"
                             "        except OSError: continue\n"
                             "        if b'98765' + b'4321' in b: print('ESCAPE', d, f)\n"
                             "for p in os.listdir('/proc'):\n    for k in ('cmdline', 'environ'):\n"
                             "        try: b = open(f'/proc/{p}/{k}', 'rb').read()\n        except OSError: continue\n"
                             "        if b'98765' + b'4321' in b: print('ESCAPE', p, k)"),
    }
    own = {
        "ptrace_pid1": (f"{LIBC}if os.fork() == 0:\n    r = libc.ptrace(16, 1, 0, 0)\n"
                        "    print('ptrace', r, ctypes.get_errno(), flush=True)\n"
                        "    if r == 0: print('ESCAPE attached', flush=True)\n    os._exit(0)\nos.wait()"),
        "unfiltered_process": ("import os\nfor p in os.listdir('/proc'):\n    if not p.isdigit(): continue\n"
                               "    st = open(f'/proc/{p}/status').read()\n"
                               "    print(p, st.split('Seccomp:')[1].split()[0],"
                               " st.split('NoNewPrivs:')[1].split()[0])\n"
                               "    if st.split('Seccomp:')[1].split()[0] != '2': print('ESCAPE no filter', p)"),
        "kill_all": "import os, signal\ntry: os.kill(-1, signal.SIGKILL)\nexcept OSError as e: print('blocked', e)",
        "proc_sys_write": _attempts(["/proc/sys/vm/drop_caches", "/proc/sys/kernel/hostname",
                                     "/proc/sysrq-trigger", "/proc/sys/kernel/core_pattern"],
                                    "open(p, 'w').write('1')"),
        "sethostname": (f"{LIBC}r = libc.sethostname(b'pwned', 5)\nprint('sethostname', r)\n"
                        "print(open('/proc/sys/kernel/hostname').read())"),
        "mount_proc": (f"{LIBC}r = libc.mount(b'proc', b'/w', b'proc', 0, None)\n"
                       "if r == 0: print('ESCAPE mounted')\nelse: print('blocked', ctypes.get_errno())"),
        "chroot_escape": ("import os\ntry:\n    os.mkdir('/w/x'); os.chroot('/w/x'); print('ESCAPE chroot')\n"
                          "except OSError as e: print('blocked', e)"),
        "nested_userns": (f"{LIBC}r = libc.unshare(0x10000000)\nprint('unshare', r, ctypes.get_errno())\n"
                          "if r == 0: print('ESCAPE userns')"),
        "mknod_device": ("import os, stat\ntry:\n    os.mknod('/w/sda', stat.S_IFBLK | 0o666, os.makedev(8, 0))\n"
                         "    print(open('/w/sda', 'rb').read(16)); print('ESCAPE mknod')\n"
                         "except OSError as e: print('blocked', e)"),
        "dev_mem": _attempts(["/dev/mem", "/dev/kmem", "/dev/sda", "/dev/vda", "/dev/port", "/dev/kmsg"],
                             "open(p, 'rb').read(1)"),
        "raw_socket": ("import socket\nfor fam, typ in [(socket.AF_INET, socket.SOCK_RAW), (socket.AF_PACKET, "
                       "socket.SOCK_RAW)]:\n    try: socket.socket(fam, typ, 1); print('opened', fam)\n"
                       "    except OSError as e: print('blocked', fam, e)\nprint(socket.if_nameindex())\n"
                       "if len(socket.if_nameindex()) > 1: print('ESCAPE interfaces')"),
        "udp_out": ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                    "try: s.sendto(b'x', ('8.8.8.8', 53)); print('ESCAPE sent')\n"
                    "except OSError as e: print('blocked', e)"),
        "leaked_fds": ("import os\nfds = [int(f) for f in os.listdir('/proc/self/fd')]\nprint(fds)\n"
                       "for f in fds:\n    if f > 3: print('ESCAPE fd', f, os.readlink(f'/proc/self/fd/{f}'))"),
        "proc1_root": _attempts(["/proc/1/root/etc/shadow", "/proc/1/cwd/tasks.py", "/proc/self/root/../../etc/shadow"],
                                "print(open(p).read()[:10])"),
        "bpf_perf_uring": (f"{LIBC}for name, nr, args in [('bpf', 321, (0, 0, 0)), ('perf_event_open', 298, (0, 0, -1, "
                           "-1, 0)), ('userfaultfd', 323, (0,)), ('io_uring_setup', 425, (1, 0))]:\n"
                           "    r = libc.syscall(nr, *args); print(name, r, ctypes.get_errno())\n"
                           "    if r >= 0: print('ESCAPE', name)"),
        "setsid_orphan": (f"{STAY}import time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(1000)\n"
                          "print('bye')"),
        "reparent_to_pid1": (f"{STAY}import time\nfor i in range(5):\n"
                             "    if os.fork() == 0:\n        time.sleep(1000)\n"
                             "os._exit(0)"),
        "stay_after_timeout": (f"{STAY}import time\nfor i in range(3):\n    if os.fork() == 0:\n        os.setsid()\n"
                               "        time.sleep(1000)\ntime.sleep(1000)"),
        "sigstop_self": "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)",
        "close_stdout": "import os\nos.close(1)\nos.close(2)\nwhile True: pass",
        "huge_argv_exec": "import os\nos.execv('/usr/bin/python3', ['x' * (1 << 20)])",
        "zombie_pile": "import os\nfor i in range(10000):\n    try:\n        if os.fork() == 0: os._exit(0)\n"
                       "    except OSError: break",
        "cpu_in_children": ("import os\nfor i in range(4):\n    if os.fork() == 0:\n        while True: pass\n"
                            "os.wait()"),
        "write_stdin_file": "import os\nos.lseek(0, 0, 0)\nos.write(0, b'overwritten')\nprint('wrote stdin?')",
        "truncate_stdout": ("import os, sys\nprint('x' * 100)\nsys.stdout.flush()\nos.ftruncate(1, 0)\n"
                            "os.lseek(1, 0, 0)\nprint('42')"),
        "cgroup_escape": _attempts(["/sys/fs/cgroup/cgroup.procs", "/sys/fs/cgroup/memory/cgroup.procs",
                                    "/proc/self/cgroup"], "open(p, 'w').write('0')"),
        "inotify_watch": (f"{LIBC}fd = libc.inotify_init()\nfor p in [b'/', b'/w', b'/usr']:\n"
                          "    print(p, libc.inotify_add_watch(fd, p, 0xfff))"),
        "dns_lookup": ("import socket\ntry: print('ESCAPE', socket.gethostbyname('pypi.org'))\n"
                       "except OSError as e: print('blocked', e)"),
        "sysrq_and_reboot": (f"{LIBC}r = libc.reboot(0x4321FEDC)\nprint('reboot', r, ctypes.get_errno())"),
        "import_site_packages": ("import sys\nprint(sys.path)\ntry:\n    import torch; print('ESCAPE torch')\n"
                                 "except ImportError: print('blocked')"),
    }
    progs = {**old, **holes, **own}
    return progs


KW = {"h8_setuid": {"output_cap": 1 << 22, "disk_mb": 32}}     # room for a copy of python (file size limit)


def phase2_programs():
    """Run after phase 1: look for what phase 1 tried to leave behind."""
    return {
        "h6_sysv_ipc_reader": (f"{LIBC}ids = [libc.shmget(0x4E5231 + i, 0, 0) for i in range(4)]\n"
                               "q = libc.msgget(0x4E5232, 0)\nprint('shm', ids, 'msg', q)\n"
                               "if max(ids) >= 0 or q >= 0: print('ESCAPE ipc survived')\n"
                               "print(open('/proc/sysvipc/shm').read())"),
        "h7_keyring_reader": (f"{LIBC}for ring in (-3, -4, -5):\n"
                              "    r = libc.syscall(250, 10, ring, b'user', b'nr1key', 0)\n"   # KEYCTL_SEARCH
                              "    print('search', ring, r, ctypes.get_errno())\n"
                              "    if r > 0: print('ESCAPE key found')"),
        "tmp_leftovers": ("import os\nprint(os.listdir('/tmp'), os.listdir('/w'))\n"
                          "if len(os.listdir('/w')) > 1: print('ESCAPE leftovers')"),
    }


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """Host-side bait: a canary dir, a secret, a problems file, a listening unix socket (path and abstract)."""
    d = tmp_path_factory.mktemp("bait")
    os.chmod(d, 0o777)
    canary = d / "canary"
    canary.mkdir()
    os.chmod(canary, 0o777)
    (canary / "canary.txt").write_text("alive")
    os.chmod(canary / "canary.txt", 0o666)
    (d / "secret.txt").write_text("TOPSECRET")
    os.chmod(d / "secret.txt", 0o644)
    (d / "problems.json").write_text('{"tests": [{"input": "SIBLING-SECRET", "output": "987654321"}]}')
    os.chmod(d / "problems.json", 0o644)
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(d / "sock"))
    os.chmod(d / "sock", 0o777)
    srv.listen(8)
    srv.setblocking(False)
    abstract = f"nr1_abstract_{os.getpid()}"
    srv2 = socket.socket(socket.AF_UNIX)
    srv2.bind("\0" + abstract)
    srv2.listen(8)
    srv2.setblocking(False)
    yield {"canary": str(canary), "secret": str(d / "secret.txt"), "problems": str(d / "problems.json"),
           "socket": str(d / "sock"), "abstract": abstract, "servers": (srv, srv2)}
    srv.close()
    srv2.close()


def _survivors():
    """Live host processes carrying this test's TOKEN (zombies are dead): only our own sandboxes' are counted."""
    left = []
    for p in os.listdir("/proc"):
        try:
            with open(f"/proc/{p}/stat") as f:
                head, tail = f.read().rsplit(")", 1)
            comm, state = head.split("(", 1)[1], tail.split()[0]
            if comm == TOKEN and state != "Z":
                left.append(int(p))
        except (OSError, ValueError, IndexError):
            pass
    return left


@pytest.fixture(scope="module")
def results(host):
    os.environ["NANO_R1_TEST_SECRET"] = "ENV-SECRET-XYZ"
    progs = programs(host)
    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as ex:
        # an honest program alive while the hostile ones run; its own deadline leaves room for nine sandboxes
        # starting at once on 2 cores (at TIMEOUT, 0.3 s above its sleep, it timed out once under that load)
        honest = ex.submit(run_sandboxed, {"solution.py": "import time, sys\nx = sys.stdin.read()\ntime.sleep(1.2)"
                                           "\nprint(len(x))"}, "solution.py", stdin="SIBLING-SECRET 987654321",
                           timeout=TIMEOUT + 3.0)
        futs = {name: ex.submit(run_sandboxed, {"solution.py": src}, "solution.py", timeout=TIMEOUT, **KW.get(name, {}))
                for name, src in progs.items()}
        out = {name: f.result() for name, f in futs.items()}
        out["honest_sibling"] = honest.result()
    survivors_phase1 = _survivors()
    with ThreadPoolExecutor(4) as ex:
        futs = {name: ex.submit(run_sandboxed, {"solution.py": src}, "solution.py", timeout=TIMEOUT)
                for name, src in phase2_programs().items()}
        out.update({name: f.result() for name, f in futs.items()})
    print(f"\nhostile suite: {len(out)} programs in {time.monotonic() - t0:.1f} s")
    return out, survivors_phase1


def test_suite_size(results):
    out, _ = results
    assert len(out) >= 60


def test_no_escape(results, host):
    out, survivors = results
    escapes = {k: r["stdout"][-300:] for k, r in out.items() if b"ESCAPE" in r["stdout"]}
    assert escapes == {}
    assert os.getpid() > 0                                            # the parent survived (kill_parent)
    with open(os.path.join(host["canary"], "canary.txt")) as f:
        assert f.read() == "alive"
    assert sorted(os.listdir(host["canary"])) == ["canary.txt"]
    for p in ["/tmp/pwned_w", "/var/tmp/pwned_w", "/dev/shm/pwned_w", "/pwned_w", "/usr/lib/pwned_w"]:
        assert not os.path.exists(p), p
    for srv in host["servers"]:                                       # h3: nobody connected to our sockets
        with pytest.raises(BlockingIOError):
            srv.accept()
    with open("/proc/sysvipc/shm") as f:                              # h6: no segment reached the host
        keys = {int(ln.split()[0]) for ln in f.read().splitlines()[1:] if ln.strip()}
    assert not keys & {0x4E5231 + i for i in range(4)}
    assert survivors == [] and _survivors() == []                    # nothing outlived its run (ours only)
    assert all(r["left"] == 0 for r in out.values()), {k: r["left"] for k, r in out.items() if r["left"]}
    for name, r in out.items():
        assert r["wall"] < TIMEOUT + SLACK, f"{name} took {r['wall']:.2f}s"
        assert len(r["stdout"]) <= 1 << 20, name


def test_specific_containment(results):
    out, _ = results
    s = {k: r["stdout"] for k, r in out.items()}
    assert b"ENV-SECRET-XYZ" not in s["environ"] + s["proc_environ"]
    assert b"TOPSECRET" not in s["read_secret"] and s["read_secret"].count(b"blocked") == 1
    assert s["write_outside"].count(b"blocked") == 8 and s["read_root_files"].count(b"blocked") == 4
    assert s["h2_problems_file"].count(b"blocked") == 4
    assert s["h3_unix_socket"].count(b"blocked") == 5
    assert b"blocked" in s["h4_every_mount_readonly"] and b"ok []" in s["h4_mount_flags"]
    assert b"add_key -3 -1 1" in s["h7_keyring_writer"]                # EPERM from the seccomp filter
    assert s["h8_setuid"].endswith(b"same\n")                           # the setuid copy ran as ourselves
    held = re.search(rb"held (\d+)", s["h9_shared_anon"])               # MemoryError, or killed by the OOM killer
    assert (int(held.group(1)) <= 2) if held else out["h9_shared_anon"]["returncode"] != 0
    assert s["h9_fork_memory"].count(b"held") <= 1                   # 6 x 200 MB against a 256 MB tree limit
    assert b"ptrace -1 1" in s["ptrace_pid1"] and s["unfiltered_process"].startswith(b"1 2 1\n2 2 1")
    assert b"unshare -1" in s["nested_userns"] and b"sethostname -1" in s["sethostname"]
    assert b"'lo'" in s["raw_socket"] and s["udp_out"].startswith(b"blocked")
    assert s["leaked_fds"].strip().startswith(b"[0, 1, 2")
    assert out["double_fork_daemon"]["stdout"].strip() == b"parent done"
    assert out["truncate_stdout"]["stdout"].endswith(b"42\n")
    for name in ["infinite_loop", "sleep_forever", "ignore_sigterm", "thread_bomb", "close_stdout", "cpu_in_children",
                 "stay_after_timeout", "sigstop_self"]:
        assert out[name]["timed_out"], name
    for name in ["memory_bomb", "h9_tmpfs_in_userns", "h9_memfd_memory", "honest_sibling"]:
        assert not out[name]["timed_out"], name
    assert out["stdout_flood"]["overflow"]
    assert out["honest_sibling"]["stdout"] == b"24\n"


# ----------------------------------------------------------------------------- reward hacks through code_reward

IMPOSSIBLE = ["assert secret(1) == 987654321", "assert secret(2) == [1, 2, 3]"]    # nothing inside says these
IO = [{"input": "SIBLING-SECRET\n", "output": "987654321\n"}]


def test_reward_hacks_score_zero(host):
    cheats = {
        "always_equal": "class A:\n    __eq__ = lambda s, o: True\ndef secret(x): return A()",
        "int_subclass": "class I(int):\n    __eq__ = lambda s, o: True\ndef secret(x): return I(0)",
        "exit_before_asserts": "import os\nos._exit(0)",
        "sys_exit_first": "import sys\nsys.exit(0)",
        "patch_builtins": ("import builtins\nbuiltins.repr = lambda x: '5'\nbuiltins.all = lambda x: True\n"
                           "builtins.type = lambda x: int\nclass A: pass\ndef secret(x): return A()"),
        "print_fake_report": "print('[[\"ok\", \"1\"], [\"ok\", \"[1]\"]]')\nimport sys\nsys.exit(0)",
        "raise_everything": "raise SystemExit(0)",
        # h10: the old nonce: forge from __main__; read the tests from the harness's inputs
        "forge_from_main": ("import sys, json, os\nm = sys.modules['__main__']\nprint(sorted(vars(m)))\n"
                            "os.write(1, ('\\n' + json.dumps([['ok', repr(v)] for v in vars(m).values()"
                            " if isinstance(v, int)][:2]) + '\\n').encode())\nos._exit(0)"),
        "read_tests": ("import json, os, re\nsrc = ''.join(open(f, errors='replace').read() for f in os.listdir('.'))\n"
                       "nums = re.findall(r'\\d{6,}', src)\n"
                       "rep = json.dumps([['ok', (nums or ['0'])[0]], ['ok', '[0]']])\n"
                       "os.write(1, ('\\n' + rep + '\\n').encode())\n"
                       "os._exit(0)"),
        "walk_frames": ("import sys, os, json, gc\nfound = [o for o in gc.get_objects() if isinstance(o, int) and o > "
                        "10**8][:1]\nf = sys._getframe()\nwhile f: found += [v for v in f.f_locals.values() if "
                        "isinstance(v, int) and v > 10**8]; f = f.f_back\n"
                        "os.write(1, ('\\n' + json.dumps([['ok', repr(found[0] if found else 0)], ['ok', '[0]']])"
                        " + '\\n').encode())\nos._exit(0)"),
        # h11: reports that crashed the parser of the reward call
        "deep_report": "print('[' * 200000)",
        "deep_report_value": "print('[[\"ok\", \"' + '(' * 100000 + '\"]]')",
        "huge_int_report": "print('[[\"ok\", \"' + '9' * 100000 + '\"], [\"ok\", \"1\"]]')",
        "grep_problems": (f"print(open({host['problems']!r}).read())"),
    }
    codes = list(cheats.values())
    d = code_reward_details(codes + codes, [IMPOSSIBLE] * len(cheats) + [IO] * len(cheats), timeout=TIMEOUT)
    got = {name: (a["reward"], b["reward"]) for name, a, b in zip(cheats, d[:len(cheats)], d[len(cheats):])}
    assert got == {k: (0.0, 0.0) for k in cheats}
    # the honest half of secret() is credited: the judge is not simply refusing everything
    honest = ["def secret(x): return 987654321 if x == 1 else 0",
              "import atexit\natexit.register(print, 'noise')\ndef secret(x): return 987654321 if x == 1 else 0"]
    assert [d["passed"] for d in code_reward_details(honest, [IMPOSSIBLE] * 2)] == [[True, False]] * 2


def test_parent_memory_safe_judging():
    """Values from the sandbox never make the parent build something huge (sum/sorted on a capped report)."""
    code = "def f(x): return 10**4000"
    d = code_reward_details([code], [["assert 'a' * f(1) == 'a'", "assert [0] * f(1) == [0]",
                                      "assert f(1) % 7 == 4"]], timeout=TIMEOUT)[0]
    assert d["passed"] == [False, False, True]


def test_keyring_really_blocked():
    """The keyring call gets EPERM inside (without the filter it returns the session keyring's id)."""
    if sandbox._seccomp_filter() is None:
        pytest.skip("no seccomp filter for this architecture")
    r = run_sandboxed({"a.py": LIBC + "print(libc.syscall(250, 0, -3, 0, 0, 0), ctypes.get_errno())"}, "a.py")
    assert r["stdout"].split() == [b"-1", b"1"]
