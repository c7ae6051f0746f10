"""``wildwatch benchmark robustness``: accuracy of a model under corruptions, CCTV conditions,
occlusion and small animals, on a split of its data.

Corrupted images are made in worker processes (the corruption code uses numpy's global
generator, so each process seeds it per image) while the model runs in this process. Each
finished (condition, severity) cell is appended to ``cells.jsonl``; a run that is stopped starts
again where it was with the same settings and gives the same numbers.
"""

from __future__ import annotations

import csv
import hashlib
import html
import json
import multiprocessing as mp
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from wildwatch.data.transforms import FastEvalTransform, Preprocess
from wildwatch.errors import DataError, UnknownNameError, UsageError
from wildwatch.robustness import corruptions as C

# ---------------------------------------------------------------- worker side

_worker: dict = {}


def _init_worker(preprocess: dict, pastes_root: str | None) -> None:
    torch.set_num_threads(1)
    _worker.update(preprocess=Preprocess.from_json(preprocess), crops={},
                   pastes=C.Pastes.from_folder(Path(pastes_root)) if pastes_root else None)


def eval_crop(path: Path, pre: Preprocess) -> np.ndarray:
    """The model's eval geometry (short side to the resize size, centre crop) as ``uint8`` RGB."""
    from wildwatch.data.loading import load_image

    img = load_image(path, draft_size=(pre.resize_size, pre.resize_size))
    return np.asarray(FastEvalTransform(pre).crop(img))


def _make_chunk(condition: str, severity: int, seed: int, items: list[tuple[int, str]]) -> np.ndarray:
    crops = _worker["crops"]
    out = []
    for index, path in items:
        if path not in crops:
            crops[path] = eval_crop(Path(path), _worker["preprocess"])
        x = crops[path]
        out.append(C.apply(condition, x, severity, C.item_rng(seed, condition, severity, index), _worker["pastes"]))
    return np.stack(out)


# ---------------------------------------------------------------- main side


def stratified_subset(samples: Sequence, limit_per_class: int | None, seed: int) -> list:
    """At most ``limit_per_class`` samples of each class, chosen at random (seeded), in input order."""
    if not limit_per_class:
        return list(samples)
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_class.setdefault(s.label, []).append(i)
    keep = set()
    for label in sorted(by_class):
        ix = by_class[label]
        keep.update(rng.permutation(ix)[:limit_per_class].tolist())
    return [s for i, s in enumerate(samples) if i in keep]


def _settings_digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _read_done(path: Path) -> dict[tuple[str, int], dict]:
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # a line cut by an interruption: that cell runs again
                continue
            done[(r["condition"], int(r["severity"]))] = r
    return done


def run_robustness(model: str | Path | None, data: str | Path, out: str | Path, split_name: str = "test",
                   limit_per_class: int | None = None, conditions: Sequence[str] | None = None,
                   pastes: str | Path | None = None, seed: int = 0, workers: int = 2, batch_size: int = 32,
                   backend: str = "auto", progress: bool = True, tiles: int = 0,
                   species_model: str | Path | None = None) -> dict:
    """Score every (condition, severity) cell and write the reports; returns the summary.

    ``tiles`` >= 2: images without a confident answer get a second look at ``tiles`` x ``tiles``
    overlapping tiles (``Predictor.refine_with_tiles``). ``species_model``: see ``Predictor.from_file``."""
    from wildwatch.data.splits import split_for_model
    from wildwatch.inference.backends import file_digest
    from wildwatch.inference.predictor import Predictor
    from wildwatch.models.bundle import load_bundle

    data, out = Path(data), Path(out)
    bundle = load_bundle(None if model in (None, "bundled") else Path(model))
    model_path = bundle.model_file
    names = _condition_names(conditions, pastes)
    predictor = Predictor.from_file(bundle, backend=backend, species_model=species_model)
    split, same_data = split_for_model(model_path, predictor.meta, data)
    samples = stratified_subset(split.part(split_name), limit_per_class, seed)
    if not samples:
        raise DataError(f"split {split_name!r} of {data} is empty")
    settings = {"model": file_digest(model_path), "data_files": [s.relpath for s in samples], "split": split_name,
                "seed": seed, "pastes": str(Path(pastes).resolve()) if pastes else None, "tiles": tiles,
                "species_model": predictor.runner.species_digest}
    _start_run(out, settings, {"model": str(model_path), "data": str(data), "split": split_name, "n": len(samples),
                               "seed": seed, "limit_per_class": limit_per_class, "pastes": settings["pastes"],
                               "tiles": tiles})
    cells = _Cells(predictor, np.array([predictor.classes.index(s.label) for s in samples]), tiles, out)
    todo = [c for c in [("clean", 0), *C.cells(names)] if c not in cells.done]
    items = [(i, str(data / s.relpath)) for i, s in enumerate(samples)]
    chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    bar = tqdm(total=len(todo) * len(chunks) and len(todo) * len(samples), desc="robustness", unit="img",
               disable=not progress)
    _run_cells(cells, todo, chunks, workers, seed, pastes, bar)
    bar.close()
    summary = summarise(cells.done, names)
    summary.update({"model": str(model_path), "data": str(data), "split": split_name, "n": len(samples), "tiles": tiles,
                    "limit_per_class": limit_per_class, "seed": seed, "data_fingerprint_matches": same_data})
    write_reports(out, cells.done, names, summary)
    return summary


def _condition_names(conditions: Sequence[str] | None, pastes: str | Path | None) -> list[str]:
    """The conditions to run (all of them by default; the context ones need ``pastes``), checked."""
    if pastes is not None and not Path(pastes).is_dir():
        raise FileNotFoundError(f"{pastes}: paste folder not found")
    names = list(conditions) if conditions else [*C.IMAGENET_C, *C.CCTV, *(C.CONTEXT if pastes else ())]
    for n in names:
        if n not in C.CONDITIONS:
            raise UnknownNameError(f"unknown condition {n!r}; choose from {', '.join(C.CONDITIONS)}")
        if C.CONDITIONS[n].family == "context" and pastes is None:
            raise UsageError(f"{n} needs --pastes (a folder with person/, landscape/ and other sub-folders)")
    return names


def _start_run(out: Path, settings: dict, record: dict) -> None:
    """The run folder: a run with other settings there is refused; run.json says what this one is."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "examples").mkdir(exist_ok=True)
    run_file = out / "run.json"
    digest = _settings_digest(settings)
    if run_file.exists() and json.loads(run_file.read_text()).get("digest") != digest:
        raise FileExistsError(f"{out}: holds a robustness run with other settings (model, data, split, seed or "
                              "pastes); choose another --out")
    run_file.write_text(json.dumps({"digest": digest, **record}, indent=2))


class _Cells:
    """Scores the degraded batches of each cell as they come, in order; a finished cell goes to
    cells.jsonl at once (an interrupted run resumes after the cells it finished)."""

    def __init__(self, predictor, targets: np.ndarray, tiles: int, out: Path):
        self.predictor, self.targets, self.tiles, self.out = predictor, targets, tiles, out
        self.log = out / "cells.jsonl"
        self.done = _read_done(self.log)
        self.preds: list[np.ndarray] = []
        self.unknown: list[np.ndarray] = []

    def add(self, cond: str, sev: int, k: int, batch: np.ndarray, last: bool) -> dict | None:
        """Score chunk ``k`` of a cell; the cell's record when it was its ``last`` chunk."""
        predictor, classes = self.predictor, self.predictor.classes
        if k == 0:
            Image.fromarray(batch[0]).save(self.out / "examples" / f"{cond}_{sev}.jpg", quality=90)
        outputs = predictor.outputs(batch)
        found = predictor.from_outputs([""] * len(batch), outputs)  # the decision every command uses
        if self.tiles >= 2:
            found = predictor.refine_with_tiles([Image.fromarray(a) for a in batch], found, self.tiles)
            self.preds.append(np.array([classes.index(f.top_k[0]["species"]) if f.top_k else -1 for f in found]))
        else:
            self.preds.append(outputs.logits.argmax(1))
        self.unknown.append(np.array([f.unknown for f in found]))
        if not last:
            return None
        p, u, targets = np.concatenate(self.preds), np.concatenate(self.unknown), self.targets
        rec = {"condition": cond, "severity": sev, "n": len(p),
               "correct": int((p == targets).sum()), "accuracy": round(float((p == targets).mean()), 5),
               "called_unknown": round(float(u.mean()), 5), "predictions": p.tolist()}
        with open(self.log, "a") as f:
            f.write(json.dumps(rec) + "\n")
        self.done[(cond, sev)] = rec
        self.preds, self.unknown = [], []
        return rec


def _run_cells(cells: _Cells, todo: list[tuple[str, int]], chunks: list, workers: int, seed: int,
               pastes: str | Path | None, bar) -> None:
    """Each cell's chunks degraded in worker processes (a few ahead), scored here in order."""
    tasks = iter([(cell, k) for cell in todo for k in range(len(chunks))])
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max(1, workers), mp_context=ctx, initializer=_init_worker,
                             initargs=(cells.predictor.preprocess.to_json(), str(pastes) if pastes else None)) as pool:
        queue: deque = deque()

        def refill():
            while len(queue) < 2 * max(1, workers) + 1:
                nxt = next(tasks, None)
                if nxt is None:
                    return
                (cond, sev), k = nxt
                queue.append((cond, sev, k, pool.submit(_make_chunk, cond, sev, seed, chunks[k])))

        refill()
        while queue:
            cond, sev, k, fut = queue.popleft()
            batch = fut.result()
            refill()
            rec = cells.add(cond, sev, k, batch, k == len(chunks) - 1)
            bar.update(len(batch))
            if rec is not None:
                bar.set_postfix(cell=f"{cond}/{sev}", acc=f"{rec['accuracy']:.3f}")


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 5) if values else None


def summarise(done: dict[tuple[str, int], dict], names: Sequence[str]) -> dict:
    clean = done[("clean", 0)]["accuracy"]
    acc = {(c, s): r["accuracy"] for (c, s), r in done.items()}
    summary: dict = {"clean_accuracy": clean, "families": {}, "conditions": {}}
    for fam in ("imagenet_c", "cctv", "context"):
        members = [n for n in names if C.CONDITIONS[n].family == fam]
        if not members:
            continue
        cells = [(n, s) for n in members for s in C.CONDITIONS[n].severities]
        low = [acc[c] for c in cells if c[1] <= 3]
        high = [acc[c] for c in cells if c[1] >= 4]
        everything = [acc[c] for c in cells]
        m = _mean(everything)
        summary["families"][fam] = {
            "conditions": members, "mean_accuracy": m, "mean_severity_1_3": _mean(low),
            "mean_severity_4_5": _mean(high),
            "relative_drop": round((clean - m) / clean, 5) if m is not None and clean else None,
        }
    for n in names:
        cond = C.CONDITIONS[n]
        summary["conditions"][n] = {str(s): {"accuracy": acc[(n, s)], "parameter": cond.parameter(s),
                                             "called_unknown": done[(n, s)]["called_unknown"]}
                                    for s in cond.severities}
    if "low_resolution" in names:
        summary["low_resolution_48px"] = acc[("low_resolution", C.LOW_RES_PX.index(48) + 1)]
    if "small_in_frame" in names:
        summary["animal_at_1_16_of_frame"] = acc[("small_in_frame", 2)]
        summary["animal_at_1_4_of_frame"] = acc[("small_in_frame", 1)]
    return summary


def write_reports(out: Path, done: dict, names: Sequence[str], summary: dict) -> None:
    from wildwatch.reports.html import page, png_data_uri, table_html

    rows = [{"family": "clean", "condition": "clean", "severity": 0, "parameter": "", **_cell(done[("clean", 0)])}]
    for n in names:
        cond = C.CONDITIONS[n]
        rows += [{"family": cond.family, "condition": n, "severity": s, "parameter": cond.parameter(s),
                  **_cell(done[(n, s)])} for s in cond.severities]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_heatmap(done, names, summary["clean_accuracy"], out / "heatmap.png")

    fam_rows = [{"family": f, **{k: v for k, v in d.items() if k != "conditions"}} for f, d in summary["families"].items()]
    examples = ["<table><tr><th>condition</th>" + "".join(f"<th>severity {s}</th>" for s in range(1, 6)) + "</tr>"]
    for n in names:
        cells = []
        for s in range(1, 6):
            img = out / "examples" / f"{n}_{s}.jpg"
            if (n, s) in done and img.exists():
                cells.append(f"<td><img src='examples/{img.name}' width='112' height='112' alt=''><br>"
                             f"{html.escape(C.CONDITIONS[n].parameter(s))}<br>acc {done[(n, s)]['accuracy']:.3f}</td>")
            else:
                cells.append("<td></td>")
        examples.append(f"<tr><td>{html.escape(n)}</td>{''.join(cells)}</tr>")
    examples.append("</table>")
    body = (f"<p>Model {html.escape(summary['model'])}; {summary['n']} photos of the {html.escape(summary['split'])} "
            f"split; clean accuracy {summary['clean_accuracy']:.4f}.</p>"
            f"<h2>Per family</h2>{table_html(fam_rows)}"
            f"<h2>Accuracy per condition and severity</h2><img src='{png_data_uri(out / 'heatmap.png')}' alt='heatmap'>"
            f"<h2>Examples (the first photo under each condition)</h2>{''.join(examples)}"
            f"<h2>All cells</h2>{table_html(rows)}")
    (out / "report.html").write_text(page("Robustness benchmark", body))


def _cell(r: dict) -> dict:
    return {"n": r["n"], "accuracy": r["accuracy"], "called_unknown": r["called_unknown"]}


def plot_heatmap(done: dict, names: Sequence[str], clean: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.full((len(names), 5), np.nan)
    for i, n in enumerate(names):
        for s in C.CONDITIONS[n].severities:
            grid[i, s - 1] = done[(n, s)]["accuracy"] * 100
    fig, ax = plt.subplots(figsize=(7, 0.38 * len(names) + 1.6))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    for i in range(len(names)):
        for j in range(5):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(5), [f"sev {s}" for s in range(1, 6)])
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_title(f"Top-1 accuracy (%) under each condition; clean {clean * 100:.2f}%")
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
