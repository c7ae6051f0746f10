"""The events store, `wildwatch events`, and the events API of `wildwatch serve`."""

import io
import json
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import camtrap_dp_errors, csv_rows, draw_shape
from fastapi.testclient import TestClient
from PIL import Image

from wildwatch.store.events import EventStore, Sighting

WILDWATCH = str(Path(sys.executable).parent / "wildwatch")


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    draw_shape("green_squares", random.Random(seed), 120).save(buf, format="JPEG")
    return buf.getvalue()


def make_events_db(path: Path) -> Path:
    store = EventStore(path)
    store.add(Sighting("cam1.mp4", "rhino", 0.91, "2026-05-01T05:10:00+00:00", "2026-05-01T05:11:30+00:00",
                       "Rhinoceros", "NT–CR", True, 1520, 50.6, 140.2), _jpeg(1))
    store.add(Sighting("rtsp://cam2", "lion", 0.84, "2026-05-02T21:00:00+00:00", "2026-05-02T21:02:00+00:00",
                       "Lion", "VU", True, 88, 2.9, 120.0, "KE", -1.29, 36.82), _jpeg(2))
    store.close()
    return path


def test_store_round_trip_and_wal(tmp_path):
    db = make_events_db(tmp_path / "events.db")
    store = EventStore.open_existing(db)
    rows = store.list()
    assert [r.species for r in rows] == ["rhino", "lion"] and rows[1].country == "KE" and rows[0].threatened
    assert [r.species for r in store.list(since="2026-05-02")] == ["lion"]
    assert [r.species for r in store.list(species="rhino")] == ["rhino"]
    assert Image.open(io.BytesIO(store.snapshot(rows[0].id))).format == "JPEG"
    assert store.snapshot(999) is None
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(FileNotFoundError, match="no events database"):
        EventStore.open_existing(tmp_path / "missing.db")


def test_events_command_formats(tmp_path):
    db = make_events_db(tmp_path / "events.db")
    out = subprocess.run([WILDWATCH, "events", "--db", str(db), "--format", "json", "--species", "lion"],
                         capture_output=True, text=True, check=True).stdout
    assert [e["species"] for e in json.loads(out)] == ["lion"]
    csv_out = subprocess.run([WILDWATCH, "events", "--db", str(db), "--since", "2026-05-01"],
                             capture_output=True, text=True, check=True).stdout
    assert csv_out.splitlines()[0].startswith("source,species") and len(csv_out.splitlines()) == 3
    dp = tmp_path / "dp"
    no_place = subprocess.run([WILDWATCH, "events", "--db", str(db), "--format", "camtrapdp", "--output", str(dp)],
                              capture_output=True, text=True, check=False)
    assert no_place.returncode == 2 and "--location" in no_place.stderr  # never a camera at 0,0
    subprocess.run([WILDWATCH, "events", "--db", str(db), "--format", "camtrapdp", "--output", str(dp),
                    "--location", "-1.2921,36.8219"], check=True, capture_output=True)
    pkg = json.loads((dp / "datapackage.json").read_text())
    assert camtrap_dp_errors(dp) == []
    deployments = csv_rows(dp / "deployments.csv")
    # the lion's frame had GPS: its own deployment; the rhino's camera is the one --location gives
    assert sorted((d["latitude"], d["longitude"]) for d in deployments) == [("-1.29", "36.82"), ("-1.2921", "36.8219")]
    assert sorted(p.name for p in (dp / "snapshots").iterdir()) == ["1.jpg", "2.jpg"]
    assert pkg["project"]["observationLevel"] == ["event"]


@pytest.fixture(scope="module")
def predictor():
    from wildwatch.inference import Predictor

    return Predictor.from_file(None, backend="torch")


def test_events_api_serves_snapshots_by_id_only(predictor, tmp_path):
    from wildwatch.service.app import create_app

    db = make_events_db(tmp_path / "events.db")
    with TestClient(create_app(predictor, events_db=db, api_key="k")) as client:
        h = {"X-API-Key": "k"}
        events = client.get("/v1/events", headers=h).json()["events"]
        assert [e["species"] for e in events] == ["rhino", "lion"]
        r = client.get(events[0]["snapshot_url"], headers=h)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert client.get(events[0]["snapshot_url"]).status_code == 401
        assert client.get("/v1/events/999/snapshot", headers=h).status_code == 404
        for probe in ("/v1/events/..%2F..%2Fetc%2Fpasswd/snapshot", "/v1/events/1.jpg/snapshot"):
            assert client.get(probe, headers=h).status_code in (404, 422)
        assert client.get("/health").json()["events"] is True
    with TestClient(create_app(predictor)) as client:
        r = client.get("/v1/events")
        assert r.status_code == 404 and "--events-db" in r.json()["detail"]


def test_an_events_listing_reads_no_snapshots(predictor, tmp_path):
    # issue 28 item 9: GET /v1/events?limit=1 loaded every snapshot of the database (581 MB for one request)
    import os
    import tracemalloc

    from wildwatch.service.app import create_app

    store = EventStore(tmp_path / "events.db")
    for i in range(40):  # 40 sightings with 1 MB snapshots each
        store.add(Sighting("cam.mp4", "rhino", 0.9, f"2026-05-01T05:{i:02d}:00+00:00", f"2026-05-01T05:{i:02d}:30+00:00",
                           "Rhinoceros", "NT–CR", True), os.urandom(1 << 20))
    store.close()
    with TestClient(create_app(predictor, events_db=tmp_path / "events.db")) as client:
        tracemalloc.start()
        events = client.get("/v1/events?limit=1").json()["events"]
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert [e["wall_start"] for e in events] == ["2026-05-01T05:39:00+00:00"]  # the newest
        assert peak < 4 << 20, f"{peak / 1e6:.0f} MB to list one sighting"
        tracemalloc.start()
        events = client.get("/v1/events?limit=3").json()["events"]
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert [e["wall_start"][14:16] for e in events] == ["37", "38", "39"] and peak < 4 << 20
