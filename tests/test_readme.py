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


def test_readme_links_exist_and_no_placeholders_are_left():
    """Every relative link of the README points at a file of the repository, and no template placeholder (a
    line that is one ALL_CAPS word) was left behind."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    links = [t for t in re.findall(r"\]\(([^)#\s]+)\)", text) if "://" not in t]
    assert links, "the README links its docs"
    missing = [t for t in links if not os.path.exists(os.path.join(ROOT, t))]
    assert not missing, f"README links to files that do not exist: {missing}"
    placeholders = re.findall(r"^[A-Z][A-Z0-9_]{3,}$", text, re.M)
    assert not placeholders, f"README has placeholder lines: {placeholders}"
