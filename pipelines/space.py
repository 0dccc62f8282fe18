"""A Hugging Face Space: its persistent storage (/data, when turned on) for the log and the model cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, MutableMapping

# The environment is passed in by the entry points (demo/app.py, settings.from_env): the core reads none itself.

PERSISTENT = Path("/data")  # where a Space mounts persistent storage once it is turned on in its settings


def on_space(environ: Mapping[str, str]) -> bool:
    return "SPACE_ID" in environ


def persistent_dir(environ: Mapping[str, str], root: Path = PERSISTENT) -> Path | None:
    """/data on a Space that has persistent storage (a writable folder), else None."""
    if not on_space(environ):
        return None
    return root if root.is_dir() and os.access(root, os.W_OK) else None


def use_persistent_cache(environ: MutableMapping[str, str], root: Path = PERSISTENT) -> str | None:
    """Point HF_HOME at persistent storage (unless set), so models are not downloaded again after a restart.

    Must run before huggingface_hub is imported: it reads HF_HOME once.
    """
    folder = persistent_dir(environ, root)
    if folder is None or "HF_HOME" in environ:
        return None
    environ["HF_HOME"] = str(folder / ".huggingface")
    return environ["HF_HOME"]


def log_is_ephemeral(db: str, environ: Mapping[str, str], root: Path = PERSISTENT) -> bool:
    """On a Space, whether the log lives outside persistent storage (lost at every restart)."""
    if not on_space(environ):
        return False
    folder = persistent_dir(environ, root)
    return folder is None or not Path(db).resolve().is_relative_to(folder.resolve())
