"""Frame sources as plugins (``folder``, ``opencv``, ``picamera2``).

Every module in this package is a plugin when it defines ``KEY``, ``Config`` (a pydantic model whose
``type`` field is ``Literal[KEY]``), ``Source`` and ``UNAVAILABLE_REASON``. The registry and the
config union that edge.yaml's ``sources`` are validated against are derived from those modules; a
vendor import that fails disables only that plugin.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

from pydantic import BaseModel

from common.plugins import config_union, discover
from edge.capture.sources.base import FrameSource, IsDone, SourceUnavailable

__all__ = ["PLUGINS", "FrameSource", "IsDone", "SourceConfig", "SourceUnavailable", "available", "create_source"]

PLUGINS: dict[str, ModuleType] = discover(__name__, __path__)

if TYPE_CHECKING:
    SourceConfig = BaseModel
else:
    SourceConfig = config_union(PLUGINS)


def create_source(config: BaseModel, is_done: IsDone) -> FrameSource:
    """Open the source ``config`` describes; ``is_done(source_id, key)`` says what was recorded.

    Raises:
        SourceUnavailable: the source's vendor package does not import here.
    """
    module = PLUGINS[config.type]  # type: ignore[attr-defined]
    if module.UNAVAILABLE_REASON:
        raise SourceUnavailable(f"source {config.id!r} ({module.KEY}) unavailable: {module.UNAVAILABLE_REASON}")  # type: ignore[attr-defined]
    source: FrameSource = module.Source(config, is_done)
    return source


def available() -> dict[str, str]:
    """Each source type mapped to ``"ok"`` or why it is unavailable."""
    return {key: module.UNAVAILABLE_REASON or "ok" for key, module in PLUGINS.items()}
