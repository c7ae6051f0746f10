"""Latency and throughput of `wildwatch serve` under concurrent clients, with and without
micro-batching.

    python benchmarks/serve_latency.py ../shared/data/endangered11/lion --backend auto

Starts the server as a subprocess on 127.0.0.1, sends one photo per request from 1, 8 and 32
client threads for a fixed time each, and prints p50/p95 latency and requests/s.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from wildwatch.data.discover import expand_paths

WILDWATCH = str(Path(sys.executable).parent / "wildwatch")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(backend: str, wait_ms: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([WILDWATCH, "serve", "--port", str(port), "--backend", backend,
                             "--batch-wait-ms", str(wait_ms)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start: " + proc.stderr.read().decode()[-2000:])


def load(url: str, photos: list[bytes], clients: int, seconds: float) -> tuple[list[float], float]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(k: int) -> None:
        with httpx.Client(timeout=60) as c:
            i = k
            while time.perf_counter() < stop:
                data = photos[i % len(photos)]
                t0 = time.perf_counter()
                r = c.post(url + "/v1/classify", files=[("files", ("p.jpg", data, "image/jpeg"))])
                dt = time.perf_counter() - t0
                r.raise_for_status()
                with lock:
                    latencies.append(dt)
                i += clients

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photos", type=Path)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    args = ap.parse_args()
    photos = [p.read_bytes() for p in list(expand_paths([args.photos]))[:64]]
    for wait_ms in (0.0, 5.0):
        proc, url = start_server(args.backend, wait_ms)
        try:
            load(url, photos, 1, 2)  # warm up
            backend = httpx.get(url + "/health").json()["backend"]
            for n in args.clients:
                lat, elapsed = load(url, photos, n, args.seconds)
                ms = np.array(lat) * 1000
                print(f"[{backend}, batching wait {wait_ms:g} ms] {n:>2} clients: p50 {np.percentile(ms, 50):6.1f} ms, "
                      f"p95 {np.percentile(ms, 95):6.1f} ms, {len(lat) / elapsed:6.1f} requests/s")
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
