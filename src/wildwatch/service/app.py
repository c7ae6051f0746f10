"""FastAPI app: ``/v1/classify``, ``/v1/species``, ``/health`` and the web page at ``/``.

No endpoint fetches a URL given by a client; uploads are checked by decoding them.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, Security, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from PIL import Image

from wildwatch import __version__
from wildwatch.data.loading import ImageLoadError, declared_size
from wildwatch.errors import installed
from wildwatch.inference.predictor import describe_other
from wildwatch.service.batching import MicroBatcher
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

# a decoded photo larger than this is shrunk at once (to KEEP_SIDE on its longest side): what the
# model (256 px) and a heatmap overlay need, so a request's photos hold little memory while it runs
KEEP_PIXELS = 4_000_000
KEEP_SIDE = 1600


async def read_uploads(files: list[UploadFile], limits: Limits, results: list) -> dict[int, tuple[str, bytes]]:
    """The bytes of each upload, after every limit that can be checked before decoding: the number
    of files, each file's size, each image's pixels and the request's pixels as their headers
    declare them (413 beyond any of them). A file whose header cannot be read gets its error in
    ``results`` and is left out."""
    if len(files) > limits.max_files:
        raise HTTPException(413, f"too many files: {len(files)} sent, at most {limits.max_files} per request")
    uploads, total = {}, 0
    for i, f in enumerate(files):
        name = f.filename or f"upload{i}"
        data = await f.read(limits.max_file_bytes + 1)
        if len(data) > limits.max_file_bytes:
            raise HTTPException(413, f"{name}: file larger than {limits.max_file_bytes:,} bytes")
        try:
            w, h = declared_size(data, name)
        except ImageLoadError as exc:
            if exc.too_large:
                raise HTTPException(413, f"{exc}; at most {limits.max_pixels:,} pixels per image") from None
            results[i] = {"source": name, "error": str(exc)}
            continue
        if w * h > limits.max_pixels:
            raise HTTPException(413, f"{name}: image is {w}x{h} = {w * h:,} pixels, over the limit of "
                                     f"{limits.max_pixels:,} per image")
        total += w * h
        if total > limits.max_request_pixels:
            raise HTTPException(413, f"the images of this request have more than {limits.max_request_pixels:,} "
                                     "pixels in all; send them in several requests")
        uploads[i] = (name, data)
    return uploads


def create_app(predictor, api_key: str | None = None, limits: Limits = Limits(), cors_origins: list[str] | None = None,
               max_wait_ms: float = 5.0, events_db: str | Path | None = None,
               default_country: str | None = None, allowed_hosts: list[str] | None = None,
               detector=None) -> FastAPI:
    """The app over a loaded Predictor. ``api_key`` (or $WILDWATCH_API_KEY) protects every /v1 call;
    ``events_db`` (a monitor database) enables /v1/events and the page's events tab;
    ``allowed_hosts`` (None: any) are the Host header values it answers. ``service.guard.Guard``
    checks the Host, the key and the request size before the body is read. ``detector``
    (``inference.detect.Detector``): every upload goes through ``classify --detect``'s pipeline
    (boxes, crops at full detail, ``detections`` and ``count`` in each answer)."""
    from wildwatch.monitor.events import EventStore

    store = EventStore.open_existing(events_db) if events_db else None
    cases = None  # the media watch's case book in that database, opened on first use
    api_key = api_key or os.environ.get("WILDWATCH_API_KEY") or None
    batcher = MicroBatcher(predictor, max_wait_ms=max_wait_ms)
    pipe = None
    if detector is not None:
        from wildwatch.inference.camtrap import DetectPipeline

        pipe = DetectPipeline(predictor, detector, max_pixels=limits.max_pixels)
    explain_lock = asyncio.Lock()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="wildwatch", version=__version__, lifespan=lifespan,
                  description="Which endangered species is in a photo, how sure the model is, and how threatened it is.")
    app.state.batcher = batcher
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"])

    def check_key(request: Request, _key: str | None = Security(key_header)) -> None:
        if api_key is None:
            return
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = given or auth[7:]
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(401, "missing or wrong API key: send it in the X-API-Key header")

    @app.get("/health", response_model=Health, responses=problems(400))
    def health():
        return {"status": "ok", "version": __version__, "model": predictor.meta.get("architecture"),
                "backend": predictor.backend, "classes": len(predictor.classes), "api_key_required": api_key is not None,
                "events": store is not None, "explain": installed("torch")}

    @app.get("/v1/species", dependencies=[Depends(check_key)], response_model=SpeciesResponse,
             responses=problems(400, 401))
    def species():
        return {"species": [info.to_json() | {"colour": CATEGORY_COLOURS.get(info.worst_category, "#999")}
                            for key, info in species_table().items() if key in predictor.classes]}

    @app.post("/v1/classify", dependencies=[Depends(check_key)], response_model=ClassifyResponse,
              responses=problems(400, 401, 408, 413, 501))
    async def classify(files: list[UploadFile] = File(..., description="one or more photos"),
                       explain: bool = Query(False, description="add a Grad-CAM heatmap overlay (PNG, base64)"),
                       country: str | None = Query(None, min_length=2, max_length=2, pattern="^[A-Za-z]{2}$",
                                                   description="ISO country code of the photos (default: EXIF GPS)")):
        if explain and not installed("torch"):
            raise HTTPException(501, "explain=true draws Grad-CAM heatmaps with PyTorch, which comes with "
                                     "wildwatch[train]: pip install 'wildwatch[train]'")
        from wildwatch.field import Place

        results: list = [None] * len(files)
        uploads = await read_uploads(files, limits, results)
        if pipe is not None:  # the built-in detector: boxes, and crops decoded at the detail they need
            for i in list(uploads):
                name, data = uploads.pop(i)
                p = await asyncio.get_running_loop().run_in_executor(None, pipe.predict_file, data, None, name,
                                                                     country or default_country)
                results[i] = {"source": name, "error": p.error} if p.error else p.to_json() | (
                    {"looks_like_text": describe_other(p.looks_like, p.looks_like_kind)} if p.unknown else {})
        images, names, places, slots = [], [], [], []
        for i in list(uploads):
            name, data = uploads.pop(i)  # each upload's bytes are let go once decoded
            try:  # one photo decoded at a time, and kept no larger than the model and the heatmap need
                img, place = predictor.read(data, name, max_pixels=limits.max_pixels)
            except ImageLoadError as exc:
                results[i] = {"source": name, "error": str(exc)}
                continue
            if img.width * img.height > KEEP_PIXELS:
                img.thumbnail((KEEP_SIDE, KEEP_SIDE), Image.BILINEAR, reducing_gap=2.0)
            place = place or Place()
            where = country or default_country
            if where:
                place = Place(where.upper(), place.latitude, place.longitude, place.taken_at, "given")
            images.append(img)
            names.append(name)
            places.append(place)
            slots.append(i)
        preds = await batcher.classify(images, names, places) if images else []
        for i, img, p in zip(slots, images, preds):
            row = p.to_json()
            if p.unknown:  # what the page shows instead of a species, worded once (Prediction.describe)
                row["looks_like_text"] = describe_other(p.looks_like, p.looks_like_kind)
            if explain:
                from wildwatch.inference.explain import explain_image, explained_class, png_base64

                idx = explained_class(predictor, p)
                async with explain_lock:  # gradients on a shared model: one at a time
                    cam = await asyncio.get_running_loop().run_in_executor(None, explain_image, predictor, img, idx)
                row["heatmap_png_base64"] = png_base64(cam)
            results[i] = row
        for r in results:
            if r.get("error") is None and r.get("species"):
                colour_key = species_table().get(r["species"])
                r["status_colour"] = CATEGORY_COLOURS.get(colour_key.worst_category, "#999") if colour_key else "#999"
        return {"predictions": results}

    def require_store():
        if store is None:
            raise HTTPException(404, "no monitor database configured: start the server with --events-db events.db")
        return store

    @app.get("/v1/events", dependencies=[Depends(check_key)], response_model=EventsResponse,
             responses=problems(400, 401, 404))
    def events(since: str | None = Query(None, description="ISO date or time (UTC)"),
               species: str | None = None, limit: int = Query(200, ge=1, le=10_000)):
        rows = require_store().list(since=since, species=species)
        table = species_table()
        return {"events": [s.to_json() | {"snapshot_url": f"/v1/events/{s.id}/snapshot",
                                          "status_colour": CATEGORY_COLOURS.get(table[s.species].worst_category, "#999")
                                          if s.species in table else "#999"} for s in rows[-limit:]]}

    @app.get("/v1/events/{event_id}/snapshot", dependencies=[Depends(check_key)], response_class=Response,
             responses={200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                             "description": "the sighting's best frame"},
                        **problems(400, 401, 404)})
    def snapshot(event_id: int):
        # an integer id, looked up in the database: no file path ever comes from the client
        jpeg = require_store().snapshot(event_id)
        if not jpeg:
            raise HTTPException(404, f"no snapshot for event {event_id}")
        return Response(content=jpeg, media_type="image/jpeg")

    def require_cases():
        nonlocal cases
        if cases is None:
            from wildwatch.monitor.cases import CaseBook

            cases = CaseBook(require_store())
        return cases

    @app.get("/v1/cases", dependencies=[Depends(check_key)], response_model=CasesResponse,
             responses=problems(400, 401, 404))
    def list_cases(status: str | None = Query(None, description="new, reviewed, reported or not_relevant"),
                   limit: int = Query(200, ge=1, le=5000)):
        """The media watch's review queue: cases by score, highest first, with their posts."""
        return {"cases": [c | {"thumbnail_url": f"/v1/cases/{c['id']}/thumbnail"}
                          for c in require_cases().list(status=status, limit=limit)]}

    @app.post("/v1/cases/{case_id}/status", dependencies=[Depends(check_key)], response_model=CaseOut,
              responses=problems(400, 401, 404))
    def mark_case(case_id: int, mark: CaseMark):
        """An analyst's mark: reviewed, reported (to an agency), not_relevant, or new again."""
        book = require_cases()
        if not 0 < case_id < 2**63 or book.get(case_id) is None:
            raise HTTPException(404, f"no case {case_id}")
        book.mark(case_id, mark.status)
        return book.get(case_id) | {"thumbnail_url": f"/v1/cases/{case_id}/thumbnail"}

    @app.get("/v1/cases/{case_id}/thumbnail", dependencies=[Depends(check_key)], response_class=Response,
             responses={200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                              "description": "the case's photo"}, **problems(400, 401, 404)})
    def case_thumbnail(case_id: int):
        jpeg = require_cases().thumbnail(case_id)
        if not jpeg:
            raise HTTPException(404, f"no photo for case {case_id}")
        return Response(content=jpeg, media_type="image/jpeg")

    static = Path(str(resources.files("wildwatch").joinpath("service/static")))
    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(static / "index.html")

    @app.exception_handler(ImageLoadError)
    async def bad_image(request: Request, exc: ImageLoadError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    def openapi():
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            app.openapi_schema = binary_uploads(get_openapi(title=app.title, version=app.version,
                                                            description=app.description, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi
    app.add_middleware(Guard, limits=limits, api_key=api_key, allowed_hosts=allowed_hosts)  # outermost: first to see a request
    return app
