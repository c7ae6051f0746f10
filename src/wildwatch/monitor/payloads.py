"""What an alert says, typed: a sighting's alert and a media case's alert.

Both are stored as JSON in the outbox (with the alert's ``idempotency_key``) and read back into
these types for delivery; a webhook receives exactly ``to_json()``. Rows written by earlier
versions read back the same way (fields they lack take their defaults)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SpeciesNamed(BaseModel):
    """What both alerts say about the species: its class, names, IUCN status and the confidence."""

    model_config = ConfigDict(extra="ignore")

    species: str
    common_name: str = ""
    iucn_status: str = ""
    threatened: bool = False
    confidence: float = 0.0


class SightingAlert(SpeciesNamed):
    """A species seen by a camera, in a folder photo or in a post's photo."""

    sighting_id: int
    source: str = ""
    stream_time_s: float | None = None
    frame_index: int | None = None
    wall_time: str = ""
    frame_wall_time: float | None = None
    queued_at: float = 0.0
    country: str | None = None
    priority: int = 0
    keywords: list[str] = Field(default_factory=list)
    link: str = ""
    text: str = ""
    instance: str = ""
    idempotency_key: str = ""

    def to_json(self) -> dict:
        return self.model_dump()


class CaseAlert(SpeciesNamed):
    """A media-watch case that reached review, or grew (a new account or site)."""

    case_id: int
    sighting_id: int = 0
    why: str
    score: float
    reason: str
    cites_appendix: str = ""
    source: str = ""
    link: str = ""
    text: str = ""
    links: list[str] = Field(default_factory=list)
    accounts: list[str] = Field(default_factory=list)
    sites: list[str] = Field(default_factory=list)
    terms: list[str] = Field(default_factory=list)
    posts: int = 0
    review_url: str = ""
    priority: int = 0
    keywords: list[str] = Field(default_factory=list)
    wall_time: str = ""
    queued_at: float = 0.0
    instance: str = ""
    snapshot_jpeg_base64: str | None = None
    idempotency_key: str = ""

    def to_json(self) -> dict:
        return self.model_dump()


Alert = SightingAlert | CaseAlert


def alert_from_json(doc: dict) -> Alert:
    """An outbox row's payload as its type: a case's alert names its case."""
    return CaseAlert.model_validate(doc) if "case_id" in doc else SightingAlert.model_validate(doc)
