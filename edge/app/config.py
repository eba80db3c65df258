"""The appliance's one typed configuration, loaded once from YAML (``edge.yaml``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge.analysis.config import DetectionConfig, PreprocessConfig, PrivacyConfig
from edge.analysis.gate import MotionGateConfig
from edge.app.health import DiskConfig
from edge.capture.sources import SourceConfig
from edge.capture.video import VideoConfig
from edge.events.bursts import BurstConfig
from edge.events.rules import RulesConfig
from edge.events.suppression import SuppressionConfig
from edge.publish.mqtt import MqttConfig
from edge.runtime.config import BundleConfig
from edge.storage.recorder import AlertConfig
from edge.storage.store import StoreConfig


class EdgeConfig(BaseModel):
    """Everything one appliance needs."""

    model_config = ConfigDict(extra="forbid")
    device_id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", title="Unique device id (used in MQTT topics)")
    site: str | None = Field(None, title="Site name, for per-site alert thresholds")
    sources: list[SourceConfig] = Field(min_length=1, title="Frame sources")
    bundle: BundleConfig = Field(default_factory=BundleConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    gate: MotionGateConfig = Field(default_factory=MotionGateConfig)
    detection: DetectionConfig = Field(default_factory=DetectionConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    video: VideoConfig = Field(default_factory=VideoConfig, title="How video clips are sampled (a folder source "
                                                                  "may set its own)")
    bursts: BurstConfig = Field(default_factory=BurstConfig)
    rules: RulesConfig = Field(default_factory=RulesConfig)
    suppression: SuppressionConfig = Field(default_factory=SuppressionConfig,
                                           title="Repeated static false positives: places that stop raising events")
    alerts: AlertConfig = Field(default_factory=AlertConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    disk: DiskConfig = Field(default_factory=DiskConfig, title="Disk-full policy for the store's filesystem")
    mqtt: MqttConfig | None = Field(None, title="Broker; without it messages wait in the outbox")
    status_interval_s: float = Field(60, gt=0, title="Seconds between status messages")
    retention_interval_s: float = Field(3600, gt=0, title="Seconds between retention passes")
    idle_sleep_s: float = Field(0.5, gt=0, title="Sleep when no source has a frame")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _sources_sample_clips_as_configured(self) -> EdgeConfig:
        """A source that reads clips and sets no ``video`` of its own uses the top-level one."""
        for source in self.sources:
            if getattr(source, "video", False) is None:  # reads clips, has no settings of its own
                source.video = self.video  # type: ignore[attr-defined]
        return self


def command_defaults(folder: str = ".", **settings: Any) -> EdgeConfig:
    """The defaults for a command that is not a device (``detect`` without ``--config``, a bundle
    smoke check): device ``trapedge`` reading one folder, with ``settings`` on top."""
    return EdgeConfig.model_validate({"device_id": "trapedge",
                                      "sources": [{"type": "folder", "id": "images", "path": folder}], **settings})
