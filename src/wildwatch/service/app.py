"""FastAPI app: ``/v1/classify``, ``/v1/species``, ``/health`` and the web page at ``/``.

No endpoint fetches a URL given by a client; uploads are checked by decoding them.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import hmac
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, Security, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from PIL import Image

from wildwatch import __version__
from wildwatch.data.loading import ImageLoadError, header_info, too_large
from wildwatch.errors import installed
from wildwatch.inference.prediction import describe_other
from wildwatch.service.batching import MemoryBudget, MicroBatcher
from wildwatch.service.guard import Guard, Limits
from wildwatch.service.schemas import (
    CaseMark,
    CaseOut,
    CasesResponse,
    ClassifyResponse,
    EventsResponse,
    Health,
    SpeciesResponse,
    binary_uploads,
    problems,
)

# declares the key in the OpenAPI description (the check itself is check_key's, and the Guard's)
key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's API key, when it has one")
from wildwatch.species import CATEGORY_COLOURS, species_table

# a decoded photo is kept at most this large on its longest side: what the model (256 px) and a
# heatmap overlay need, so a request's photos hold little memory while it runs
KEEP_SIDE = 1600
NO_DETECT_HEATMAPS = ("no heatmaps: this server runs the animal detector (serve --detect), whose answers come "
                      "from several crops per photo; each answer has its boxes instead")
NO_HEATMAPS = ("no heatmaps: they are drawn with PyTorch, which comes with wildwatch[train] (pip install "
               "'wildwatch[train]'); the photos were classified without them")


async def check_uploads(files: list[UploadFile], limits: Limits, draft: tuple[int, int] | None,
                        results: list) -> dict[int, tuple[str, UploadFile, int]]:
    """The uploads that pass every limit that can be checked before decoding: the number of files,
    each file's size, each image's pixels and the request's pixels as decoding will produce them
    (a JPEG at its reduced draft scale), read from the headers (413 beyond any of them). Their bytes
    stay in the upload's spooled file until a decoder takes them; each comes with the bound on
    the memory its decoding takes. A file whose header cannot be read gets its error in
    ``results`` and is left out."""
    if len(files) > limits.max_files:
        raise HTTPException(413, f"too many files: {len(files)} sent, at most {limits.max_files} per request")
    uploads, total = {}, 0
    for i, f in enumerate(files):
        name = f.filename or f"upload{i}"
        size = f.size if f.size is not None else f.file.seek(0, 2)
        f.file.seek(0)
        if size > limits.max_file_bytes:
            raise HTTPException(413, f"{name}: file larger than {limits.max_file_bytes:,} bytes")
        try:
            w, h, cost = header_info(f.file, name, draft)
        except ImageLoadError as exc:
            if exc.too_large:
                raise HTTPException(413, f"{exc}") from None
            results[i] = {"source": name, "error": str(exc)}
            continue
        if w * h > limits.max_pixels:
            raise HTTPException(413, str(too_large(name, w, h, limits.max_pixels)))
        total += w * h
        if total > limits.max_request_pixels:
            raise HTTPException(413, f"the images of this request have more than {limits.max_request_pixels:,} "
                                     "pixels in all; send them in several requests")
        uploads[i] = (name, f, cost)
    return uploads


def in_words(p) -> dict:
    """What the page shows instead of a species, worded once: what an unknown photo looks like, or the two
    species an uncertain answer is between."""
    if p.unknown:
        return {"looks_like_text": describe_other(p.looks_like, p.looks_like_kind)}
    if p.uncertain:
        return {"uncertain_text": p.describe()}
    return {}


def decode_upload(predictor, f: UploadFile, name: str, max_pixels: int):
    """On a decoder thread: one upload's bytes read from its spooled file, decoded, and shrunk to
    what the model and an overlay need (so only the small copy outlives this call)."""
    f.file.seek(0)
    try:
        img, place = predictor.read(f.file.read(), name, max_pixels=max_pixels)
    finally:
        release_freed_memory()
    if max(img.size) > KEEP_SIDE:
        img.thumbnail((KEEP_SIDE, KEEP_SIDE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return img, place


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return None


def release_freed_memory() -> None:
    """Hand the memory a decode freed back to the system (glibc keeps freed blocks in per-thread
    arenas: each decoder thread would otherwise hold on to its largest image's worth for good)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def detect_upload(pipe, f: UploadFile, name: str, country: str | None):
    """On a decoder thread: one upload through ``classify --detect``'s pipeline (its decodes, the
    detector, the classifier on each box); an unreadable photo comes back with its ``error``."""
    f.file.seek(0)
    try:
        return pipe.predict_file(f.file.read(), None, name, country)
    finally:
        release_freed_memory()


def docs_routes(app: FastAPI, favicon: str) -> None:
    """The interactive API docs (Swagger UI) with its script served from here (the fastapi-offline
    package's copy): it works without the internet. (ReDoc is left out: it loads its logo from a CDN.)"""
    from fastapi.openapi.docs import get_swagger_ui_html

    try:
        assets = Path(str(resources.files("fastapi_offline").joinpath("static")))
    except ModuleNotFoundError:  # an install without it: the docs say which package they need
        assets = None

    @app.get("/docs", include_in_schema=False)
    def docs():
        if assets is None:
            raise HTTPException(501, "the API docs page needs fastapi-offline, which comes with wildwatch[serve]")
        return get_swagger_ui_html(openapi_url="/openapi.json", title="wildwatch API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css", swagger_favicon_url=favicon)

    if assets is not None:
        app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")


class WildwatchAPI(FastAPI):
    """The app: its OpenAPI document describes uploads as binary files."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            self.openapi_schema = binary_uploads(get_openapi(title=self.title, version=self.version,
                                                             description=self.description, routes=self.routes))
        return self.openapi_schema


@dataclass
class Service:
    """What the routes of one app share: the predictor and its micro-batcher, the limits, the API key,
    the decoder threads and their memory budget, the detector's pipeline (``serve --detect``) and the
    monitor database (with its case book, opened on first use)."""

    predictor: Any
    limits: Limits
    api_key: str | None
    batcher: MicroBatcher
    decoders: ThreadPoolExecutor
    budget: MemoryBudget
    pipe: Any = None  # inference.camtrap.DetectPipeline with the built-in detector
    store: Any = None  # store.events.EventStore
    default_country: str | None = None
    explain_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    cases: Any = None  # store.cases.CaseBook

    @property
    def draft(self) -> tuple[int, int]:
        side = self.predictor.preprocess.resize_size
        return side, side

    def require_store(self):
        if self.store is None:
            raise HTTPException(404, "no monitor database configured: start the server with --events-db events.db")
        return self.store

    def require_cases(self):
        if self.cases is None:
            from wildwatch.store.cases import CaseBook

            self.cases = CaseBook(self.require_store())
        return self.cases

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        await self.batcher.start()
        yield
        await self.batcher.stop()
        self.decoders.shutdown(wait=False, cancel_futures=True)


def create_app(predictor, api_key: str | None = None, limits: Limits | None = None,
               cors_origins: list[str] | None = None, max_wait_ms: float = 5.0, events_db: str | Path | None = None,
               default_country: str | None = None, allowed_hosts: list[str] | None = None,
               detector=None) -> FastAPI:
    """The app over a loaded Predictor. ``api_key`` (or $WILDWATCH_API_KEY) protects every /v1 call;
    ``events_db`` (a monitor database) enables /v1/events and the page's events tab;
    ``allowed_hosts`` (None: any) are the Host header values it answers. ``service.guard.Guard``
    checks the Host, the key and the request size before the body is read. ``detector``
    (``inference.detect.Detector``): every upload goes through ``classify --detect``'s pipeline
    (boxes, crops at full detail, ``detections`` and ``count`` in each answer)."""
    svc = _service(predictor, api_key, limits or Limits(), max_wait_ms, events_db, default_country, detector)
    app = WildwatchAPI(title="wildwatch", version=__version__, lifespan=svc.lifespan, docs_url=None, redoc_url=None,
                  description="Which endangered species is in a photo, how sure the model is, and how threatened it is.")
    app.state.batcher = svc.batcher
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"])
    key = [Depends(key_check(svc.api_key))]
    info_routes(app, svc, key)
    classify_route(app, svc, key)
    event_routes(app, svc, key)
    case_routes(app, svc, key)
    page_routes(app)
    app.add_middleware(Guard, limits=svc.limits, api_key=svc.api_key, allowed_hosts=allowed_hosts)  # outermost
    return app


def _service(predictor, api_key: str | None, limits: Limits, max_wait_ms: float, events_db: str | Path | None,
             default_country: str | None, detector) -> Service:
    from wildwatch.store.events import EventStore

    pipe = None
    if detector is not None:
        from wildwatch.inference.camtrap import DetectPipeline

        pipe = DetectPipeline(predictor, detector, max_pixels=limits.max_pixels)
    # decoding runs on its own few threads, never on the event loop: /health and light requests are
    # answered while large uploads decode, and at most this many images are decoded (in memory) at once
    return Service(predictor, limits, api_key or os.environ.get("WILDWATCH_API_KEY") or None,
                   MicroBatcher(predictor, max_wait_ms=max_wait_ms),
                   ThreadPoolExecutor(limits.decode_workers, thread_name_prefix="decode"),
                   MemoryBudget(limits.decode_memory_bytes), pipe,
                   EventStore.open_existing(events_db) if events_db else None, default_country)


def key_check(api_key: str | None):
    """The dependency that checks the API key of a /v1 call (when the server has one)."""
    def check_key(request: Request, _key: str | None = Security(key_header)) -> None:
        if api_key is None:
            return
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = given or auth[7:]
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, "missing or wrong API key: send it in the X-API-Key header")

    return check_key


def info_routes(app: FastAPI, svc: Service, key: list) -> None:
    """/health and /v1/species."""
    predictor = svc.predictor

    @app.get("/health", response_model=Health, responses=problems(400))
    def health():
        return {"status": "ok", "version": __version__, "model": predictor.meta.get("architecture"),
                "backend": predictor.backend, "classes": len(predictor.classes),
                "api_key_required": svc.api_key is not None, "events": svc.store is not None,
                "explain": installed("torch") and svc.pipe is None}

    @app.get("/v1/species", dependencies=key, response_model=SpeciesResponse, responses=problems(400, 401))
    def species():
        return {"species": [info.to_json() | {"colour": CATEGORY_COLOURS.get(info.worst_category, "#999")}
                            for key, info in species_table().items() if key in predictor.classes]}


def classify_route(app: FastAPI, svc: Service, key: list) -> None:
    """POST /v1/classify: the uploads checked, decoded on the decoder threads, classified together."""
    @app.post("/v1/classify", dependencies=key, response_model=ClassifyResponse,
              responses=problems(400, 401, 408, 413, 503))
    async def classify(files: list[UploadFile] = File(..., description="one or more photos"),
                       explain: bool = Query(False, description="add a Grad-CAM heatmap overlay (PNG, base64)"),
                       country: str | None = Query(None, min_length=2, max_length=2, pattern="^[A-Za-z]{2}$",
                                                   description="ISO country code of the photos (default: EXIF GPS)")):
        notice = None
        if explain and not installed("torch"):  # a missing extra never fails a classification
            explain, notice = False, NO_HEATMAPS
        results: list = [None] * len(files)
        # with the detector a photo may be decoded at full resolution for its crops: its limits and its
        # memory bound are those of the full decode, not of a draft
        uploads = await check_uploads(files, svc.limits, svc.draft if svc.pipe is None else None, results)
        where = country or svc.default_country
        if svc.pipe is not None:  # the built-in detector: boxes, and crops decoded at the detail they need
            if explain:
                explain, notice = False, NO_DETECT_HEATMAPS
            await classify_detected(svc, uploads, where, results)
        else:
            await classify_decoded(svc, uploads, where, explain, results)
        for r in results:
            if r.get("error") is None and r.get("species"):
                colour_key = species_table().get(r["species"])
                r["status_colour"] = CATEGORY_COLOURS.get(colour_key.worst_category, "#999") if colour_key else "#999"
        return {"predictions": results, "notice": notice}


async def classify_detected(svc: Service, uploads: dict, where: str | None, results: list) -> None:
    """``--detect``: each upload through the detector's pipeline on a decoder thread, within the
    memory budget (the detector and the classifier run there too, never on the event loop)."""
    loop = asyncio.get_running_loop()
    for i, (name, f, cost) in uploads.items():
        # a crop decode is kept at full size, so its turned and RGB copies are full size too
        held = await svc.budget.acquire(3 * cost)
        try:
            p = await loop.run_in_executor(svc.decoders, detect_upload, svc.pipe, f, name, where)
        finally:
            await svc.budget.release(held)
        results[i] = {"source": name, "error": p.error} if p.error else p.to_json() | in_words(p)


async def classify_decoded(svc: Service, uploads: dict, where: str | None, explain: bool, results: list) -> None:
    """The uploads decoded one at a time on a decoder thread (memory first: a wide image waits for
    room), then classified together by the micro-batcher; with ``explain``, a heatmap each."""
    from wildwatch.field import Place

    images, names, places, slots = [], [], [], []
    loop = asyncio.get_running_loop()
    for i, (name, f, cost) in uploads.items():
        held = await svc.budget.acquire(cost)
        try:
            img, place = await loop.run_in_executor(svc.decoders, decode_upload, svc.predictor, f, name,
                                                    svc.limits.max_pixels)
        except ImageLoadError as exc:
            results[i] = {"source": name, "error": str(exc)}
            continue
        finally:
            await svc.budget.release(held)
        place = place or Place()
        if where:
            place = Place(where.upper(), place.latitude, place.longitude, place.taken_at, "given")
        images.append(img)
        names.append(name)
        places.append(place)
        slots.append(i)
    preds = await svc.batcher.classify(images, names, places) if images else []
    for i, img, p in zip(slots, images, preds):
        row = p.to_json() | in_words(p)
        if explain:
            row["heatmap_png_base64"] = await heatmap(svc, img, p)
        results[i] = row


async def heatmap(svc: Service, img: Image.Image, p) -> str:
    """A Grad-CAM overlay of ``p``'s answer on ``img``, as base64 PNG."""
    from wildwatch.inference.explain import explain_image, explained_class, png_base64

    idx = explained_class(svc.predictor, p)
    async with svc.explain_lock:  # gradients on a shared model: one at a time
        cam = await asyncio.get_running_loop().run_in_executor(None, explain_image, svc.predictor, img, idx)
    return png_base64(cam)


def event_routes(app: FastAPI, svc: Service, key: list) -> None:
    """The monitor's sightings: /v1/events and each one's snapshot."""
    @app.get("/v1/events", dependencies=key, response_model=EventsResponse, responses=problems(400, 401, 404))
    def events(since: str | None = Query(None, description="ISO date or time (UTC)"),
               species: str | None = None, limit: int = Query(200, ge=1, le=10_000)):
        rows = svc.require_store().list(since=since, species=species, limit=limit, newest=True)
        table = species_table()
        return {"events": [s.to_json() | {"snapshot_url": f"/v1/events/{s.id}/snapshot",
                                          "status_colour": CATEGORY_COLOURS.get(table[s.species].worst_category, "#999")
                                          if s.species in table else "#999"} for s in rows]}

    @app.get("/v1/events/{event_id}/snapshot", dependencies=key, response_class=Response,
             responses={200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                             "description": "the sighting's best frame"},
                        **problems(400, 401, 404)})
    def snapshot(event_id: int):
        # an integer id, looked up in the database: no file path ever comes from the client
        jpeg = svc.require_store().snapshot(event_id)
        if not jpeg:
            raise HTTPException(404, f"no snapshot for event {event_id}")
        return Response(content=jpeg, media_type="image/jpeg")


def case_routes(app: FastAPI, svc: Service, key: list) -> None:
    """The media watch's review queue: /v1/cases, an analyst's mark, each case's photo."""
    @app.get("/v1/cases", dependencies=key, response_model=CasesResponse, responses=problems(400, 401, 404))
    def list_cases(status: str | None = Query(None, description="new, reviewed, reported or not_relevant"),
                   limit: int = Query(200, ge=1, le=5000)):
        """The media watch's review queue: cases by score, highest first, with their posts."""
        return {"cases": [c | {"thumbnail_url": f"/v1/cases/{c['id']}/thumbnail"}
                          for c in svc.require_cases().list(status=status, limit=limit)]}

    @app.post("/v1/cases/{case_id}/status", dependencies=key, response_model=CaseOut,
              responses=problems(400, 401, 404))
    def mark_case(case_id: int, mark: CaseMark):
        """An analyst's mark: reviewed, reported (to an agency), not_relevant, or new again."""
        book = svc.require_cases()
        if not 0 < case_id < 2**63 or book.get(case_id) is None:
            raise HTTPException(404, f"no case {case_id}")
        book.mark(case_id, mark.status)
        return book.get(case_id) | {"thumbnail_url": f"/v1/cases/{case_id}/thumbnail"}

    @app.get("/v1/cases/{case_id}/thumbnail", dependencies=key, response_class=Response,
             responses={200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                              "description": "the case's photo"}, **problems(400, 401, 404)})
    def case_thumbnail(case_id: int):
        jpeg = svc.require_cases().thumbnail(case_id)
        if not jpeg:
            raise HTTPException(404, f"no photo for case {case_id}")
        return Response(content=jpeg, media_type="image/jpeg")


def page_routes(app: FastAPI) -> None:
    """The web page, its files and the API docs; a photo that does not decode is a 400."""
    static = Path(str(resources.files("wildwatch").joinpath("service/static")))
    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(static / "index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return FileResponse(static / "favicon.svg", media_type="image/svg+xml")

    docs_routes(app, "/favicon.ico")

    @app.exception_handler(ImageLoadError)
    async def bad_image(request: Request, exc: ImageLoadError):
        return JSONResponse({"detail": str(exc)}, status_code=400)


