"""yacs configs of the preprocessing scripts: defaults file + ``--config FILE`` + ``--opts KEY VALUE``.

Relative paths are resolved where they were written, never against the working directory:
defaults against the script folder (the parent of ``config/``, as the original's paths assume),
a ``--config`` file's values against that file's folder, ``--opts`` values against the current
directory (they are typed on a command line). Derived keys (``DERIVED`` in the defaults file) are
recomputed from their base keys unless they were overridden themselves, so changing
``FF_num_frames`` also moves the folders derived from it. A ``--config`` file is read as YAML only:
yacs would execute a ``.py`` file, so any other suffix is refused.
"""
from __future__ import annotations

import difflib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from yacs.config import CfgNode

YAML_SUFFIXES = (".yaml", ".yml")

# ``DERIVED`` of a defaults file: key -> (base key, value from the merged config)
Derived = dict[str, tuple[str, Callable[[CfgNode], Any]]]


def under(base_key: str, suffix: str) -> tuple[str, Callable[[CfgNode], Any]]:
    """A ``DERIVED`` entry whose value is ``base_key``'s value followed by ``suffix``."""
    return base_key, lambda c: c[base_key] + suffix


def with_derived(node: CfgNode, derived: Derived) -> CfgNode:
    """The defaults node with every derived key set from its base keys (``load_config`` recomputes
    them after merging); returns ``node``."""
    for key, (_, fn) in derived.items():
        node[key] = fn(node)
    return node


def read_yaml_config(path: str | Path) -> CfgNode:
    """A ``--config`` file as a yacs node; ``ValueError`` for a non-YAML suffix, never executed."""
    path = Path(path)
    if path.suffix.lower() not in YAML_SUFFIXES:
        raise ValueError(f"--config {path}: only YAML files ({', '.join(YAML_SUFFIXES)}) are read; "
                         "Python config files are not executed, put the keys in a .yaml file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected 'KEY: value' lines, found a {type(data).__name__}")
    return CfgNode(data)


def import_file(path: str | Path, name: str = "preprocess_default_config") -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, str(path))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load config module {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve_path(value: str, base: Path) -> str:
    """Absolute, normalised ``value`` relative to ``base``; a trailing ``/`` is kept (naming rules
    use ``os.path.dirname`` of the configured string)."""
    if os.path.isabs(value):
        return value
    out = os.path.normpath(str(base / value))
    return out + "/" if value.endswith("/") else out


def _resolve(value, base: Path):
    if isinstance(value, str) and "/" in value:
        return resolve_path(value, base)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and "/" in v for v in value):
        return [resolve_path(v, base) for v in value]
    return value


def check_keys(cfg: CfgNode, keys, where: str, default_file: Path) -> None:
    """``KeyError`` naming every key of ``where`` (``--opts``, ``--config FILE``) the defaults
    (``default_file``) lack, each with its closest known key when one is near."""
    unknown = [k for k in keys if k not in cfg]
    if unknown:
        def hint(key: str) -> str:
            close = difflib.get_close_matches(key, list(cfg), n=1, cutoff=0.6)
            return f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
        raise KeyError(f"unknown config key(s) in {where}: {', '.join(hint(k) for k in unknown)}; "
                       f"the known keys are in {default_file}")


def _merge_opts(cfg: CfgNode, opts: list[str], origin: dict, cwd: Path, default_file: Path) -> None:
    if len(opts) % 2:
        raise ValueError(f"--opts needs KEY VALUE pairs, got {opts}")
    check_keys(cfg, opts[0::2], "--opts", default_file)
    rest = []
    for key, value in zip(opts[0::2], opts[1::2]):
        if value in ("None", "none", "all") and (cfg[key] is None or key.endswith("num_frames")):
            cfg[key] = None              # yacs refuses int -> None; frame counts accept "all frames"
        else:
            rest += [key, value]
        origin[key] = cwd
    cfg.merge_from_list(rest)


def load_config(default_file: str | Path, config_file: str | Path | None = None,
                opts: list[str] | None = None) -> CfgNode:
    """Defaults (module attribute ``cfg``), merged with ``config_file`` and ``opts``, paths resolved."""
    default_file = Path(default_file).resolve()
    module = import_file(default_file)
    cfg: CfgNode = module.cfg.clone()
    defaults = module.cfg.clone()
    derived: Derived = getattr(module, "DERIVED", {})
    base = default_file.parent.parent
    origin = {k: base for k in cfg}
    if config_file:
        config_file = Path(config_file).resolve()
        other = read_yaml_config(config_file)
        check_keys(cfg, other, f"--config {config_file}", default_file)
        cfg.merge_from_other_cfg(other)
        origin.update({k: config_file.parent for k in other})
    _merge_opts(cfg, list(opts or []), origin, Path.cwd(), default_file)
    for key, (base_key, fn) in derived.items():
        if origin[key] is base and cfg[key] == defaults[key]:
            cfg[key] = fn(cfg)
            origin[key] = origin[base_key]
    for key in cfg:
        cfg[key] = _resolve(cfg[key], origin[key])
    return cfg

