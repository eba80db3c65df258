"""Plugin packages: every module of a package that defines ``KEY`` is a plugin, found by importing it.

Each plugin's ``Config`` is a pydantic model whose ``type`` field is ``Literal[KEY]``; the union of
those models, discriminated by ``type``, is what a config file's section is validated against
(Frigate derives its detector types the same way).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from types import ModuleType
from typing import Annotated, Any, Union

from pydantic import Field


def discover(package: str, path: Iterable[str]) -> dict[str, ModuleType]:
    """KEY -> module of each plugin module in ``package`` (its ``__name__`` and ``__path__``)."""
    plugins = {}
    for info in pkgutil.iter_modules(list(path)):
        module = importlib.import_module(f"{package}.{info.name}")
        if hasattr(module, "KEY"):
            plugins[module.KEY] = module
    return plugins


def config_union(plugins: dict[str, ModuleType]) -> Any:
    """The plugins' ``Config`` models as one union discriminated by ``type``."""
    return Annotated[Union[tuple(m.Config for m in plugins.values())], Field(discriminator="type")]  # noqa: UP007
