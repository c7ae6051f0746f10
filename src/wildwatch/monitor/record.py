"""What the monitor records and sends, built from typed objects: a sighting from the track that
opened it and its frame, a sighting's alert, a case's alert."""

from __future__ import annotations

import base64
import io
import time

from PIL import Image

from wildwatch.data.splits import dhash64
from wildwatch.monitor.payloads import CaseAlert, SightingAlert
from wildwatch.monitor.sources import Frame, PostInfo, iso
from wildwatch.monitor.tracker import Track
from wildwatch.species import species_info
from wildwatch.store.cases import CaseUpdate
from wildwatch.store.events import Sighting


def jpeg_bytes(img: Image.Image, quality: int = 85, max_side: int = 1280) -> bytes:
    img = img.convert("RGB")
    if max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def sighting_of(t: Track, frame: Frame) -> Sighting:
    """The sighting a track opens: named by the answer of the sample that opened it, placed by that
    answer's position or else the photo's own EXIF position."""
    a, place = t.first.answer, t.first.place
    return Sighting(
        source=t.source, species=t.species, peak_confidence=round(t.peak, 5),
        wall_start=iso(t.first.wall_time), wall_end=iso(t.last_seen.wall_time),
        common_name=a.common_name if a else "", iucn_status=a.iucn_status if a else "",
        threatened=bool(a.threatened) if a else False, frame_index=t.best.frame_index,
        stream_start_s=t.first.stream_time_s, stream_end_s=t.last_seen.stream_time_s,
        country=(a.country if a else None) or (place.country if place else None),
        latitude=(a.latitude if a else None) or (place.latitude if place else None),
        longitude=(a.longitude if a else None) or (place.longitude if place else None),
        priority=frame.priority, keywords=",".join(frame.keywords), link=frame.link,
        frame_wall_time=t.last_seen.wall_time)


def sighting_alert(t: Track, s: Sighting, frame: Frame, instance: str) -> SightingAlert:
    return SightingAlert(
        sighting_id=t.sighting_id, species=t.species, common_name=s.common_name, iucn_status=s.iucn_status,
        threatened=s.threatened, confidence=s.peak_confidence, source=t.source, stream_time_s=s.stream_start_s,
        frame_index=s.frame_index, wall_time=s.wall_start, frame_wall_time=t.last_seen.wall_time,
        queued_at=time.time(), country=s.country, priority=frame.priority, keywords=list(frame.keywords),
        link=frame.link, text=frame.post.title if frame.post else "", instance=instance)


def alert_content(t: Track) -> str:
    """What a sighting's alert is about, independent of any database row: its source, species and
    item (a photo or post image: its index and perceptual hash; a video: the stream time of its
    first sample; a live stream: that wall time). Its idempotency key is derived from this."""
    first = t.first
    if first.single:
        seen = f"{first.frame_index}:{dhash64(t.best.image):016x}" if t.best.image is not None else str(first.frame_index)
    else:
        seen = f"{first.clock:.3f}"
    return f"sighting\0{t.source}\0{t.species}\0{seen}"


def case_alert(case: dict, update: CaseUpdate, post: PostInfo, source: str, link: str, review_url: str,
               instance: str, thumb: bytes | None) -> CaseAlert:
    """The alert of a case that reached review or grew; ``source`` and ``link`` are those of the
    post's first part."""
    info = species_info(case["species"]) if case["species"] else None
    return CaseAlert(
        case_id=case["id"], sighting_id=0, why=update.alert, score=case["score"], reason=case["reason"],
        species=case["species"] or "unknown", common_name=info.common_name if info else "",
        iucn_status=case["iucn_status"], threatened=bool(info and info.threatened), confidence=case["score"],
        cites_appendix=info.cites_appendix if info else "", source=source, link=link, text=post.title,
        links=sorted({p["link"] for p in case["posts"] if p["link"]}), accounts=case["accounts"],
        sites=case["sites"], terms=case["terms"], posts=len(case["posts"]),
        review_url=f"{review_url.rstrip('/')}/#case-{case['id']}", priority=post.priority,
        keywords=list(post.keywords), wall_time=iso(time.time()), queued_at=time.time(), instance=instance,
        snapshot_jpeg_base64=base64.b64encode(thumb).decode() if thumb else None)
