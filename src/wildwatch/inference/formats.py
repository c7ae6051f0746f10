"""Camtrap DP packages (from classify and from monitor events). MegaDetector batch output: ``megadetector``."""

from __future__ import annotations

import csv
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from wildwatch import __version__
from wildwatch.data.discover import IMAGE_MEDIA_TYPES
from wildwatch.errors import UsageError
from wildwatch.inference.prediction import Prediction
from wildwatch.species import species_info

CAMTRAP_DP_VERSION = "1.0.2"
CAMTRAP_DP_BASE = f"https://raw.githubusercontent.com/tdwg/camtrap-dp/{CAMTRAP_DP_VERSION}"
CAMTRAP_DP_PROFILE = f"{CAMTRAP_DP_BASE}/camtrap-dp-profile.json"


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


# the columns of the Camtrap DP 1.0.2 table schemas, in their order
DEPLOYMENT_FIELDS = ("deploymentID", "locationID", "locationName", "latitude", "longitude", "coordinateUncertainty",
                     "deploymentStart", "deploymentEnd", "setupBy", "cameraID", "cameraModel", "cameraDelay",
                     "cameraHeight", "cameraDepth", "cameraTilt", "cameraHeading", "detectionDistance",
                     "timestampIssues", "baitUse", "featureType", "habitat", "deploymentGroups", "deploymentTags",
                     "deploymentComments")
MEDIA_FIELDS = ("mediaID", "deploymentID", "captureMethod", "timestamp", "filePath", "filePublic", "fileName",
                "fileMediatype", "exifData", "favorite", "mediaComments")
OBSERVATION_FIELDS = ("observationID", "deploymentID", "mediaID", "eventID", "eventStart", "eventEnd",
                      "observationLevel", "observationType", "cameraSetupType", "scientificName", "count", "lifeStage",
                      "sex", "behavior", "individualID", "individualPositionRadius", "individualPositionAngle",
                      "individualSpeed", "bboxX", "bboxY", "bboxWidth", "bboxHeight", "classificationMethod",
                      "classifiedBy", "classificationTimestamp", "classificationProbability", "observationTags",
                      "observationComments")
LICENCE_NOT_SET = "not set: the package's owner chooses it before publishing"

MEDIA_TYPES = IMAGE_MEDIA_TYPES


def media_type(path: str) -> str:
    return MEDIA_TYPES.get(Path(path).suffix.lower(), "application/octet-stream")


def camtrap_time(value: str | datetime) -> str:
    """A timestamp as Camtrap DP's format wants it: seconds, with an offset (no fractions)."""
    t = datetime.fromisoformat(value) if isinstance(value, str) else value
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.replace(microsecond=0).isoformat()


def capture_time(p: Prediction) -> tuple[str, str]:
    """(timestamp, the issue with it or ""): EXIF time with its offset; EXIF time without one
    (written as UTC, flagged); or, with no EXIF time, the file's modification time (flagged)."""
    if p.taken_at:
        t = datetime.fromisoformat(p.taken_at)
        if t.tzinfo is not None:
            return camtrap_time(t), ""
        return camtrap_time(t), "EXIF time without a time zone, written as UTC"
    mtime = Path(p.source).stat().st_mtime if Path(p.source).exists() else 0
    return camtrap_time(datetime.fromtimestamp(mtime, timezone.utc)), "no capture time in EXIF: file modification time"


@dataclass
class Deployment:
    """A camera at one position: Camtrap DP needs its coordinates for every deployment."""

    id: str
    latitude: float
    longitude: float
    comment: str = ""
    times: list = field(default_factory=list)
    issues: bool = False


def _deployment_id(lat: float, lon: float) -> str:
    return "wildwatch-" + uuid.uuid5(uuid.NAMESPACE_URL, f"geo:{lat:.6f},{lon:.6f}").hex[:12]


def _deployments(preds: list[Prediction], location: tuple[float, float] | None) -> dict[int, Deployment]:
    """The deployment of each readable photo: one per GPS position (to 4 decimals, about 11 m);
    photos without GPS belong to the camera at ``location``. Without ``location``, photos without
    GPS cannot be placed, and Camtrap DP has no deployment without coordinates: a clear error."""
    by_position: dict[tuple[float, float], Deployment] = {}
    out: dict[int, Deployment] = {}
    unplaced = []
    for i, p in enumerate(preds):
        if p.error:
            continue
        if p.latitude is not None and p.longitude is not None:
            key, comment = (round(p.latitude, 4), round(p.longitude, 4)), "position from the photos' EXIF GPS"
        elif location is not None:
            key, comment = (round(location[0], 6), round(location[1], 6)), "position given with --location"
        else:
            unplaced.append(p.source)
            continue
        dep = by_position.setdefault(key, Deployment(_deployment_id(*key), key[0], key[1], comment))
        out[i] = dep
    if unplaced:
        raise UsageError(f"{len(unplaced)} photos have no GPS position (e.g. {unplaced[0]}), and a Camtrap DP "
                         "deployment needs the camera's coordinates: give --location LAT,LON")
    return out


def write_camtrap_dp(preds: Iterable[Prediction], folder: Path, model_name: str, root: Path,
                     location: tuple[float, float] | None = None, seqs=None, detector: str | None = None) -> Path:
    """A Camtrap DP 1.0.2 package: datapackage.json, deployments.csv, media.csv, observations.csv.

    Per readable photo, media-level observations: one per box (``bboxX``... and ``count`` 1; a
    whole-photo answer has no box and no count), or one ``blank`` observation when nothing was
    seen. With ``seqs`` (``camtrap.sequences``), each carries its event's ``eventID``, and each
    event gets one event-level observation (its species, ``count``: the most individuals in one
    photo) whose ``eventStart``/``eventEnd`` span its photos. ``classificationProbability`` is
    given only for a named species. ``media.filePath`` is relative to ``root`` (the folder
    classified, which the package description names). Capture times come from EXIF (with its
    offset); where that is missing or has no time zone, the deployment says ``timestampIssues``
    and the media record why. Unreadable photos are left out (they have no media record to
    describe) and listed in the package description."""
    from wildwatch.inference.camtrap import photo_detections

    preds = list(preds)
    folder, root = Path(folder), Path(root).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    deployments = _deployments(preds, location)
    now, by = _now(), f"wildwatch {__version__} ({model_name})"
    media, obs, failed, stamps = [], [], [], {}
    for i, p in enumerate(preds):
        if p.error:
            failed.append(f"{p.source}: {p.error}")
            continue
        dep = deployments[i]
        mid = uuid.uuid5(uuid.NAMESPACE_URL, str(Path(p.source).resolve())).hex[:16]
        ts, issue = capture_time(p)
        stamps[i] = (dep.id, ts, mid)
        dep.times.append(ts)
        dep.issues |= bool(issue)
        media.append({"mediaID": mid, "deploymentID": dep.id, "captureMethod": "activityDetection", "timestamp": ts,
                      "filePath": Path(os.path.relpath(Path(p.source).resolve(), root)).as_posix(),
                      "filePublic": "false", "fileName": Path(p.source).name, "fileMediatype": media_type(p.source),
                      "exifData": json.dumps({k: v for k, v in {"latitude": p.latitude, "longitude": p.longitude,
                                                                  "country": p.country}.items() if v is not None}),
                      "favorite": "", "mediaComments": issue})
        event = seqs.by_photo.get(i) if seqs is not None else None
        base = {"deploymentID": dep.id, "mediaID": mid, "eventID": event.id if event else "", "eventStart": ts,
                "eventEnd": ts, "observationLevel": "media", "classificationMethod": "machine", "classifiedBy": by,
                "classificationTimestamp": now}
        dets: list[dict | None] = [*photo_detections(p)] or [None]
        for k, d in enumerate(dets, 1):
            obs.append(base | {"observationID": f"{mid}-{k}"} | _media_observation(p, d, event, i))
    if seqs is not None:
        obs += _event_observations(seqs, stamps, by, now)
    description = (f"Species classifications by wildwatch ({model_name}"
                   + (f", boxes from {detector}" if detector else ", whole photos") + f") of the photos under {root} "
                   "(media.filePath is relative to it). "
                   + (f"{len(failed)} unreadable files left out: " + "; ".join(failed[:20]) if failed else ""))
    taxa = sorted({p.species for p in preds if p.named}
                  | {d["species"] for p in preds if not p.error for d in photo_detections(p) if d["species"]})
    return _write_package(folder, list({d.id: d for d in deployments.values()}.values()), media, obs, taxa,
                          description, ["media", "event"] if seqs is not None else ["media"])


def observation_type(label: str, looks_like_kind: str = "animal") -> str:
    """Camtrap DP's observationType of a wildwatch label: a species or an animal of another species is
    ``animal``, a person ``human``, a vehicle ``vehicle``, nothing seen ``blank``, and a box the
    classifier could not place (a scene, an object) ``unknown``."""
    if label == "empty":
        return "blank"
    if label in ("person", "vehicle"):
        return {"person": "human", "vehicle": "vehicle"}[label]
    if label == "unknown":
        return "animal" if looks_like_kind in ("animal", "") else "unknown"
    return "animal"


def _media_observation(p: Prediction, d: dict | None, event, i: int) -> dict:
    if d is None:
        return {"observationType": "blank", "observationTags": f"wildwatch:seen:nothing|looks_like:{p.looks_like}"
                if p.looks_like else "wildwatch:seen:nothing", "observationComments": p.describe()}
    info = species_info(d["species"]) if d["species"] else None
    kind = d["looks_like_kind"] if d["label"] == "unknown" else "animal"
    out = {"observationType": observation_type(d["label"], kind),
           "scientificName": info.taxon if info else "", "count": "" if d["whole_photo"] else 1,
           "classificationProbability": d["confidence"] if d["species"] else ""}
    if not d["whole_photo"]:
        x, y, w, h = (min(max(float(v), 0.0), 1.0) for v in d["bbox"])
        out |= {"bboxX": round(x, 4), "bboxY": round(y, 4), "bboxWidth": round(max(min(w, 1 - x), 1e-4), 4),
                "bboxHeight": round(max(min(h, 1 - y), 1e-4), 4)}
    tags = [f"wildwatch:label:{d['label']}"]
    if d["species"]:
        tags.append(f"iucn:{species_info(d['species']).iucn_status}")
    if d["conf"] is not None:
        tags.append(f"detector_conf:{d['conf']}")
    if d["looks_like"]:
        tags.append(f"looks_like:{d['looks_like']}")
    if d.get("candidates") and d["label"] == "uncertain":
        tags.append("wildwatch:between:" + ",".join(d["candidates"]))
    if d["whole_photo"]:
        tags.append("whole_photo")
    if event is not None and i in event.disagrees:
        tags.append(f"disagrees_with_event:{event.label}")
    out["observationTags"] = "|".join(tags)
    out["observationComments"] = p.note if d["species"] else (p.describe() if d["label"] == "uncertain" else "")
    return out


def _event_observations(seqs, stamps: dict, by: str, now: str) -> list[dict]:
    """One event-level observation per event: its species (or kind), count, and time span."""
    out = []
    for ev in seqs.events:
        members = [i for i in ev.members if i in stamps]
        if not members:
            continue
        times = sorted(stamps[i][1] for i in members)
        info = species_info(ev.label) if ev.label not in ("empty", "unknown", "uncertain", "person", "vehicle") else None
        tags = [f"wildwatch:event_label:{ev.label}", f"photos:{len(members)}"]
        tags += ["unsure"] if ev.unsure else []
        tags += ["time_from_file"] if ev.time_from_file else []
        tags += [f"disagreeing_photos:{len(ev.disagrees)}"] if ev.disagrees else []
        out.append({"observationID": f"{ev.id}-event", "deploymentID": stamps[members[0]][0], "mediaID": "",
                    "eventID": ev.id, "eventStart": times[0], "eventEnd": times[-1], "observationLevel": "event",
                    "observationType": observation_type(ev.label), "scientificName": info.taxon if info else "",
                    "count": ev.count if ev.count >= 1 and ev.label != "empty" else "",
                    "classificationMethod": "machine", "classifiedBy": by, "classificationTimestamp": now,
                    "classificationProbability": ev.confidence if info and ev.confidence is not None else "",
                    "observationTags": "|".join(tags)})
    return out


def _write_package(folder: Path, deployments: list[Deployment], media: list[dict], obs: list[dict],
                   taxa: list[str], description: str, level: str | list[str]) -> Path:
    now = _now()
    rows = []
    for d in deployments:
        times = sorted(d.times) or [now]
        rows.append({"deploymentID": d.id, "latitude": d.latitude, "longitude": d.longitude,
                     "deploymentStart": times[0], "deploymentEnd": times[-1],
                     "timestampIssues": "true" if d.issues else "false", "deploymentComments": d.comment})
    tables = {"deployments": (DEPLOYMENT_FIELDS, rows), "media": (MEDIA_FIELDS, media),
              "observations": (OBSERVATION_FIELDS, obs)}
    for name, (fields, table) in tables.items():
        with open(folder / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(fields), restval="")
            w.writeheader()
            w.writerows(table)
    starts = sorted(r["deploymentStart"] for r in rows) or [now]
    ends = sorted(r["deploymentEnd"] for r in rows) or [now]
    points = [[r["longitude"], r["latitude"]] for r in rows]
    package = {
        "profile": CAMTRAP_DP_PROFILE,
        "name": "wildwatch-classifications",
        "id": str(uuid.uuid4()),
        "created": now,
        "description": description,
        "contributors": [{"title": "wildwatch", "role": "contributor"}],
        "project": {"title": "wildwatch classifications", "samplingDesign": "opportunistic",
                    "captureMethod": ["activityDetection"], "individualAnimals": False,
                    "observationLevel": [level] if isinstance(level, str) else list(level)},
        "licenses": [{"title": LICENCE_NOT_SET, "path": "https://camtrap-dp.tdwg.org/metadata/#licenses",
                      "scope": scope} for scope in ("data", "media")],
        "spatial": ({"type": "Point", "coordinates": points[0]} if len(points) == 1
                    else {"type": "MultiPoint", "coordinates": points}),
        "temporal": {"start": starts[0][:10], "end": ends[-1][:10]},
        "taxonomic": [{"scientificName": species_info(c).taxon, "taxonRank": species_info(c).taxon_rank}
                      for c in taxa if species_info(c).taxon],
        "resources": [{"name": name, "path": f"{name}.csv", "profile": "tabular-data-resource", "format": "csv",
                       "mediatype": "text/csv", "encoding": "utf-8",
                       "schema": f"{CAMTRAP_DP_BASE}/{name}-table-schema.json"} for name in tables],
    }
    (folder / "datapackage.json").write_text(json.dumps(package, indent=2))
    return folder


def write_camtrap_dp_events(sightings, store, folder: Path, location: tuple[float, float] | None = None) -> Path:
    """Camtrap DP from monitor sightings: one event-level observation per sighting, and the
    sighting's snapshot (written into the package as snapshots/ID.jpg) as its media record.
    Sightings carry the position of their frame when it had GPS; the others need ``location``."""
    folder = Path(folder)
    (folder / "snapshots").mkdir(parents=True, exist_ok=True)
    placed = [Prediction(s.source, s.species, latitude=s.latitude, longitude=s.longitude) for s in sightings]
    deployments = _deployments(placed, location)
    media, obs, now = [], [], _now()
    for i, s in enumerate(sightings):
        dep, mid = deployments[i], f"sighting-{s.id}"
        start, end = camtrap_time(s.wall_start), camtrap_time(s.wall_end)
        dep.times += [start, end]
        jpeg = store.snapshot(s.id)
        if jpeg:
            path = f"snapshots/{int(s.id)}.jpg"
            (folder / path).write_bytes(jpeg)
            media.append({"mediaID": mid, "deploymentID": dep.id, "captureMethod": "activityDetection",
                          "timestamp": start, "filePath": path, "filePublic": "false", "fileName": Path(path).name,
                          "fileMediatype": "image/jpeg",
                          "exifData": json.dumps({"source": s.source, "frame_index": s.frame_index}),
                          "mediaComments": "best frame of the sighting"})
        info = species_info(s.species)
        obs.append({"observationID": f"{mid}-1", "deploymentID": dep.id, "eventID": mid, "eventStart": start,
                    "eventEnd": end, "observationLevel": "event", "observationType": "animal",
                    "scientificName": info.taxon, "classificationMethod": "machine",
                    "classifiedBy": f"wildwatch {__version__} monitor", "classificationTimestamp": now,
                    "classificationProbability": round(float(s.peak_confidence), 4),
                    "observationTags": f"wildwatch:species:{s.species}|iucn:{s.iucn_status}|source:{s.source}"})
    taxa = sorted({s.species for s in sightings})
    return _write_package(folder, list({d.id: d for d in deployments.values()}.values()), media, obs, taxa,
                          f"Sightings recorded by wildwatch monitor ({len(obs)} events).", "event")
