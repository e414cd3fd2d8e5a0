"""
Tests for .ci/gpu, the prepared GPU check, on CPU: its cheap parts only.

The full dry run (`bash .ci/gpu DIR --dry-run`: Triton smoke through the interpreter, the GPU-only tests
skipping, every bench section with --quick, train.py --preset smoke) takes minutes on a 2-core machine, so
these tests run the Triton smoke step and two bench sections (one real, one that fails) and check that the
steps are independent, that a failed smoke launch stops everything after it, and that bad usage is a
one-line error. Run: python -m pytest tests/test_ci_gpu.py -q
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "gpu"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason=".ci/gpu needs bash and coreutils timeout")


def ci(*args, timeout=240):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_dry_run_smoke_and_independent_bench_sections(tmp_path):
    pytest.importorskip("triton")  # the smoke launch runs through the Triton interpreter on CPU
    r = ci(tmp_path, "--dry-run", "--steps", "smoke,bench", "--bench", "nosuch,rewards")
    summary = (tmp_path / "summary.md").read_text()
    assert r.returncode == 1, r.stdout + r.stderr  # one section failed: the whole check reports it
    assert "| smoke | ok |" in summary, summary
    assert "triton smoke: ok on CPU (TRITON_INTERPRET=1)" in (tmp_path / "smoke.txt").read_text()
    assert "| bench nosuch | failed (exit 2) |" in summary  # the failing section comes first ...
    assert "| bench rewards | ok |" in summary  # ... and does not hide the next one
    assert "checks/s" in (tmp_path / "bench" / "rewards.txt").read_text()  # its numbers are in RESULTS_DIR
    assert "torch " in summary and "numpy " in summary  # the stack it ran on
    assert "| tests |" not in summary and "| train |" not in summary  # only the steps asked for


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU failure path")
def test_failed_smoke_launch_stops_everything_after_it(tmp_path):
    r = ci(tmp_path, "--steps", "smoke,bench", "--bench", "rewards")  # not a dry run, and no GPU here
    summary = (tmp_path / "summary.md").read_text()
    assert r.returncode == 1
    assert "| smoke | failed" in summary and "not run: the Triton smoke launch failed" in summary
    assert "no CUDA device" in (tmp_path / "smoke.txt").read_text()
    assert not (tmp_path / "bench" / "rewards.txt").exists()


@pytest.mark.parametrize("args, message", [
    ((), "missing RESULTS_DIR"),
    (("DIR", "--steps", "smoke,fly"), "unknown step 'fly'; valid: smoke,tests,bench,train"),
    (("DIR", "--budget", "-3"), "--budget must be a positive number"),
    (("DIR", "--wat"), "unknown option --wat"),
])
def test_bad_usage_is_one_line(tmp_path, args, message):
    r = ci(*[str(tmp_path / "out") if a == "DIR" else a for a in args], timeout=30)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
