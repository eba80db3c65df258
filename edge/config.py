"""The appliance's one typed configuration, loaded once from YAML (``edge.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from edge.capture import folder, opencv, picamera2
from edge.events import BurstConfig
from edge.gate import MotionGateConfig
from edge.health import DiskConfig
from edge.mqtt import MqttConfig
from edge.pipeline import DetectionConfig, PreprocessConfig, PrivacyConfig
from edge.recorder import AlertConfig
from edge.rules import RulesConfig
from edge.store import StoreConfig

SourceConfig = Annotated[Union[folder.Config, opencv.Config, picamera2.Config], Field(discriminator="type")]


class BundleConfig(BaseModel):
    """Which model bundle runs, and how."""

    model_config = ConfigDict(extra="forbid")
    path: Path = Field(Path("/var/lib/trapedge/bundles/current"), title="Model bundle directory")
    precision: Literal["int8", "fp32"] = Field("int8", title="Model files to run")
    backend: Literal["onnxruntime", "tensorrt"] = Field("onnxruntime", title="Inference backend")
    threads: int = Field(0, ge=0, title="onnxruntime intra-op threads (0 = all cores)")


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
    bursts: BurstConfig = Field(default_factory=BurstConfig)
    rules: RulesConfig = Field(default_factory=RulesConfig)
    alerts: AlertConfig = Field(default_factory=AlertConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    disk: DiskConfig = Field(default_factory=DiskConfig, title="Disk-full policy for the store's filesystem")
    mqtt: MqttConfig | None = Field(None, title="Broker; without it messages wait in the outbox")
    status_interval_s: float = Field(60, gt=0, title="Seconds between status messages")
    retention_interval_s: float = Field(3600, gt=0, title="Seconds between retention passes")
    idle_sleep_s: float = Field(0.5, gt=0, title="Sleep when no source has a frame")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
