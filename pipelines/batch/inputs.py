"""What a batch job's INPUT names: a folder, a glob, a text file of paths, or a URI pyarrow's filesystems read."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass

from pyarrow import fs as pafs

# A folder is searched for the formats intake accepts (by name: a broken file with such a name is read and
# refused). A glob or a list names its files itself, so it is taken as given.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
LIST_SUFFIXES = (".txt", ".lst", ".list")
_GLOB = set("*?[")


class InputError(ValueError):
    """An INPUT that names nothing readable, with one sentence saying why."""


@dataclass(frozen=True)
class Found:
    """One file to recognise: its path as OUT records it, its path on its filesystem, and its size in bytes."""

    path: str
    location: str
    size: int


@dataclass(frozen=True)
class Listing:
    """The files an INPUT names, all on one filesystem."""

    filesystem: pafs.FileSystem
    files: list[Found]


def _split(uri: str) -> tuple[pafs.FileSystem, str, str]:
    """A filesystem, the path on it, and the prefix that turns such a path back into what the user wrote."""
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        # a URI parser refuses glob characters ("[" at least): parse the part before the first wildcard's folder
        wild = min((uri.index(c) for c in _GLOB if c in uri), default=len(uri))
        cut = uri.rindex("/", 0, wild) if wild < len(uri) else len(uri)
        try:
            filesystem, path = pafs.FileSystem.from_uri(uri[:cut])
            path += uri[cut:]
        except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise InputError(f"{uri} cannot be read: {str(exc).splitlines()[0]}") from None
        prefix = "" if isinstance(filesystem, pafs.LocalFileSystem) else f"{scheme}://"
        return filesystem, path, prefix
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri)), ""


def _glob(filesystem: pafs.FileSystem, pattern: str) -> list[pafs.FileInfo]:
    """The files matching a glob: the folder before its first wildcard, searched, then matched whole."""
    parts = pattern.split("/")
    fixed = next(i for i, part in enumerate(parts) if _GLOB & set(part))
    base = "/".join(parts[:fixed]) or "/"
    recursive = "**" in pattern or len(parts) - fixed > 1
    infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=recursive, allow_not_found=True))
    return [i for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, pattern)]


def _folder(filesystem: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    infos = filesystem.get_file_info(pafs.FileSelector(folder, recursive=True))
    return [i for i in infos if i.type == pafs.FileType.File and not i.base_name.startswith(".")
            and i.base_name.lower().endswith(IMAGE_SUFFIXES)]


def _named(uri: str) -> tuple[pafs.FileSystem, str, list[pafs.FileInfo]]:
    """The files one folder, glob or file path names, on its filesystem, with its prefix."""
    filesystem, path, prefix = _split(uri)
    if _GLOB & set(path):
        return filesystem, prefix, _glob(filesystem, path)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        return filesystem, prefix, _folder(filesystem, path)
    return filesystem, prefix, [info]  # a file, or one that is missing: a missing file becomes a refusal


def _list_file(path: str) -> list[str]:
    """The paths a text file lists, one a line; blank lines and lines starting with # are skipped."""
    with open(path, encoding="utf-8") as fh:
        lines = [line.strip() for line in fh]
    base = os.path.dirname(os.path.abspath(path))
    # a relative path in a list is relative to the list, so a list travels with its folder
    return [line if "://" in line or os.path.isabs(line) else os.path.join(base, line)
            for line in lines if line and not line.startswith("#")]


def list_input(uri: str) -> Listing:
    """Every file INPUT names, sorted by path; InputError when it names nothing or mixes filesystems."""
    local_list = "://" not in uri and os.path.isfile(uri) and uri.lower().endswith(LIST_SUFFIXES)
    named = [_named(u) for u in (_list_file(uri) if local_list else [uri])]
    if not named:
        raise InputError(f"The list {uri} names no files.")
    kinds = {type(filesystem).__name__ for filesystem, _, _ in named}
    if len(kinds) > 1:
        raise InputError(f"{uri} mixes filesystems ({', '.join(sorted(kinds))}); run one job per filesystem.")
    files = {}
    for _, prefix, infos in named:
        for info in infos:
            size = info.size if info.type == pafs.FileType.File else -1  # -1: not a readable file
            files[prefix + info.path] = Found(prefix + info.path, info.path, size)
    if not files:
        raise InputError(f"{uri} names no image files.")
    return Listing(named[0][0], sorted(files.values(), key=lambda f: f.path))
