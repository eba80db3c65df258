"""The central service's one typed config (``central.yaml``), loaded by ``common.config_loader``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from common.wire import check_prefix


class BrokerConfig(BaseModel):
    """The broker the devices publish to."""

    # hide_input_in_errors: an error would otherwise print the input, password included
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    host: str = Field("localhost", min_length=1, title="Broker host name or address")
    port: int = Field(1883, ge=1, le=65535, title="Broker port")
    prefix: str = Field("trapedge", title="Topic prefix: the service subscribes to <prefix>/+/<kind>")
    username: str | None = Field(None, title="User name")
    password: SecretStr | None = Field(None, title="Password (use ${file:...} for a secret file)")
    client_id: str = Field("trapedge-central", min_length=1, title="MQTT client id (a persistent session)")
    clean_session: bool = Field(False, title="Drop queued QoS-1 messages while the service is down")
    keepalive: int = Field(30, ge=5, le=65535, title="Keepalive interval in seconds")

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        return check_prefix(value)


class StoreConfig(BaseModel):
    """Where messages, images, decisions and review state live."""

    model_config = ConfigDict(extra="forbid")
    path: Path = Field(Path("/var/lib/trapedge/central.db"), title="SQLite database file")


class GalleryConfig(BaseModel):
    """Which vector search backs the matching."""

    model_config = ConfigDict(extra="forbid")
    backend: Literal["numpy", "pgvector"] = Field("numpy", title="Exact numpy search, or PostgreSQL + pgvector")
    dsn: SecretStr | None = Field(None, title="PostgreSQL connection string (pgvector backend)")
    table: str = Field("trapedge_gallery", pattern=r"^[a-z_][a-z0-9_]*$", title="pgvector table name")
    ef_search: int = Field(100, ge=10, le=1000, title="pgvector HNSW candidate list per search (recall vs speed)")


class MatchingConfig(BaseModel):
    """How candidates are proposed and how confident they are."""

    model_config = ConfigDict(extra="forbid")
    top_k: int = Field(5, ge=1, le=50, title="Candidate individuals proposed per anchor")
    min_pairs: int = Field(5, ge=2, title="Confirmed and rejected pairs each needed before calibrating")
    rerank: bool = Field(False, title="Re-rank candidates by local-feature (SIFT + RANSAC) inliers")
    rerank_depth: int = Field(10, ge=1, le=100, title="How many cosine candidates the re-ranking sees")


class ReviewLogin(BaseModel):
    """Who may use the review UI. Make the hash with ``python -m central.web --hash-password``."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    username: str = Field(..., min_length=1, title="Reviewer user name")
    password_hash_file: Path = Field(..., title="File holding the PBKDF2 hash of the reviewer's password")
    session_key_file: Path | None = Field(
        None, title="File of at least 32 random bytes that signs session cookies (unset: a new key per start)")
    session_hours: float = Field(12.0, gt=0, le=24 * 30, title="Hours a login lasts")
    secure_cookie: bool = Field(False, title="Mark the session cookie Secure (set when served over HTTPS)")


class ReviewConfig(BaseModel):
    """The review web UI; without ``login`` it serves only a page saying that login is not set up."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, title="Serve the review UI")
    host: str = Field("127.0.0.1", title="Address to listen on")
    port: int = Field(8080, ge=0, le=65535, title="Port (0: any free port)")
    login: ReviewLogin | None = Field(None, title="Reviewer credentials (required to use the UI)")


class CentralConfig(BaseModel):
    """``central.yaml``."""

    model_config = ConfigDict(extra="forbid")
    broker: BrokerConfig = Field(default_factory=BrokerConfig, title="MQTT broker")
    store: StoreConfig = Field(default_factory=StoreConfig, title="Database")
    gallery: GalleryConfig = Field(default_factory=GalleryConfig, title="Vector search")
    matching: MatchingConfig = Field(default_factory=MatchingConfig, title="Matching")
    review: ReviewConfig = Field(default_factory=ReviewConfig, title="Review UI")
