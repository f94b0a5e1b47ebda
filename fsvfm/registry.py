"""One model registry for every network the package builds (pre-training, classifiers, and the task models
that join later). A model module registers its factories with ``@register_model(family)``; callers build
by name with :func:`create_model`, whatever module defines the factory.

Families: ``pretrain`` (online network), ``classifier`` (downstream heads), ``fas`` (face anti-spoofing).
"""
from __future__ import annotations

import fnmatch
import importlib
from typing import Callable

import torch.nn as nn

from fsvfm.util.errors import UsageError

# Modules whose import registers factories; a new model module adds itself here.
MODEL_MODULES: tuple[str, ...] = ("fsvfm.models_fsfm", "fsvfm.models_vit", "fsvfm.models_fas")

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
_FAMILIES: dict[str, str] = {}


def register_model(family: str, aliases: tuple[str, ...] = ()) -> Callable[[Callable[..., nn.Module]],
                                                                          Callable[..., nn.Module]]:
    """Decorator: register ``fn`` under its own name (and ``aliases``) in ``family``; a second
    registration of a name fails."""
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        for name in (fn.__name__, *aliases):
            if name in _FACTORIES and _FACTORIES[name] is not fn:
                raise ValueError(f"model {name!r} is registered twice")
            _FACTORIES[name] = fn
            _FAMILIES[name] = family
        return fn
    return wrap


def _load_all() -> None:
    for module in MODEL_MODULES:
        importlib.import_module(module)


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Sorted registered names matching the glob ``pattern`` (and ``family`` when given)."""
    _load_all()
    return sorted(n for n in _FACTORIES
                  if fnmatch.fnmatch(n, pattern) and (family is None or _FAMILIES[n] == family))


def model_family(name: str) -> str:
    """The family of a registered model name; ``KeyError`` naming the choices when unknown."""
    _load_all()
    if name not in _FAMILIES:
        raise KeyError(f"unknown model {name!r}; choose from {list_models()}")
    return _FAMILIES[name]


def create_model(name: str, family: str | None = None, **kwargs) -> nn.Module:
    """Build a registered model; with ``family`` the name must belong to it (``UsageError``, a
    ``ValueError``, otherwise)."""
    _load_all()
    if name not in _FACTORIES or (family is not None and _FAMILIES[name] != family):
        raise UsageError(f"unknown {family or ''} model {name!r}; choose from {list_models(family=family)}"
                         .replace("unknown  model", "unknown model"))
    return _FACTORIES[name](**kwargs)
