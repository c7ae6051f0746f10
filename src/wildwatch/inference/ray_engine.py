"""Batch classification on Ray Data: the same rows as the local path, on a local Ray or a cluster.

Files are read by Ray (``read_binary_files``), decoded and classified in a pool of actors that
each hold one Predictor (``map_batches``), and the rows come back in input order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from wildwatch.data.discover import expand_paths
from wildwatch.inference.predictor import ROW_FIELDS, Prediction


class _Classifier:
    """A Ray actor: one model per process, reused for every batch."""

    def __init__(self, model: str | None, backend: str, top_k: int, country: str | None):
        from wildwatch.inference.predictor import Predictor

        self.predictor = Predictor.from_file(model, backend=backend, top_k=top_k)
        self.predictor.country = country

    def __call__(self, batch: dict) -> dict:
        from wildwatch.data.loading import ImageLoadError

        rows = []
        images, places, names, slots = [], [], [], []
        for i, (path, data) in enumerate(zip(batch["path"], batch["bytes"])):
            try:
                img, place = self.predictor.read(bytes(data), str(path))
            except ImageLoadError as exc:
                rows.append(Prediction(str(path), error=str(exc)))
                continue
            images.append(img)
            places.append(place)
            names.append(str(path))
            slots.append(i)
            rows.append(None)
        for i, p in zip(slots, self.predictor.predict_images(images, names, places)):
            rows[i] = p
        flat = [p.to_row() for p in rows]
        return {"path": np.asarray([str(p) for p in batch["path"]], dtype=object),
                **{k: np.asarray([r[k] for r in flat], dtype=object) for k in ROW_FIELDS}}


def classify_with_ray(paths: Iterable, model: str | Path | None = None, backend: str = "auto", top_k: int = 3,
                      country: str | None = None, address: str | None = None, batch_size: int = 32,
                      actors: int | None = None) -> list[dict]:
    """Rows (as from ``Prediction.to_row``) for every file, in input order.

    ``address=None`` starts a local Ray for the call; otherwise joins that cluster (``auto`` or
    ``ray://host:10001``). Missing files get their error row without reaching Ray.
    """
    import ray

    files = [str(p) for p in expand_paths(paths)]
    present = [f for f in files if Path(f).is_file()]
    started = False
    if not ray.is_initialized():
        # a Ray started here listens on loopback only; a cluster address is used as given
        kwargs = {"address": address} if address else {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}
        ray.init(logging_level="ERROR", log_to_driver=False, **kwargs)
        started = True
    try:
        rows_by_path: dict[str, dict] = {}
        if present:
            resolved = {str(Path(f).resolve()): f for f in present}
            ds = ray.data.read_binary_files(list(resolved), include_paths=True)
            n_actors = actors or max(1, int(ray.cluster_resources().get("CPU", 1)) // 2)
            out = ds.map_batches(_Classifier, fn_constructor_args=(None if model is None else str(model), backend,
                                                                   top_k, country),
                                 batch_size=batch_size, concurrency=n_actors, batch_format="numpy")
            for row in out.iter_rows():
                original = resolved.get(str(Path(row["path"]).resolve()), row["path"])
                rows_by_path[original] = {k: row[k] for k in ROW_FIELDS} | {"source": original}
        result = []
        for f in files:
            if f in rows_by_path:
                result.append(rows_by_path[f])
            else:
                result.append(Prediction(f, error=f"{f}: file not found").to_row())
        return result
    finally:
        if started:
            ray.shutdown()


def write_rows(rows: list[dict], output: Path, fmt: str = "csv") -> None:
    """CSV, JSON lines, one JSON document or Parquet, with the local path's columns."""
    import csv
    import json

    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{k: r[k] for k in ROW_FIELDS} for r in rows]), output)
    elif fmt == "csv":
        with open(output, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=ROW_FIELDS)
            w.writeheader()
            w.writerows(rows)
    else:
        docs = []
        for r in rows:
            d = dict(r)
            for k in ("top_k", "top_k_original"):
                d[k] = json.loads(d[k]) if d[k] else []
            docs.append(d)
        with open(output, "w", encoding="utf-8") as f:
            if fmt == "json":
                json.dump(docs, f, indent=None)
                f.write("\n")
            else:
                f.writelines(json.dumps(d) + "\n" for d in docs)
