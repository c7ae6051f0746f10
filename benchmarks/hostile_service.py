"""Peak memory of `wildwatch serve` under the largest uploads its limits allow, and alert latency
on a healthy sink while another sink hangs.

    python benchmarks/hostile_service.py [--out runs/hostile] [--seconds 60] [--only memory,modes,load,events,alerts]

1. Server memory: a fresh `wildwatch serve` process per case, its peak resident memory (VmHWM)
   read from /proc after the case:
   - idle (started, one small photo classified);
   - one request at the limits: decodable PNGs of 39.9 Mpx each, as many as the per-request pixel
     budget allows (4), plus small photos up to 16 files;
   - three such requests at once;
   - the request that once took it to 2.7 GB (16 PNGs of 39.9 Mpx), now refused: its answer code.
   Goals: under 1 GB for one request, under 1.5 GB for three at once.
2. Pixel modes: one request with one image of 39.9 Mpx in each mode (RGBA WebP, F and I TIFF,
   16-bit PNG, RGB, P, LA and 1-bit PNG, CMYK TIFF, RGB JPEG), a fresh server each: peak memory.
   Goal: under 1 GB for every mode.
3. Load: 8 clients that each send requests at the limits (4 PNGs of 39.9 Mpx, or one RGBA WebP
   of 39.9 Mpx) for ``--seconds``, while another client asks ``/health`` every 50 ms: p50/p99 of
   classify and /health latency, answer codes, peak memory. Goal: /health p95 under 200 ms.
4. Events listing: ``GET /v1/events?limit=1`` (and four at once) on a database of 400 sightings
   with 1 MB snapshots (400 MB): peak memory of the server.
5. Alert latency: a monitor with a console sink and a webhook whose receiver never answers in
   time; 20 photos. Latency = when the console printed the alert − when the sighting and its
   alerts were written. Goal: under 2 s.

Writes results.json and prints the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image

WILDWATCH = str(Path(sys.executable).parent / "wildwatch")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def start_server(*args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([WILDWATCH, "serve", "--port", str(port), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if post(port, [("a.jpg", small_photo())])[0] == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def get_health(port: int) -> float:
    """Seconds until /health answers."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=600) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        while s.recv(1 << 16):
            pass
    return time.perf_counter() - t0


def post(port: int, files: list[tuple[str, bytes]]) -> tuple[int, bytes]:
    boundary = "bench0boundary"
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{n}\"\r\n"
                    "Content-Type: application/octet-stream\r\n\r\n".encode() + d + b"\r\n" for n, d in files)
    body += f"--{boundary}--\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=600) as s:
        s.sendall(f"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\nConnection: close\r\n\r\n".encode() + body)
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def small_photo(size=(640, 480)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 110, 90)).save(buf, format="JPEG")
    return buf.getvalue()


def big_png() -> bytes:
    """39.9 Mpx that compress to a small file: the hostile upload of the issue."""
    buf = io.BytesIO()
    Image.new("RGB", (6300, 6330), (90, 140, 70)).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


MODES = {  # name: (Pillow mode, format, save options)
    "RGBA WebP": ("RGBA", "WEBP", {"lossless": True, "quality": 0, "method": 0}),
    "F TIFF": ("F", "TIFF", {"compression": "tiff_deflate"}),
    "I TIFF": ("I", "TIFF", {"compression": "tiff_deflate"}),
    "I;16 PNG": ("I;16", "PNG", {"compress_level": 1}),
    "RGB PNG": ("RGB", "PNG", {"compress_level": 1}),
    "P PNG": ("P", "PNG", {"compress_level": 1}),
    "LA PNG": ("LA", "PNG", {"compress_level": 1}),
    "1 PNG": ("1", "PNG", {"compress_level": 1}),
    "CMYK TIFF": ("CMYK", "TIFF", {"compression": "tiff_deflate"}),
    "RGB JPEG": ("RGB", "JPEG", {"quality": 80}),
}


def mode_image(name: str, size=(6300, 6330)) -> bytes:
    """39.9 Mpx in one of MODES, small as a file (a plain colour): decoding is what costs."""
    mode, fmt, options = MODES[name]
    if mode == "P":
        img = Image.new("RGB", size, (90, 140, 70)).quantize(8)
    elif mode in ("F", "I", "I;16"):
        img = Image.new(mode, size, 3000)
    else:
        img = Image.new(mode, size, {"RGBA": (90, 140, 70, 128), "LA": (90, 128), "1": 1, "CMYK": (10, 20, 30, 40),
                                     "RGB": (90, 140, 70)}[mode])
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def mode_cases() -> dict:
    out = {}
    for name in MODES:
        data = mode_image(name)
        proc, port = start_server()
        t0 = time.perf_counter()
        status, _ = post(port, [(f"big.{MODES[name][1].lower()}", data)])
        out[name] = {"status": status, "bytes": len(data), "seconds": round(time.perf_counter() - t0, 2),
                     "peak_mb": round(peak_mb(proc.pid), 1)}
        proc.terminate()
        proc.wait()
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3) if values else float("nan")


def load_case(request: list[tuple[str, bytes]], clients: int = 8, seconds: float = 60.0) -> dict:
    """``clients`` threads sending ``request`` back to back for ``seconds``; /health every 50 ms."""
    proc, port = start_server()
    stop = time.monotonic() + seconds
    classify, codes, health = [], {}, []

    def client():
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            status, _ = post(port, request)
            classify.append(time.perf_counter() - t0)
            codes[status] = codes.get(status, 0) + 1

    def prober():
        while time.monotonic() < stop:
            health.append(get_health(port))
            time.sleep(0.05)

    with ThreadPoolExecutor(clients + 1) as pool:
        for f in [pool.submit(client) for _ in range(clients)] + [pool.submit(prober)]:
            f.result()
    out = {"clients": clients, "seconds": seconds, "requests": len(classify), "codes": codes,
           "classify_p50_s": pct(classify, 0.5), "classify_p99_s": pct(classify, 0.99),
           "health_p50_s": pct(health, 0.5), "health_p95_s": pct(health, 0.95), "health_p99_s": pct(health, 0.99),
           "health_max_s": round(max(health), 3), "peak_mb": round(peak_mb(proc.pid), 1)}
    proc.terminate()
    proc.wait()
    return out


def events_case(sightings: int = 400) -> dict:
    from wildwatch.store.events import EventStore, Sighting

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "events.db"
        store = EventStore(db)
        for i in range(sightings):
            store.add(Sighting("cam.mp4", "rhino", 0.9, f"2026-05-01T{i // 60:02d}:{i % 60:02d}:00+00:00",
                               f"2026-05-01T{i // 60:02d}:{i % 60:02d}:30+00:00", "Rhinoceros", "NT–CR", True),
                      os.urandom(1 << 20))
        store.close()
        out = {"database_mb": round(db.stat().st_size / 2**20)}
        for clients in (1, 4):
            proc, port = start_server("--events-db", str(db))
            base = peak_mb(proc.pid)

            def listing(port=port):
                with socket.create_connection(("127.0.0.1", port), timeout=600) as s:
                    s.sendall(b"GET /v1/events?limit=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    while s.recv(1 << 16):
                        pass

            t0 = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(lambda _: listing(), range(clients)))
            out[f"{clients}_at_once"] = {"seconds": round(time.perf_counter() - t0, 3), "peak_mb": round(peak_mb(proc.pid), 1),
                                         "before_mb": round(base, 1)}
            proc.terminate()
            proc.wait()
    return out


def memory_cases() -> dict:
    big, small = big_png(), small_photo((200, 150))  # 4 x 39.9 + 12 x 0.03 Mpx: just under the 160 Mpx budget
    at_limit = [(f"big{i}.png", big) for i in range(4)] + [(f"small{i}.jpg", small) for i in range(12)]
    out = {"big_png_bytes": len(big), "request_at_limits": "4 PNGs of 39.9 Mpx + 12 photos of 0.03 Mpx (16 files, 159.9 Mpx)"}
    proc, port = start_server()
    out["idle_peak_mb"] = round(peak_mb(proc.pid), 1)
    proc.terminate()
    proc.wait()

    proc, port = start_server()
    t0 = time.perf_counter()
    status, _ = post(port, at_limit)
    out["one_request"] = {"status": status, "seconds": round(time.perf_counter() - t0, 2),
                          "peak_mb": round(peak_mb(proc.pid), 1)}
    proc.terminate()
    proc.wait()

    proc, port = start_server()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(3) as pool:
        statuses = [f.result()[0] for f in [pool.submit(post, port, at_limit) for _ in range(3)]]
    out["three_at_once"] = {"status": statuses, "seconds": round(time.perf_counter() - t0, 2),
                            "peak_mb": round(peak_mb(proc.pid), 1)}
    proc.terminate()
    proc.wait()

    proc, port = start_server()
    status, body = post(port, [(f"big{i}.png", big) for i in range(16)])
    answer = json.loads(body.split(b"\r\n\r\n", 1)[1])
    out["sixteen_big_pngs"] = {"status": status, "detail": answer.get("detail", "classified"),
                               "peak_mb": round(peak_mb(proc.pid), 1)}
    proc.terminate()
    proc.wait()
    return out


def alert_latency(photos: int = 20) -> dict:
    from wildwatch.inference.prediction import Prediction
    from wildwatch.monitor.alerts import ConsoleSink, ConsoleSinkConfig, WebhookSink, WebhookSinkConfig
    from wildwatch.monitor.run import Monitor, MonitorConfig
    from wildwatch.species import species_info

    release = threading.Event()

    class Hang(BaseHTTPRequestHandler):
        def do_POST(self):
            release.wait(60)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", free_port()), Hang)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    printed: dict[int, float] = {}

    def echo(line: str) -> None:
        printed[int(line.split(" sighting ")[1].split()[0])] = time.time()

    def rhino(images):
        info = species_info("rhino")
        return [Prediction("x", "rhino", 0.97, (), info.common_name, info.iucn_status, info.threatened)
                for _ in images]

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "drop"
        folder.mkdir()
        for i in range(photos):
            Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / f"{i:02d}.jpg")
        cfg = MonitorConfig.model_validate({"db": Path(tmp) / "events.db", "once": True, "drain_s": 3, "sinks": []})
        sinks = {"hook": WebhookSink(WebhookSinkConfig(url=f"http://127.0.0.1:{srv.server_address[1]}/", timeout_s=30)),
                 "console": ConsoleSink(ConsoleSinkConfig(), echo=echo)}
        mon = Monitor(cfg, rhino, sinks=sinks, status=False)
        mon.run([str(folder)])
        created = dict(mon.store.db.execute("SELECT sighting_id, created_at FROM outbox WHERE sink = 'console'"))
        counts = mon.outbox.counts()
    release.set()
    srv.shutdown()
    lat = sorted(printed[k] - created[k] for k in printed)
    return {"photos": photos, "console_alerts": len(printed), "webhook_pending": counts["pending"],
            "latency_s_median": round(lat[len(lat) // 2], 3), "latency_s_max": round(lat[-1], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/hostile"))
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each load case")
    ap.add_argument("--only", default="memory,modes,load,events,alerts", help="comma-separated parts to run")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    parts = set(args.only.split(","))
    results = {"cpu_count": os.cpu_count()}
    if "memory" in parts:
        m = results["memory"] = memory_cases()
        print(f"idle server peak {m['idle_peak_mb']} MB")
        print(f"one request at the limits ({m['request_at_limits']}): HTTP {m['one_request']['status']}, "
              f"peak {m['one_request']['peak_mb']} MB (goal < 1024)")
        print(f"three at once: HTTP {m['three_at_once']['status']}, peak {m['three_at_once']['peak_mb']} MB (goal < 1536)")
        print(f"16 PNGs of 39.9 Mpx: HTTP {m['sixteen_big_pngs']['status']} ({m['sixteen_big_pngs']['detail']}), "
              f"peak {m['sixteen_big_pngs']['peak_mb']} MB")
    if "modes" in parts:
        results["modes"] = mode_cases()
        for name, r in results["modes"].items():
            print(f"one {name} of 39.9 Mpx ({r['bytes']:,} bytes): HTTP {r['status']} in {r['seconds']} s, "
                  f"peak {r['peak_mb']} MB (goal < 1024)")
    if "load" in parts:
        big = big_png()
        cases = {"4 PNGs of 39.9 Mpx": [(f"big{i}.png", big) for i in range(4)],
                 "1 RGBA WebP of 39.9 Mpx": [("big.webp", mode_image("RGBA WebP"))]}
        results["load"] = {name: load_case(req, 8, args.seconds) for name, req in cases.items()}
        for name, r in results["load"].items():
            print(f"8 clients x ({name}) for {r['seconds']:g} s: {r['requests']} requests {r['codes']}; classify "
                  f"p50 {r['classify_p50_s']} s p99 {r['classify_p99_s']} s; /health p50 {r['health_p50_s']} s "
                  f"p95 {r['health_p95_s']} s p99 {r['health_p99_s']} s max {r['health_max_s']} s (goal p95 < 0.2); "
                  f"peak {r['peak_mb']} MB")
    if "events" in parts:
        e = results["events"] = events_case()
        for n in (1, 4):
            r = e[f"{n}_at_once"]
            print(f"GET /v1/events?limit=1, {n} at once, on a {e['database_mb']} MB database: {r['seconds']} s, "
                  f"server peak {r['peak_mb']} MB (before: {r['before_mb']} MB)")
    if "alerts" in parts:
        a = results["alerts"] = alert_latency()
        print(f"alerts: {a['console_alerts']}/{a['photos']} on the console while the webhook hangs "
              f"({a['webhook_pending']} waiting for it); latency median {a['latency_s_median']} s, "
              f"max {a['latency_s_max']} s (goal < 2)")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
