"""Checks every entry script runs before any work: flag ranges and choices, comma lists, output paths,
config-file values against the dataclass they fill. Each failure is an InputError naming the flag or file."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from pathlib import Path

from .errors import InputError


def check_number(flag: str, value, minimum=None, maximum=None, allow_none: bool = True, exclusive_min=False):
    """`value` within [minimum, maximum] (or (minimum, ...] with exclusive_min); None passes if allowed."""
    if value is None:
        if allow_none:
            return value
        raise InputError(f"{flag} is required")
    if isinstance(value, float) and math.isnan(value):
        raise InputError(f"{flag} must be a number, got nan")
    too_low = minimum is not None and (value <= minimum if exclusive_min else value < minimum)
    too_high = maximum is not None and value > maximum
    if too_low or too_high:
        low = "" if minimum is None else (f"> {minimum}" if exclusive_min else f">= {minimum}")
        high = "" if maximum is None else f"<= {maximum}"
        raise InputError(f"{flag} must be {' and '.join(p for p in (low, high) if p)}, got {value}")
    return value


SEED_MAX = 2**32 - 1  # numpy's seeds


def check_seed(flag: str, value):
    """A seed numpy, torch and random all take: an integer in [0, 2**32 - 1] (None passes)."""
    return check_number(flag, value, 0, SEED_MAX)


def comma_list(flag: str, text, choices=None) -> list[str]:
    """'a, b' -> ['a', 'b'] (spaces stripped, empty pieces dropped); unknown or no entries are an error."""
    values = text if isinstance(text, (list, tuple)) else str(text).split(",")
    items = [str(v).strip() for v in values if str(v).strip()]
    if not items:
        raise InputError(f"{flag}: empty list" + (f" (choose from {', '.join(choices)})" if choices else ""))
    if choices is not None:
        unknown = [v for v in items if v not in choices]
        if unknown:
            raise InputError(f"{flag}: unknown {', '.join(unknown)} (choose from {', '.join(choices)})")
    return items


def _nearest_existing(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists() or parent.is_symlink():
            return parent
    return Path(".")


def _check_creatable(flag: str, path: Path) -> None:
    """Everything above `path` that exists is a writable directory (so `path` can be made)."""
    base = _nearest_existing(path.parent if path != Path(path.anchor) else path)
    if not base.is_dir():
        raise InputError(f"{flag} {path}: {base} is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: no permission to write in {base}")


def check_output_dir(path, flag: str = "--output_dir") -> Path:
    """An output directory that exists or can be created and written, checked before any work starts."""
    if path is None or not str(path).strip():
        raise InputError(f"{flag}: empty path (give a directory)")
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path}: exists and is not a directory")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f"{flag} {path}: no permission to write in this directory")
    else:
        _check_creatable(flag, path)
    return path


def check_input_file(path, flag: str) -> Path:
    if path is None or not str(path).strip():
        raise InputError(f"{flag}: empty path (give a file)")
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a directory, expected a file")
    if not path.is_file():
        raise InputError(f"{flag} {path}: file not found")
    if not os.access(path, os.R_OK):
        raise InputError(f"{flag} {path}: no permission to read this file")
    return path


def check_input_dir(path, flag: str) -> Path:
    if path is None or not str(path).strip():
        raise InputError(f"{flag}: empty path (give a directory)")
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path}: is a file, expected a directory")
    if not path.is_dir():
        raise InputError(f"{flag} {path}: directory not found")
    return path


def check_adapter_dir(path, flag: str) -> Path:
    path = check_input_dir(path, flag)
    if not (path / "adapter_config.json").is_file():
        raise InputError(f"{flag} {path}: not a LoRA adapter directory (no adapter_config.json)")
    return path


def check_device(flag: str, device) -> None:
    """cpu, cuda, cuda:N, auto, mps... that exist on this machine (before any model is loaded)."""
    if device is None:
        return
    if device == "auto":
        import torch

        if not torch.cuda.is_available():
            raise InputError(f"{flag} auto spreads the model over GPUs, but this machine has no CUDA GPU")
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"{flag}: unknown device {device!r} (cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{flag} {device}: this machine has no CUDA GPU (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"{flag} {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{flag} {device}: MPS is not available on this machine")


def looks_local(path: str) -> bool:
    """A path rather than a hub id (hub ids are 'name' or 'org/name')."""
    return str(path).startswith((".", "/", "~")) or str(path).count("/") > 1


def check_safetensors_complete(path: Path) -> None:
    """A .safetensors file holds every byte its header promises (a truncated copy or download fails here,
    before a loader reads it)."""
    import json
    import struct

    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(header_len))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError):
        raise InputError(f"{path}: not a valid safetensors file (corrupt or truncated header)") from None
    if 8 + header_len + end > size:
        raise InputError(f"{path}: truncated ({size} bytes, the header promises {8 + header_len + end}); "
                         "copy or download it again")


def check_model_path(path, flag: str = "--base_model") -> None:
    """A local model directory exists, has config.json, and its weight files are complete. Hub ids pass."""
    local = Path(str(path)).expanduser()
    if not local.exists():
        if looks_local(str(path)):
            raise InputError(f"{flag} {path}: directory not found")
        return
    if not local.is_dir():
        raise InputError(f"{flag} {path}: is a file, expected a model directory")
    if not (local / "config.json").is_file():
        raise InputError(f"{flag} {path}: not a model directory (no config.json)")
    for weights in sorted(local.glob("*.safetensors")):
        check_safetensors_complete(weights)


# ---- config files: values against the dataclass fields they fill ------------------------------------------


def _describe(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _conforms(value, tp) -> tuple[bool, object]:
    """(ok, value) for the simple field types of our dataclasses; unknown types pass unchecked."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return True, None
        for arg in args:
            if arg is type(None):
                continue
            ok, out = _conforms(value, arg)
            if ok:
                return True, out
        simple = all(a in (int, float, str, bool, type(None)) or typing.get_origin(a) is list for a in args)
        return (not simple), value
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (object,)
        items = value if isinstance(value, list) else [value]
        out = []
        for item in items:
            ok, conv = _conforms(item, item_tp)
            if not ok:
                return False, value
            out.append(conv)
        return True, out
    if tp is dict or origin is dict:
        return isinstance(value, dict), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string; the flag would parse it
            try:
                value = float(value)
            except ValueError:
                return False, value
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, (str, int, float)) and not isinstance(value, bool), \
            str(value) if isinstance(value, (int, float)) else value
    return True, value


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is list:
        item = typing.get_args(tp)[0]
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(item, _type_name(item))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping"}.get(
        tp, _describe(tp))


def check_seeds(value, where: str) -> None:
    """`seeds` is a list of seeds in every config (pipeline and grid): a bare number is refused, as it read as one
    seed in one kind of config and as a count in the other."""
    if isinstance(value, bool) or not isinstance(value, list) and isinstance(value, int):
        count = value if isinstance(value, int) and 0 < value <= 10 else 3
        example = f"[{', '.join(map(str, range(count)))}]"
        raise InputError(f"{where}: a list of seeds is needed, got the number {value!r}; write [{value}] for seed "
                         f"{value} only, or {example} for {count} seeds")
    if isinstance(value, list) and not value:
        raise InputError(f"{where}: empty; give at least one seed, e.g. [0]")
    if isinstance(value, list) and len(set(map(str, value))) != len(value):
        raise InputError(f"{where}: {value} names a seed twice")


def check_config_values(values: dict, dataclass_types, path, prefix: str = "") -> dict:
    """Type- and choice-checked copy of `values` (a config file's mapping) for the fields of `dataclass_types`:
    unknown keys, wrong types (`seeds: abc`) and values outside a field's choices name the key and the file
    (`prefix`: the key path above these keys, e.g. `tuning.`; `path` None: no file, the keys are flags)."""
    fields = {}
    for dc in dataclass_types:
        hints = typing.get_type_hints(dc)
        for f in dataclasses.fields(dc):
            if f.init:
                fields.setdefault(f.name, (hints.get(f.name, f.type), f.metadata.get("choices")))
    loc = f"{path}: " if path is not None else ""

    def name(key) -> str:
        return f"{prefix}{key}" if path is not None else f"--{prefix}{key}"

    unknown = sorted(str(k) for k in values if k not in fields)
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        above = f"{name('')[:-1]}: " if prefix else ""  # `tuning: `, `--tuning: `
        raise InputError(f"{loc}{above}unknown setting(s) {', '.join(unknown)}{hint}")
    out = {}
    for key, value in values.items():
        tp, choices = fields[key]
        if key == "seeds":
            check_seeds(value, f"{loc}{name(key)}")
        ok, conv = _conforms(value, tp)
        if not ok:
            raise InputError(f"{loc}{name(key)}: expected {_type_name(tp)}, got {value!r}")
        if choices and conv is not None and conv not in choices:
            raise not_a_choice(f"{loc}{name(key)}", conv, choices)
        out[key] = conv
    return out


def not_a_choice(label: str, value, choices) -> InputError:
    """The one message of a value outside a field's choices (config files, and configs built in Python)."""
    return InputError(f"{label}: {value!r} is not one of {', '.join(map(str, choices))}")


def check_choices(dataclass_type, values) -> None:
    """Each field of `dataclass_type` with `choices` in its metadata: its value in `values` (an instance, or the
    namespace check_settings builds; None passes) is one of them. Flags (argparse) and config files
    (check_config_values) are checked as they are parsed; this is the check of a config built in Python."""
    for f in dataclasses.fields(dataclass_type):
        choices = f.metadata.get("choices")
        value = getattr(values, f.name, None)
        if choices and value is not None and value not in choices:
            raise not_a_choice(f"--{f.name}", value, choices)


def relabel(message: str, names, path=None, prefix: str = "") -> str:
    """An error message about flags (`--num_negatives must be >= 1`) as one about a config file's keys:
    `PATH: PREFIXnum_negatives must be >= 1` (only the `names` given: the fields of the checked dataclasses).
    Without `path` the names stay flags: `--PREFIXnum_negatives`."""
    names = set(names)

    def sub(m):
        if m.group(1) not in names:
            return m.group(0)
        return f"{prefix}{m.group(1)}" if path is not None else f"--{prefix}{m.group(1)}"

    text = re.sub(r"(?<![\w-])--([A-Za-z_]\w*)", sub, message)
    return f"{path}: {text}" if path is not None else text


def field_defaults(dataclass_types) -> dict:
    """{field: default} of every init field (None where the field has no default)."""
    out = {}
    for dc in dataclass_types:
        for f in dataclasses.fields(dc):
            if not f.init or f.name in out:
                continue
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
            else:
                out[f.name] = None
    return out


def check_settings(dataclass_types, values: dict, path=None, prefix: str = "") -> dict:
    """Every value of `values` (settings for these dataclasses: a config file's mapping, or a mapping handed on
    to another script) checked now, without reading any file or building anything: unknown keys, types and
    choices (check_config_values), then each dataclass's own `check_values` (ranges, comma lists, exclusions)
    on the defaults overlaid with `values`. Errors name `path` and the key path (`PREFIXkey`). Returns the
    type-checked values."""
    if not isinstance(values, dict):
        loc = f"{path}: " if path is not None else ""
        raise InputError(f"{loc}{prefix.rstrip('.') or 'settings'}: expected a mapping, got {type(values).__name__}")
    checked = check_config_values(values, dataclass_types, path, prefix)
    merged = types.SimpleNamespace(**{**field_defaults(dataclass_types), **checked})
    names = [f.name for dc in dataclass_types for f in dataclasses.fields(dc)]
    for dc in dataclass_types:
        check = dc.__dict__.get("check_values")
        if check is None:
            continue
        try:
            check(merged)
        except InputError as exc:
            raise InputError(relabel(str(exc), names, path, prefix)) from None
    return checked


def typed(dtype, values, where: str):
    """`values` (a mapping of the file) as `dtype`: unknown and missing keys and wrong types name the key and the
    file; nested mappings and lists stay as they are (the caller types them)."""
    if isinstance(values, dtype):  # the field's default: not in the file
        return values
    if not isinstance(values, dict):
        raise InputError(f"{where} must be a mapping, got {type(values).__name__}")
    known = [f.name for f in dataclasses.fields(dtype) if f.name != "path"]
    unknown = [k for k in values if k not in known]
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
    missing = [f.name for f in dataclasses.fields(dtype) if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and values.get(f.name) is None]
    if missing:
        raise InputError(f"{where}: missing '{missing[0]}'")
    return dtype(**check_config_values({k: v for k, v in values.items() if v is not None}, (dtype,), where))


def typed_list(dtype, items, where: str) -> list:
    if not isinstance(items, list):
        raise InputError(f"{where} must be a list, got {type(items).__name__}")
    out = []
    for n, item in enumerate(items):
        label = f"{where}: {item.get('name')!r}" if isinstance(item, dict) and "name" in item else f"{where} entry {n}"
        out.append(typed(dtype, item, label))
    return out
