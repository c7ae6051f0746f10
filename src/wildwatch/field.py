"""Where and when a photo was taken, and what that changes about the answer.

A photo's place changes which species it can show: a spotted cat in Kenya is a leopard, not an
Amur leopard nor a jaguar. The range table (resources/ranges.json) lists, for each class, the
countries where its species live in the wild and the status of the population there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from importlib import resources

from PIL import Image

GPS_IFD = 0x8825
EXIF_IFD = 0x8769
DATETIME_ORIGINAL = 0x9003
DATETIME = 0x0132
OFFSET_TIME_ORIGINAL = 0x9011  # "+03:00": the time zone of DateTimeOriginal (EXIF 2.31)
OFFSET_TIME = 0x9010


def taken_at(exif) -> str | None:
    """The capture time as ISO 8601: with its offset when the photo records one
    ("2024-03-05T06:41:09+03:00"), else the camera's local time without one."""
    if not exif:
        return None
    ifd = exif.get_ifd(EXIF_IFD)
    taken = ifd.get(DATETIME_ORIGINAL) or exif.get(DATETIME)
    if not taken:
        return None
    try:
        when = datetime.strptime(str(taken).strip("\x00 "), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    offset = str(ifd.get(OFFSET_TIME_ORIGINAL) or ifd.get(OFFSET_TIME) or "").strip("\x00 ")
    if offset:
        try:
            when = when.replace(tzinfo=datetime.strptime(offset, "%z").tzinfo)
        except ValueError:
            pass  # an unreadable offset: the local time stays without one
    return when.isoformat()


@dataclass(frozen=True)
class Place:
    """What the photo's metadata (or the user) says about where and when."""

    country: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    taken_at: str | None = None
    country_source: str | None = None  # "given" or "exif_gps"
    warning: str | None = None  # why the photo's GPS was not used (impossible position)


@lru_cache(maxsize=1)
def range_table() -> dict[str, dict]:
    raw = json.loads(resources.files("wildwatch").joinpath("resources/ranges.json").read_text())
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def possible_in(species: str, country: str) -> bool | None:
    """True/False when the range table knows the class; None when it does not."""
    table = range_table()
    if species not in table:
        return None
    return country.upper() in table[species]["countries"]


def local_status(species: str, country: str | None) -> dict | None:
    """The status of the population of ``species`` in ``country`` ({status, population})."""
    if not country:
        return None
    return range_table().get(species, {}).get("countries", {}).get(country.upper())


def _to_degrees(dms, ref) -> float:
    d, m, s = (float(x) for x in dms)
    value = d + m / 60 + s / 3600
    return -value if ref in ("S", "W") else value


def read_place(path) -> Place:
    """GPS position and capture time from a photo's EXIF (header only; missing tags give None).
    ``path`` may also be an open binary file."""
    try:
        with Image.open(path) as img:
            exif = img.getexif()
    except Exception:  # noqa: BLE001 - unreadable files are reported by the image loader, not here
        return Place()
    return place_from_exif(exif)


def place_from_exif(exif) -> Place:
    """The Place in an already-read EXIF block (``Image.getexif()``; None or empty: no place)."""
    gps = exif.get_ifd(GPS_IFD) if exif else {}
    lat = lon = None
    try:
        if 2 in gps and 4 in gps:
            lat = _to_degrees(gps[2], gps.get(1, "N"))
            lon = _to_degrees(gps[4], gps.get(3, "E"))
    except (TypeError, ValueError, ZeroDivisionError):
        lat = lon = None
    iso = taken_at(exif)
    warning = gps_problem(lat, lon) if lat is not None and lon is not None else None
    if warning:
        return Place(None, None, None, iso, None, warning)
    country = country_of(lat, lon) if lat is not None and lon is not None else None
    return Place(country, lat, lon, iso, "exif_gps" if country else None)


def gps_problem(lat: float, lon: float) -> str | None:
    """Why a GPS position cannot be where the photo was taken, or None: a latitude beyond ±90°, a
    longitude beyond ±180° (a broken or forged tag), or exactly 0,0 ("null island", what many
    cameras write when they have no fix)."""
    if not (-90 <= lat <= 90) or not (-180 <= lon <= 180):
        return f"impossible GPS position ({lat:.4f}, {lon:.4f}) ignored"
    if lat == 0 and lon == 0:
        return "GPS position 0,0 (no fix) ignored"
    return None


def country_of(lat: float, lon: float) -> str | None:
    """ISO country code of a position, offline (the ``reverse-geocode`` package ships its data)."""
    try:
        import reverse_geocode
    except ImportError:
        return None
    result = reverse_geocode.search([(lat, lon)])
    return result[0].get("country_code") if result else None
