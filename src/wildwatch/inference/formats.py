"""Camtrap DP packages (from classify and from monitor events). MegaDetector batch output: ``megadetector``."""

from __future__ import annotations

import csv
import json
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from wildwatch import __version__
from wildwatch.inference.predictor import Prediction
from wildwatch.species import species_info

CAMTRAP_DP_PROFILE = "https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0/camtrap-dp-profile.json"


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


MEDIA_FIELDS = [
    ("mediaID", "string"), ("deploymentID", "string"), ("captureMethod", "string"), ("timestamp", "datetime"),
    ("filePath", "string"), ("filePublic", "boolean"), ("fileName", "string"), ("fileMediatype", "string"),
    ("exifData", "string"), ("favorite", "boolean"), ("mediaComments", "string"),
]
OBSERVATION_FIELDS = [
    ("observationID", "string"), ("deploymentID", "string"), ("mediaID", "string"), ("eventID", "string"),
    ("eventStart", "datetime"), ("eventEnd", "datetime"), ("observationLevel", "string"),
    ("observationType", "string"), ("cameraSetupType", "string"), ("scientificName", "string"),
    ("count", "integer"), ("lifeStage", "string"), ("sex", "string"), ("behavior", "string"),
    ("individualID", "string"), ("bboxX", "number"), ("bboxY", "number"), ("bboxWidth", "number"),
    ("bboxHeight", "number"), ("classificationMethod", "string"), ("classifiedBy", "string"),
    ("classificationTimestamp", "datetime"), ("classificationProbability", "number"),
    ("observationTags", "string"), ("observationComments", "string"),
]
DEPLOYMENT_FIELDS = [
    ("deploymentID", "string"), ("locationID", "string"), ("latitude", "number"), ("longitude", "number"),
    ("deploymentStart", "datetime"), ("deploymentEnd", "datetime"), ("deploymentComments", "string"),
]


MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".jpe": "image/jpeg", ".png": "image/png",
               ".gif": "image/gif", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff",
               ".webp": "image/webp", ".heic": "image/heic", ".heif": "image/heif", ".ppm": "image/x-portable-pixmap",
               ".pgm": "image/x-portable-graymap"}


def media_type(path: str) -> str:
    return MEDIA_TYPES.get(Path(path).suffix.lower(), "application/octet-stream")


def _timestamp(p: Prediction) -> str:
    if p.taken_at:
        return datetime.fromisoformat(p.taken_at).replace(tzinfo=timezone.utc).isoformat()
    mtime = Path(p.source).stat().st_mtime if Path(p.source).exists() else 0
    return datetime.fromtimestamp(mtime, timezone.utc).replace(microsecond=0).isoformat()


def write_camtrap_dp(preds: Iterable[Prediction], folder: Path, model_name: str, deployment: str | None = None) -> Path:
    """Write a Camtrap DP package: deployments.csv, media.csv, observations.csv, datapackage.json.

    One media-level observation per readable image. Capture times come from EXIF (else the file's
    modification time, said so in mediaComments); unreadable images are left out (they have no
    media record to describe) and listed in the package description.
    """
    preds = list(preds)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    deployment = deployment or f"wildwatch-{uuid.uuid4().hex[:8]}"
    now = _now()
    media, obs, failed = [], [], []
    for p in preds:
        if p.error:
            failed.append(f"{p.source}: {p.error}")
            continue
        mid = uuid.uuid5(uuid.NAMESPACE_URL, str(Path(p.source).resolve())).hex[:16]
        ts = _timestamp(p)
        media.append({"mediaID": mid, "deploymentID": deployment, "captureMethod": "activityDetection",
                      "timestamp": ts, "filePath": str(p.source), "filePublic": "false", "fileName": Path(p.source).name,
                      "fileMediatype": media_type(p.source),
                      "exifData": json.dumps({k: v for k, v in {"latitude": p.latitude, "longitude": p.longitude,
                                                                  "country": p.country}.items() if v is not None}),
                      "favorite": "false", "mediaComments": "" if p.taken_at else "timestamp from file modification time"})
        info = species_info(p.species)
        obs.append({"observationID": f"{mid}-1", "deploymentID": deployment, "mediaID": mid, "eventID": "",
                    "eventStart": ts, "eventEnd": ts, "observationLevel": "media",
                    "observationType": "unknown" if p.unknown else "animal", "cameraSetupType": "",
                    "scientificName": "" if p.unknown else info.taxon, "count": "", "lifeStage": "", "sex": "",
                    "behavior": "", "individualID": "", "bboxX": "", "bboxY": "", "bboxWidth": "", "bboxHeight": "",
                    "classificationMethod": "machine", "classifiedBy": f"wildwatch {__version__} ({model_name})",
                    "classificationTimestamp": now, "classificationProbability": round(float(p.confidence), 4),
                    "observationTags": f"wildwatch:species:{p.species}|iucn:{p.iucn_status}"
                                       + ("|out_of_range" if p.out_of_range else "")
                                       + (f"|looks_like:{p.looks_like}" if p.looks_like else ""),
                    "observationComments": p.describe() if p.unknown else p.note})
    located = [p for p in preds if p.latitude is not None]
    where = (located[0].latitude, located[0].longitude) if located else None
    taxa = sorted({p.species for p in preds if not p.error and not p.unknown})
    description = (f"Whole-image species classifications by wildwatch ({model_name}). "
                   + (f"{len(failed)} unreadable files left out: " + "; ".join(failed[:20]) if failed else ""))
    return _write_package(folder, deployment, media, obs, where, taxa, description, "media")


def _write_package(folder: Path, deployment: str, media: list[dict], obs: list[dict], where, taxa: list[str],
                   description: str, level: str) -> Path:
    now = _now()
    times = sorted(m["timestamp"] for m in media) or [now]
    deployments = [{"deploymentID": deployment, "locationID": "", "latitude": where[0] if where else 0,
                    "longitude": where[1] if where else 0, "deploymentStart": times[0],
                    "deploymentEnd": times[-1],
                    "deploymentComments": "" if where else "location unknown: no GPS in the photos (0, 0 written)"}]
    tables = {"deployments": (DEPLOYMENT_FIELDS, deployments), "media": (MEDIA_FIELDS, media),
              "observations": (OBSERVATION_FIELDS, obs)}
    for name, (fields, rows) in tables.items():
        with open(folder / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=[n for n, _ in fields])
            w.writeheader()
            w.writerows(rows)
    package = {
        "profile": CAMTRAP_DP_PROFILE,
        "name": "wildwatch-classifications",
        "created": now,
        "description": description,
        "contributors": [{"title": "wildwatch", "role": "contributor"}],
        "project": {"title": "wildwatch classifications", "samplingDesign": "opportunistic",
                    "captureMethod": ["activityDetection"], "individualAnimals": False, "observationLevel": [level]},
        "licenses": [{"name": "CC-BY-4.0", "scope": "data"}],
        "spatial": {"type": "Point", "coordinates": [deployments[0]["longitude"], deployments[0]["latitude"]]},
        "temporal": {"start": times[0][:10], "end": times[-1][:10]},
        "taxonomic": [{"scientificName": species_info(c).taxon, "taxonRank": species_info(c).taxon_rank} for c in taxa],
        "resources": [{"name": name, "path": f"{name}.csv", "profile": "tabular-data-resource", "format": "csv",
                       "mediatype": "text/csv", "encoding": "utf-8",
                       "schema": {"fields": [{"name": n, "type": t} for n, t in fields]}}
                      for name, (fields, _) in tables.items()],
    }
    (folder / "datapackage.json").write_text(json.dumps(package, indent=2))
    return folder


def write_camtrap_dp_events(sightings, store, folder: Path, deployment: str | None = None) -> Path:
    """Camtrap DP from monitor sightings: one event-level observation per sighting, whose media
    record is the sighting's snapshot (written into the package as snapshots/ID.jpg)."""
    folder = Path(folder)
    (folder / "snapshots").mkdir(parents=True, exist_ok=True)
    deployment = deployment or f"wildwatch-monitor-{uuid.uuid4().hex[:8]}"
    media, obs = [], []
    for s in sightings:
        mid = f"sighting-{s.id}"
        jpeg = store.snapshot(s.id)
        path = ""
        if jpeg:
            path = f"snapshots/{int(s.id)}.jpg"
            (folder / path).write_bytes(jpeg)
        media.append({"mediaID": mid, "deploymentID": deployment, "captureMethod": "activityDetection",
                      "timestamp": s.wall_start, "filePath": path or s.source, "filePublic": "false",
                      "fileName": Path(path).name if path else "", "fileMediatype": "image/jpeg",
                      "exifData": json.dumps({"source": s.source, "frame_index": s.frame_index}), "favorite": "false",
                      "mediaComments": "best frame of the sighting"})
        info = species_info(s.species)
        obs.append({"observationID": f"{mid}-1", "deploymentID": deployment, "mediaID": "", "eventID": mid,
                    "eventStart": s.wall_start, "eventEnd": s.wall_end, "observationLevel": "event",
                    "observationType": "animal", "cameraSetupType": "", "scientificName": info.taxon, "count": "",
                    "lifeStage": "", "sex": "", "behavior": "", "individualID": "", "bboxX": "", "bboxY": "",
                    "bboxWidth": "", "bboxHeight": "", "classificationMethod": "machine",
                    "classifiedBy": f"wildwatch {__version__} monitor", "classificationTimestamp": _now(),
                    "classificationProbability": round(float(s.peak_confidence), 4),
                    "observationTags": f"wildwatch:species:{s.species}|iucn:{s.iucn_status}|source:{s.source}",
                    "observationComments": ""})
    located = [s for s in sightings if s.latitude is not None]
    where = (located[0].latitude, located[0].longitude) if located else None
    taxa = sorted({s.species for s in sightings})
    return _write_package(folder, deployment, media, obs, where, taxa,
                          f"Sightings recorded by wildwatch monitor ({len(obs)} events).", "event")
