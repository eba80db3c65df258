"""The central service's one typed config (``central.yaml``), loaded by ``common.config_loader``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from central.dsn import dsn_problem
from central.fusion import NEW_BELOW, SHORTLIST
from common.wire import check_prefix

PGVECTOR_MAX_DIM = 2000  # pgvector's HNSW index refuses vectors of more dimensions
VECTOR_TYPE_MAX_DIM = 16000  # pgvector's vector type; numpy has no ceiling, but 64 kB a vector is plenty


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

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # the DSN holds a password
    backend: Literal["numpy", "pgvector"] = Field("numpy", title="Exact numpy search, or PostgreSQL + pgvector")
    dsn: SecretStr | None = Field(None, title="PostgreSQL connection string (pgvector backend)")
    table: str = Field("trapedge_gallery", pattern=r"^[a-z_][a-z0-9_]*$", title="pgvector table name")
    ef_search: int = Field(100, ge=10, le=1000, title="pgvector HNSW candidate list per search (recall vs speed)")

    @field_validator("dsn")
    @classmethod
    def _dsn_parses(cls, value: SecretStr | None) -> SecretStr | None:
        problem = None if value is None else dsn_problem(value.get_secret_value())
        if problem is not None:
            raise ValueError(problem)  # masked: libpq echoes the string it cannot parse
        return value

    @model_validator(mode="after")
    def _pgvector_has_a_dsn(self) -> GalleryConfig:
        if self.backend == "pgvector" and self.dsn is None:
            raise ValueError("the pgvector backend needs gallery.dsn: postgresql://user:password@host:5432/dbname")
        return self


class MatchingConfig(BaseModel):
    """How candidates are proposed and how likely each is (``central.fusion``)."""

    model_config = ConfigDict(extra="forbid")
    top_k: int = Field(5, ge=1, le=50, title="Candidate individuals proposed per anchor")
    min_pairs: int = Field(5, ge=2, title="Confirmed and rejected pairs each needed before refitting the prior")
    rerank: bool = Field(True, title="Match local features (RootSIFT + RANSAC) of the shortlist and fuse them "
                                     "with the cosine (needs crops)")
    shortlist: int = Field(SHORTLIST, ge=1, le=2000, title="Nearest gallery images (by cosine) matched locally per anchor")
    time_budget_s: float = Field(1.0, gt=0, le=60, title="Seconds of local matching per anchor; the images left "
                                                         "are scored by cosine alone and the proposal says so")
    new_individual_below: float = Field(NEW_BELOW, ge=0, le=1, title="Propose 'new individual' when no candidate's "
                                                               "P(same) reaches this")
    separate_sides: bool = Field(True, title="Never compare images of two different known flanks (left / right)")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        if isinstance(data, dict) and "rerank_depth" in data:
            raise ValueError(f"matching.rerank_depth was replaced by matching.shortlist (images, default {SHORTLIST})")
        return data


class ReviewLogin(BaseModel):
    """Who may use the review UI. Make the hash with ``python -m central.web --hash-password``."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)
    username: str = Field(..., min_length=1, title="Reviewer user name")
    password_hash_file: Path = Field(..., title="File holding the PBKDF2 hash of the reviewer's password")
    session_key_file: Path | None = Field(
        None, title="File of at least 32 random bytes that signs session cookies (unset: a new key per start)")
    session_hours: float = Field(12.0, gt=0, le=24 * 30, title="Hours a login lasts")
    secure_cookie: bool = Field(False, title="Mark the session cookie Secure (set when served over HTTPS)")
    revoked_sessions_file: Path | None = Field(
        None, title="File that keeps logged-out sessions refused across restarts (unset: beside the store database)")
    # limits against password guessing and login floods (answered 429 / 503 with Retry-After)
    attempts_per_minute_per_address: int = Field(10, ge=1, le=10_000, title="Login attempts per minute from one address")
    attempts_per_minute_per_user: int = Field(20, ge=1, le=10_000, title="Login attempts per minute for one user name")
    password_check_threads: int = Field(2, ge=1, le=16, title="Threads that check passwords (PBKDF2) off the event loop")
    password_check_queue: int = Field(8, ge=0, le=1000, title="Password checks that may wait for a thread (more: 503)")


class ReviewConfig(BaseModel):
    """The review web UI; without ``login`` it serves only a page saying that login is not set up."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, title="Serve the review UI")
    host: str = Field("127.0.0.1", title="Address to listen on")
    port: int = Field(8080, ge=0, le=65535, title="Port (0: any free port)")
    login: ReviewLogin | None = Field(None, title="Reviewer credentials (required to use the UI)")
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=64 * 1024 * 1024,
                                title="Largest request body in bytes (larger: 413, refused before it is read)")


class PayloadLimits(BaseModel):
    """The largest payload of each message kind, in bytes; a larger one is rejected before it is parsed."""

    model_config = ConfigDict(extra="forbid")
    status: int = Field(16 * 1024, ge=1024, title="Largest status payload (a few health figures)")
    alert: int = Field(256 * 1024, ge=1024, title="Largest alert payload (its thumbnail included)")
    event: int = Field(64 * 1024, ge=1024, title="Largest event payload")
    embedding: int = Field(512 * 1024, ge=1024, title="Largest embedding payload (a 2048-d vector and a 256 KiB crop fit)")


class IngestConfig(BaseModel):
    """What central accepts from devices: sizes, nesting, vector dimensions, crops and embedding models."""

    model_config = ConfigDict(extra="forbid")
    max_bytes: PayloadLimits = Field(default_factory=PayloadLimits, title="Largest payload of each kind")
    max_json_depth: int = Field(32, ge=4, le=200, title="Deepest nesting of arrays and objects in a payload")
    max_vector_dim: int = Field(
        2048, ge=1, le=VECTOR_TYPE_MAX_DIM,
        title=f"Largest embedding dimension accepted (with the pgvector backend at most {PGVECTOR_MAX_DIM}, "
              "the HNSW index's ceiling; left unset there, it is that ceiling)")
    max_crop_pixels: int = Field(2_000_000, ge=64 * 64, le=50_000_000,
                                 title="Largest embedding crop, width x height (devices send at most 1024 px a side)")
    max_models_per_device: int = Field(
        8, ge=1, title="Embedding models (name@version and dimension) one device may send, over its lifetime")
    max_models: int = Field(64, ge=1, title="Embedding models (name@version and dimension) stored in all")
    models: dict[str, int] = Field(
        default_factory=dict,
        title="The embedding models accepted, name@version: dimension; set, nothing else is accepted and the two "
              "limits above do not apply; empty: any model, within them")
    compact_bundles: list[Path] = Field(
        default_factory=list, max_length=64,
        title="Bundle directories whose compact records (<prefix>/<device>/c/<kind>) are read; a record of any other "
              "bundle is rejected")

    @field_validator("models")
    @classmethod
    def _dimensions(cls, value: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        limit = info.data.get("max_vector_dim", VECTOR_TYPE_MAX_DIM)
        bad = {name: dim for name, dim in value.items() if not 1 <= dim <= limit or "@" not in name}
        if bad:
            raise ValueError(f"each entry must be name@version: dimension (1 to max_vector_dim {limit}), got {bad}")
        return value


class DeploymentSite(BaseModel):
    """Where one device stands (Camtrap DP requires a location for every deployment)."""

    model_config = ConfigDict(extra="forbid")
    latitude: float = Field(..., ge=-90, le=90, title="Latitude in decimal degrees (WGS84)")
    longitude: float = Field(..., ge=-180, le=180, title="Longitude in decimal degrees (WGS84)")
    location_name: str | None = Field(None, title="Name of the place")
    coordinate_uncertainty: int | None = Field(None, ge=1, title="Metres around the point that hold the camera")


class ExportsConfig(BaseModel):
    """What ``trapedge central export`` adds to the review's result for the Camtrap DP package.

    Example::

        exports:
          project_title: Lynx survey 2026
          contributors: [Jane Doe]
          scientific_names: {bobcat: Lynx rufus, leopard: Panthera pardus}
          deployments:
            trap-01: {latitude: 44.05, longitude: -121.31, location_name: North ridge}
    """

    model_config = ConfigDict(extra="forbid")
    project_title: str = Field("trapedge camera traps", min_length=1, title="Camtrap DP project title")
    contributors: list[str] = Field(["trapedge central"], min_length=1, title="People or organisations credited")
    sampling_design: Literal["simpleRandom", "systematicRandom", "clusteredRandom", "experimental", "targeted",
                             "opportunistic"] = Field("opportunistic", title="Camtrap DP sampling design")
    capture_method: Literal["activityDetection", "timeLapse"] = Field(
        "activityDetection", title="How the cameras took the pictures")
    scientific_names: dict[str, str] = Field(
        default_factory=dict, title="Label: scientific name; a label left out is exported unclassified")
    deployments: dict[str, DeploymentSite] = Field(
        default_factory=dict, title="Device id: its location (required for every device exported)")


class CentralConfig(BaseModel):
    """``central.yaml``."""

    model_config = ConfigDict(extra="forbid")
    broker: BrokerConfig = Field(default_factory=BrokerConfig, title="MQTT broker")
    store: StoreConfig = Field(default_factory=StoreConfig, title="Database")
    gallery: GalleryConfig = Field(default_factory=GalleryConfig, title="Vector search")
    matching: MatchingConfig = Field(default_factory=MatchingConfig, title="Matching")
    review: ReviewConfig = Field(default_factory=ReviewConfig, title="Review UI")
    ingest: IngestConfig = Field(default_factory=IngestConfig, validate_default=True, title="Limits on what devices send")
    exports: ExportsConfig = Field(default_factory=ExportsConfig, title="Exports (Camtrap DP metadata)")

    @field_validator("ingest")
    @classmethod
    def _dimensions_fit_the_gallery(cls, ingest: IngestConfig, info: ValidationInfo) -> IngestConfig:
        gallery = info.data.get("gallery")
        if gallery is None or gallery.backend != "pgvector":
            return ingest
        explicit = "max_vector_dim" in ingest.model_fields_set
        too_wide = {"max_vector_dim": ingest.max_vector_dim} if explicit and ingest.max_vector_dim > PGVECTOR_MAX_DIM else {}
        too_wide |= {name: dim for name, dim in ingest.models.items() if dim > PGVECTOR_MAX_DIM}
        if too_wide:
            raise ValueError(f"pgvector's HNSW index takes at most {PGVECTOR_MAX_DIM} dimensions: lower {too_wide} "
                             "or use the numpy gallery")
        return ingest.model_copy(update={"max_vector_dim": min(ingest.max_vector_dim, PGVECTOR_MAX_DIM)})
