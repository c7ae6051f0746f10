"""What the REST API answers, as pydantic models: they make /openapi.json describe every response,
so a client generated from it (openapi-python-client, for one) types what it gets back."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Problem(BaseModel):
    """Any refusal: 400, 401, 404, 408, 413, 501, 503."""

    detail: str


class TopK(BaseModel):
    species: str
    probability: float


class PredictionOut(BaseModel):
    """One uploaded photo: the species and its status, or what the photo shows instead, or its error."""

    model_config = ConfigDict(extra="allow")

    source: str
    species: str | None = None
    confidence: float | None = None
    top_k: list[TopK] = Field(default_factory=list)
    common_name: str | None = None
    iucn_status: str | None = None
    threatened: bool | None = None
    unknown: bool | None = None
    unknown_score: float | None = None
    error: str | None = None
    country: str | None = None
    out_of_range: bool | None = None
    top_k_original: list[TopK] = Field(default_factory=list)
    population: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    taken_at: str | None = None
    looks_like: str | None = None
    looks_like_kind: str | None = None
    looks_like_text: str | None = Field(None, description="for a photo of none of the species, in words")
    note: str | None = None
    uncertain: bool | None = Field(None, description="not sure enough to name one species: candidates names two")
    candidates: list[str] = Field(default_factory=list, description="uncertain: the two species it is between")
    uncertain_text: str | None = Field(None, description="for an uncertain answer, in words")
    status_colour: str | None = None
    heatmap_png_base64: str | None = Field(None, description="with explain=true: the Grad-CAM overlay")


class ClassifyResponse(BaseModel):
    predictions: list[PredictionOut]
    notice: str | None = Field(None, description="what was left out, e.g. heatmaps on a server without PyTorch")


class SpeciesOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    key: str
    common_name: str
    scientific_names: list[str]
    iucn_status: str
    threatened: bool
    colour: str


class SpeciesResponse(BaseModel):
    species: list[SpeciesOut]


class Health(BaseModel):
    status: str
    version: str
    model: str | None = None
    backend: str
    classes: int
    api_key_required: bool
    events: bool
    explain: bool


class EventOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int | None = None
    source: str
    species: str
    peak_confidence: float
    wall_start: str
    wall_end: str
    snapshot_url: str
    status_colour: str


class EventsResponse(BaseModel):
    events: list[EventOut]


class CasePost(BaseModel):
    key: str
    source: str
    site: str
    account: str
    link: str
    text: str
    score: float
    reason: str
    seen_at: float


class CaseOut(BaseModel):
    """A media-watch case: posts that share a photo or a link, with their evidence and the analyst's mark."""

    id: int
    score: float
    reason: str
    species: str
    iucn_status: str
    terms: list[str]
    status: str
    status_at: float | None = None
    first_seen: float
    last_seen: float
    alerts: int
    accounts: list[str]
    sites: list[str]
    posts: list[CasePost]
    thumbnail_url: str
    rank: int | None = Field(None, description="place in the review queue (1 = review first)")


class CasesResponse(BaseModel):
    cases: list[CaseOut]


class CaseMark(BaseModel):
    status: Literal["new", "reviewed", "reported", "not_relevant"]


def problems(*codes: int) -> dict:
    """The ``responses=`` of a route: each refusal it may give, with its meaning."""
    meaning = {400: "a Host that is not served, or an unreadable request", 401: "missing or wrong API key",
               404: "not found", 408: "the request body took too long", 413: "over a limit (files, bytes, pixels)",
               501: "needs an optional part of the install", 503: "busy: try again after Retry-After seconds"}
    return {c: {"model": Problem, "description": meaning[c]} for c in codes}


def binary_uploads(spec: dict) -> dict:
    """Multipart file fields declared as binary strings: what generated clients send as files
    (FastAPI writes them as ``contentMediaType`` strings, which clients take for text)."""
    for schema in spec.get("components", {}).get("schemas", {}).values():
        for prop in schema.get("properties", {}).values():
            items = prop.get("items", prop)
            if items.get("type") == "string" and items.get("contentMediaType") == "application/octet-stream":
                items.pop("contentMediaType")
                items["format"] = "binary"
    return spec
