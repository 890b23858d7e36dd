"""The trainer's configuration, resolved: :class:`TrainConfig` (its fields: :mod:`tinystories.train.fields`) filled
from (lowest to highest priority) its defaults, the preset's training defaults, an optional TOML file and the
command line, and checked before anything is allocated. With ``--resume``, the run's saved ``config.json`` takes
the place of the defaults and the preset: only the keys given in the TOML file or on the command line change (see
:mod:`tinystories.train.resume`).

Every value is checked where it is read, so a bad one is a :class:`ConfigError` of one line naming its source (the
TOML file, ``command line`` or the run's config.json), the key and the value: ``run.toml: max_steps='ten' is not a
valid int``. A check across keys names the source of the highest-priority key involved.
"""

from __future__ import annotations

import difflib
import functools
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import TypeAdapter, ValidationError

from tinystories.model.config import PRESETS
from tinystories.runtime.arguments import deprecated
from tinystories.runtime.errors import ConfigError
from tinystories.train.fields import NONE_MEANS, RENAMED, Conflict, TrainConfig, current_names, none_word

__all__ = ["ConfigError", "TrainConfig", "config_toml", "load_config", "saved_config"]

# Training defaults per preset (the paper's optimiser settings are not all published; these are ours).
PRESET_TRAINING: dict[str, dict[str, Any]] = {
    # One CPU thread: the demo's 128-wide matmuls gain little from more, and one thread cannot be
    # starved by oversubscription (on a busy 2-core box: 2,200 tokens/s with 1 thread, 190 with 2).
    "demo": dict(
        batch_size=8,
        seq_len=128,
        max_steps=300,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=30,
        eval_every=100,
        eval_batches=8,
        ckpt_every=100,
        log_every=10,
        sample_max_new_tokens=100,
        cpu_threads=1,
        loader_threads=1,
    ),
}
# --data without --preset (or a shape, or --init-from-hf) would silently train the demo's architecture on real data.
SHAPE_GIVEN_WITHOUT_PRESET = ("hidden_size", "num_layers")
# Fine-tuning from Hugging Face weights (--init-from-hf): the paper's context, whatever the preset or the HF
# config says (the TinyStories models were trained at 512 though their config allows 2048).
FINETUNE_TRAINING: dict[str, Any] = dict(seq_len=512)
MIN_LR_RATIO = 0.1  # min_lr follows a given lr unless min_lr is given too
COMMAND_LINE = "command line"
_warned: set[str] = set()


def warn_once(text: str) -> None:
    """``tinystories-train: warning: TEXT`` on stderr, once per process (a sweep reads one TOML file per run)."""
    if text not in _warned:
        _warned.add(text)
        print(f"tinystories-train: warning: {text}", file=sys.stderr)


def deprecation(old: str, new: str, source: str) -> str:
    """The warning for an old name: ``--out_dir is deprecated, use --out (...)``; in a file ``FILE: out_dir ...``."""
    if source == COMMAND_LINE:
        return deprecated(f"--{old}", f"--{new.replace('_', '-')}")
    return f"{source}: {deprecated(old, new)}"


def field_name(key: str, source: str, *, warn: bool = True) -> str:
    """The field a key names: kebab- or snake-case, the old name of a renamed field (with a warning unless
    ``warn`` is False: a run's saved config.json); raises ConfigError, with a suggestion, for an unknown key."""
    name = key.strip().replace("-", "_")
    if name in RENAMED:
        if warn:
            warn_once(deprecation(key.strip(), RENAMED[name], source))
        name = RENAMED[name]
    if name not in TrainConfig.model_fields:
        close = difflib.get_close_matches(name, TrainConfig.model_fields, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{source}: unknown config key {key!r}{hint}")
    return name


@functools.cache
def _adapter(name: str) -> TypeAdapter:
    """One field's own validation (its type, range and before/after validators), without the other fields."""
    return TypeAdapter(TrainConfig.model_fields[name].rebuild_annotation())


def checked(name: str, value: Any, source: str) -> Any:
    """``value`` as field ``name`` holds it (``"1e4"`` -> 10000, ``"off"`` -> False...); raises ConfigError."""
    try:
        return _adapter(name).validate_python(value)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {field_message(name, exc.errors()[0])}") from None


def field_kind(annotation: Any) -> str:
    """INT, FLOAT, BOOL or STR: what a field holds, without Optional, Annotated and Literal."""
    if get_origin(annotation) is Literal:
        return "STR"
    args = [a for a in get_args(annotation) if a is not type(None)]
    return field_kind(args[0]) if args else annotation.__name__.upper()


def field_message(name: str, error: Mapping[str, Any]) -> str:
    """``KEY=VALUE what is wrong`` for pydantic's error about field ``name``."""
    info = TrainConfig.model_fields[name]
    kind, value, ctx = field_kind(info.annotation).lower(), error["input"], error.get("ctx", {})
    parse_error = error["type"].endswith("_parsing") or error["type"] == "int_from_float"
    shown = repr(value) if isinstance(value, str) and (parse_error or kind == "str") else value
    if parse_error:
        what = f"is not a valid {kind}"
    elif error["type"].endswith("_type"):
        what = f"must be of type {kind}, not {type(value).__name__}"
    elif error["type"] == "literal_error":
        what = f"must be one of {', '.join(get_args(info.annotation))}"
    elif error["type"] == "greater_than":
        what = "must be positive" if ctx["gt"] == 0 else f"must be > {ctx['gt']:g}"
    else:
        what = {
            "finite_number": "must be a finite number",
            "greater_than_equal": f"must be >= {ctx.get('ge', 0):g}",
            "less_than": f"must be < {ctx.get('lt', 0):g}",
            "less_than_equal": f"must be <= {ctx.get('le', 0):g}",
            "value_error": str(ctx.get("error")),
        }.get(error["type"], error["msg"])
    return f"{name}={shown} {what}"


def read_toml(path: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):  # (this test, not try/except ImportError: mypy checks for Python 3.10 too)
        import tomllib

        try:
            with open(path, "rb") as f:
                return tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a folder, not a TOML file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML ({exc})") from None
    raise ConfigError(f"reading {path} needs Python >= 3.11 (tomllib); pass --key=value flags")


def saved_config(run_dir: str | Path) -> dict[str, Any] | None:
    """The training config a run saved in its ``config.json`` (checked, renamed fields under their current
    names), or None without one."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return None
    try:
        table = json.loads(path.read_text(encoding="utf-8"))["train"]
        if not isinstance(table, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ConfigError(
            f'{path}: not a tinystories-train config.json (no "train" table); move it away or start a new --out'
        ) from None
    values = {}
    for key, value in current_names(table).items():
        name = field_name(key, str(path), warn=False)
        values[name] = checked(name, value, str(path))
    return values


def load_config(toml_path: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults < preset training defaults < TOML < overrides (the command line), validated (raises ConfigError).
    With ``resume``, the run's saved config.json replaces the defaults and the preset's, so only the given keys
    change."""
    layers = [(toml_path, read_toml(toml_path))] if toml_path else []
    layers.append((COMMAND_LINE, dict(overrides or {})))
    given: dict[str, Any] = {}
    origin: dict[str, str] = {}  # key -> the source its value comes from
    for source, table in layers:
        for key, value in table.items():
            name = field_name(str(key), source)
            given[name], origin[name] = checked(name, value, source), source
    saved = saved_config(given["out"]) if given.get("resume") and given.get("out") else None
    if saved is not None:
        saved_source = str(Path(given["out"]) / "config.json")
        layers.insert(0, (saved_source, saved))
        origin = {**dict.fromkeys(saved, saved_source), **origin}
    values = {**(saved or {}), **given}
    _require_model_size(values, origin)
    # min_lr follows a given lr; a resume given the run's own lr keeps the run's min_lr (no change at all)
    if "lr" in given and "min_lr" not in given and given["lr"] != (saved or {}).get("lr"):
        values["min_lr"], origin["min_lr"] = given["lr"] * MIN_LR_RATIO, origin["lr"]
    preset = values.get("preset", TrainConfig.model_fields["preset"].default)
    defaults = FINETUNE_TRAINING if values.get("init_from_hf") else PRESET_TRAINING.get(preset, {})
    merged = values if saved else {**defaults, **values}  # a saved config is complete
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as exc:
        raise _one_line(exc.errors()[0], origin, [source for source, _ in layers]) from None


def _require_model_size(values: dict[str, Any], origin: dict[str, str]) -> None:
    if (
        values.get("data")
        and "preset" not in values
        and not values.get("init_from_hf")
        and not all(k in values for k in SHAPE_GIVEN_WITHOUT_PRESET)
    ):
        sizes = ", ".join(p for p in PRESETS if p != "demo" and not p.endswith("-instruct"))
        raise ConfigError(
            f"{origin['data']}: --data needs a model size: --preset=SIZE with SIZE one of {sizes} (the paper's; "
            f"each also as SIZE-instruct), or --hidden-size and --num-layers (other keys from --preset=demo)"
        )


def _one_line(error: Mapping[str, Any], origin: dict[str, str], order: list[str]) -> ConfigError:
    """The ConfigError for the first error of the final validation, naming where the value(s) came from."""
    exc = error.get("ctx", {}).get("error")
    if isinstance(exc, Conflict):
        sources = [origin[k] for k in exc.keys if k in origin]
        source = max(sources, key=order.index) if sources else "defaults"
        return ConfigError(f"{source}: {exc}")
    name = str(error["loc"][0])
    return ConfigError(f"{origin.get(name, 'defaults')}: {field_message(name, error)}")


def toml_value(name: str, value: Any) -> str:
    """A field's value as TOML; None (TOML has no null) as the word the field reads back as None."""
    if value is None:
        value = none_word(name)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # repr round-trips floats exactly; 1e-05 and 0.0003 are both TOML
    return json.dumps(value, ensure_ascii=False)  # a TOML basic string: JSON's escapes are TOML's


def config_toml(config: TrainConfig) -> str:
    """Every field of ``config`` as a TOML file that ``tinystories-train FILE`` reads back to the same config
    (``--print-config``); each key under its docstring."""
    lines = ["# tinystories-train configuration (tinystories-train THIS_FILE trains with it)"]
    for name, info in TrainConfig.model_fields.items():
        lines += [f"# {line.strip()}" for line in (info.description or "").splitlines()]
        value = getattr(config, name)
        meaning = f"  # {none_word(name)}: {NONE_MEANS[name]}" if value is None else ""
        lines.append(f"{name} = {toml_value(name, value)}{meaning}")
    return "\n".join(lines) + "\n"
