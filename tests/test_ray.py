"""Batch classification on Ray Data equals the local path."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from conftest import csv_rows

from wildwatch.data.transforms import Preprocess
from wildwatch.models import create_model
from wildwatch.models.files import save_model

WILDWATCH = str(Path(sys.executable).parent / "wildwatch")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("seed_m4_gap", 3, image_size=32).eval()
    meta = {"architecture": "seed_m4_gap", "model_kwargs": {"image_size": 32},
            "classes": ["blue_triangles", "green_squares", "red_circles"],
            "preprocess": Preprocess(image_size=32).to_json(), "temperature": 1.0}
    return save_model(tmp_path_factory.mktemp("m") / "m.safetensors", model, meta)


# Keep every Ray address on loopback (Ray otherwise swaps 127.0.0.1 for the machine's own address).
LOOPBACK_ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _run(*args, code=0):
    proc = subprocess.run([WILDWATCH, *map(str, args)], capture_output=True, text=True, timeout=600, env=LOOPBACK_ENV, check=False)
    assert proc.returncode == code, proc.stderr[-3000:]
    return proc


def test_ray_rows_equal_local_rows(model_file, shapes_dir, broken_dir, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(shapes_dir / "green_squares", folder)
    for f in broken_dir.iterdir():
        shutil.copy(f, folder / f.name)
    local, remote, parquet = tmp_path / "local.csv", tmp_path / "ray.csv", tmp_path / "ray.parquet"
    # the broken files make both exit 1 (some files failed), with their rows written
    _run("classify", folder, "--model", model_file, "--backend", "torch", "--output", local, "-q", code=1)
    proc = _run("classify", folder, "--model", model_file, "--backend", "torch", "--engine", "ray", "--output", remote,
                code=1)
    assert "(ray)" in proc.stderr
    a, b = csv_rows(local), csv_rows(remote)
    assert len(a) == len(b) == 45 + 6
    assert [r["source"] for r in a] == [r["source"] for r in b]
    for x, y in zip(a, b):
        assert x["species"] == y["species"] and x["top_k"] == y["top_k"] and bool(x["error"]) == bool(y["error"])
        assert x["confidence"] == y["confidence"]
    _run("classify", folder, "--model", model_file, "--backend", "torch", "--engine", "ray", "--output", parquet, code=1)
    table = pq.read_table(parquet).to_pylist()
    assert [r["source"] for r in table] == [r["source"] for r in a]
    assert list(table[0]) == list(a[0])  # the same columns as the local path



def test_ray_on_an_existing_cluster_address(model_file, shapes_dir, tmp_path):
    import secrets
    import tempfile

    from conftest import free_port

    port = free_port()
    # the cluster's own authentication token, given to the head and to wildwatch alike
    env = {**LOOPBACK_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    ray_cli = str(Path(sys.executable).parent / "ray")
    start = subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                            "--disable-usage-stats", "--node-ip-address=127.0.0.1",
                            f"--temp-dir={tempfile.mkdtemp(prefix='rw', dir='/tmp')}"],  # Ray's socket paths stay short
                           capture_output=True, text=True, timeout=300, env=env, check=False)
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        out = tmp_path / "rows.csv"
        proc = subprocess.run([WILDWATCH, "classify", str(shapes_dir / "red_circles"), "--model", str(model_file),
                               "--backend", "torch", "--engine", "ray", "--address", f"127.0.0.1:{port}",
                               "--output", str(out)], capture_output=True, text=True, timeout=600, env=env, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = csv_rows(out)
        assert len(rows) == 45 and all(r["species"] for r in rows) and "(ray)" in proc.stderr
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120, env=env, check=False)
