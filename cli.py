"""cli.py: the command-line conventions every entry point shares (train.py, distill.py, r1.py; sample.py,
evaluate.py and bench.py keep their own parsers with the same spelling): --field=value or --field value for each
field of a config dataclass, dashes read as underscores, one-line errors that name the bad value and the valid
ones, and --help grouped from the dataclass source.

Simplifications:
 1. No argparse: a config dataclass is the whole interface, so its fields, types and defaults are the flags and
    its source comments the help (a `# group` line starts a group; each field's trailing comment describes it).
 2. Values are converted from the field's annotation (bool, int, float, str, or JSON for dicts and lists).

Use:
    pairs, switches = split_flags(argv, switches=("resume",))    # [("rl_steps", "3")], {"resume"}
    setattr(cfg, name, convert_flag(value, field.type, name))
    print_help(__doc__, PRESETS, Config, preset="smoke")           # the preset's values, marked *
    preset, cfg = parse_preset_args(argv, __doc__, PRESETS, Config, default="r1-tiny")   # distill.py, r1.py

Shapes: no tensors.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import json
import os
import re


def did_you_mean(name: str, valid) -> str:
    """' (did you mean 'x'?)' for the closest valid name, or '' when none is close."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def field_help(config_cls) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(group, [(field, description)])] read from the dataclass source: a `# group` comment line starts a
    group, and each field's trailing comment is its description (the source stays the one documentation)."""
    groups = [("run", [])]
    for line in inspect.getsource(config_cls).splitlines():
        if re.match(r"    # ", line):
            groups.append((line.strip()[2:], []))
        elif m := re.match(r"    (\w+): [^#]*?(?:#\s*(.*))?$", line):
            groups[-1][1].append((m.group(1), m.group(2) or ""))
    return [g for g in groups if g[1]]


def print_help(doc: str, presets: dict, config_cls, preset: str | None = None) -> None:
    """The module docstring, the preset names, and every field grouped with its description and default (with
    `preset`: that preset's values, the ones it sets marked *)."""
    print(doc)
    print(f"presets (--preset NAME; --preset NAME --help shows its values): {', '.join(presets)}")
    over = presets[preset] if preset else {}
    defaults = {f.name: (over[f.name] if f.name in over else f.default if f.default is not dataclasses.MISSING
                         else f.default_factory()) for f in dataclasses.fields(config_cls)}
    defaults["preset"] = preset or defaults.get("preset")
    print(f"\nflags (--FIELD=value or --FIELD value; dashes work too), with the defaults of "
          f"{'preset ' + preset + ' (* set by the preset)' if preset else 'the dataclass (presets override some)'}:")
    for group, items in field_help(config_cls):
        print(f"\n{group}:")
        for name, desc in items:
            value = defaults[name]
            shown = json.dumps(value) if isinstance(value, (dict, list)) else value
            line = f"  {'*' if name in over else ' '}--{name}={shown}"
            print(f"{line:<36} {desc}" if len(line) < 36 else f"{line}\n{'':<36} {desc}")


def split_flags(argv: list[str], switches=()) -> tuple[list[tuple[str, str]], set[str]]:
    """[(field, value)] from --field=value or --field value (dashes in a name read as underscores), and the
    bare --switches named in `switches`."""
    pairs, seen, i = [], set(), 0
    while i < len(argv):
        a = argv[i]
        if not a.startswith("--"):
            raise SystemExit(f"error: unexpected argument {a!r}; flags look like --field=value")
        name, eq, value = a[2:].partition("=")
        name = name.replace("-", "_")
        if name in switches and not eq:
            seen.add(name)
        elif eq:
            pairs.append((name, value))
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            pairs.append((name, argv[i + 1]))
            i += 1
        else:
            raise SystemExit(f"error: flag {a} needs a value (--{name}=value)")
        i += 1
    return pairs, seen


def convert_flag(v: str, typ, name: str):
    """The flag's string v as the field's type (an annotation string under `from __future__ import annotations`,
    or a type); a one-line error naming --name and the type when it does not convert."""
    typ = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if typ.startswith("bool"):
            if v.lower() in ("1", "true", "yes", "on"):
                return True
            if v.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ.startswith("int"):
            return int(v)
        if typ.startswith("float"):
            return float(v)
        if typ.startswith("dict") or typ.startswith("list"):
            return json.loads(v)
        if typ.startswith("str"):
            return v
        return json.loads(v)  # e.g. "int | None", "dict | None"
    except (ValueError, json.JSONDecodeError):
        raise SystemExit(f"error: --{name}={v!r} is not a valid {typ}" + (" (true or false)" if typ == "bool" else ""))


def parse_preset_args(argv: list[str], doc: str, presets: dict, config_cls, default: str):
    """(preset, config) for the scripts whose config is one dataclass plus presets (distill.py, r1.py):
    --preset NAME, --help (with --preset: that preset's values) and --FIELD=value (or --FIELD value); out_dir
    defaults to runs/<preset>. Every mistake is a one-line error naming the valid values."""
    wants_help = "--help" in argv or "-h" in argv
    pairs, _ = split_flags([a for a in argv if a not in ("--help", "-h")])
    preset = dict(pairs).get("preset", default)
    if preset not in presets:
        raise SystemExit(f"error: unknown preset {preset!r}; valid presets: {', '.join(presets)}")
    if wants_help:
        print_help(doc, presets, config_cls, preset if "preset" in dict(pairs) else None)
        raise SystemExit(0)
    cfg = config_cls(**copy.deepcopy(presets[preset]))
    names = {f.name: f for f in dataclasses.fields(config_cls)}
    for k, v in pairs:
        if k == "preset":
            continue
        if k not in names:
            raise SystemExit(f"error: unknown field {k!r}{did_you_mean(k, names)}; valid fields: {', '.join(names)}")
        setattr(cfg, k, convert_flag(v, names[k].type, k))
    cfg.out_dir = cfg.out_dir or os.path.join("runs", preset)
    return preset, cfg
