"""The suite's environment variables, read here and nowhere below the command layer: commands resolve them
into plain values (a cache folder, a data root) and pass those down, so library calls behave the same
whatever the environment of the process that makes them.

- ``JEPA_EVAL_CACHE``: the feature cache folder (which also remembers checkpoint hashes) when ``--cache``
  is not given; else ``~/.cache/jepa-eval/features``.
- ``JEPA_EVAL_DATA``: a data home holding one folder per dataset name (``$JEPA_EVAL_DATA/fashion-mnist``),
  used for a dataset when neither ``--root`` nor the battery names a root.

Variables a user writes into a battery (``root: $IMAGENET_ROOT``) are the battery's own syntax and are
expanded where it is read; the launch environment of a process (SLURM's, torchrun's) is read by that
process's entry point (``launchers/units.py``, ``pretrain/train.py``)."""
from __future__ import annotations

import os
from pathlib import Path

CACHE_VAR, DATA_VAR = "JEPA_EVAL_CACHE", "JEPA_EVAL_DATA"


def cache_dir(given: str | os.PathLike | None = None) -> Path:
    """``given``, else ``$JEPA_EVAL_CACHE``, else the library default."""
    from ..hashindex import default_cache_dir
    if given:
        return Path(given).expanduser()
    return Path(os.environ[CACHE_VAR]).expanduser() if os.environ.get(CACHE_VAR) else default_cache_dir()


def data_home() -> str | None:
    """``$JEPA_EVAL_DATA`` (a folder holding one folder per dataset), or None."""
    return os.environ.get(DATA_VAR) or None


def data_root(dataset: str, given: str | None = None) -> str | None:
    """``given``, else ``$JEPA_EVAL_DATA/DATASET`` when that folder exists, else None (the dataset's own
    default places)."""
    if given:
        return given
    home = data_home()
    if home and (Path(home).expanduser() / dataset).is_dir():
        return str(Path(home).expanduser() / dataset)
    return None


def default_roots() -> dict[str, str]:
    """{dataset: ``$JEPA_EVAL_DATA/DATASET``} for every registered dataset that has a folder there."""
    if not data_home():
        return {}
    from ..datasets import DATASETS
    return {name: root for name in DATASETS.names() if (root := data_root(name))}
