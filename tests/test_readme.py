"""The README's index from paper ideas to code: every `file.py:name` it cites exists (so it cannot go stale)."""
import importlib
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def index_entries():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("## Where each paper idea lives", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"`(\w+)\.py:([\w.]+)`", section)


def test_index_is_not_empty():
    assert len(index_entries()) >= 20


def test_every_indexed_function_exists():
    missing = []
    for module, name in index_entries():
        obj = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if not callable(obj):
            missing.append(f"{module}.py:{name}")
    assert not missing, f"README index names what does not exist: {missing}"
