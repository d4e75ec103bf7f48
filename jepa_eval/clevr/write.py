"""Write rendered scenes in the CLEVR_v1.0 layout:
``images/{split}/CLEVR_{split}_{i:06d}.png`` and ``scenes/CLEVR_{split}_scenes.json``."""
from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from ..atomic import atomic_write_json
from .render import render_scene

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}   # part of each scene's seed: splits never share scenes


def image_shape(size: int) -> tuple[int, int]:
    """(width, height) for ``--size``: the width, with CLEVR's 480 x 320 aspect ratio."""
    return size, max(1, round(size * 2 / 3))


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    # one independent stream per scene: output does not depend on worker count or order
    return np.random.default_rng([seed, SPLIT_IDS[split], index])


def render_one(job: tuple[str, str, int, int, int, int]) -> dict:
    """Render scene ``index`` of ``split``, write its PNG under ``out`` and return its scene record."""
    out, split, index, size, seed, supersample = job
    width, height = image_shape(size)
    img, scene = render_scene(scene_rng(seed, split, index), width, height, supersample)
    name = f"CLEVR_{split}_{index:06d}.png"
    Image.fromarray(img).save(Path(out) / "images" / split / name, format="PNG")
    return {"split": split, "image_index": index, "image_filename": name, **scene}


def write_split(out: str | Path, split: str, n: int, size: int, seed: int, workers: int = 1,
                supersample: int = 2, progress: Callable[[Iterable, int], Iterable] | None = None
                ) -> list[dict]:
    """Render ``n`` scenes of ``split`` into ``out`` (a CLEVR_v1.0 folder); returns the scene records.
    Identical arguments give identical files, whatever ``workers``."""
    out = Path(out)
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    (out / "scenes").mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), split, i, size, seed, supersample) for i in range(n)]
    wrap = progress or (lambda it, total: it)
    if workers > 1 and n > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            scenes = list(wrap(pool.imap(render_one, jobs, chunksize=8), n))
    else:
        scenes = list(wrap(map(render_one, jobs), n))
    width, height = image_shape(size)
    info = {"split": split, "version": "1.0", "generator": "jepa-eval make-clevr (procedural, numpy)",
            "seed": seed, "width": width, "height": height, "supersample": supersample,
            "license": "Creative Commons Attribution (CC BY 4.0)"}
    path = out / "scenes" / f"CLEVR_{split}_scenes.json"
    atomic_write_json(path, {"info": info, "scenes": scenes}, newline=False)   # a reader never sees half a file
    return scenes
