"""A plugin's files as `{relative path: bytes}`: read from a zip or tgz archive or a folder, or packed into a zip.

Archives come from the database, so they are untrusted: entry names must be relative and stay inside
the plugin (no absolute paths, drive letters or `..`), and the file count and the total unpacked size
are capped before anything is decompressed past the cap (zip bombs). Only regular files are taken
(no symlinks or devices). When every file sits under one top folder (`package/` in npm tarballs,
`repo-main/` in GitHub archives), that folder is the plugin's root and is stripped.
"""

from __future__ import annotations

import io
import os
import posixpath
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Folders never part of a plugin: VCS data, installed dependencies (a plugin cannot use them here),
# caches. Hidden files are left out too, so that `.env` files never end up in the database.
SKIPPED_FOLDERS = frozenset({"node_modules", "__pycache__"})
# macOS Finder adds this folder to the zips it makes.
_MACOS_METADATA = "__MACOSX"
# Fixed entry time, so that packing the same files twice gives the same bytes.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class ArchiveError(ValueError):
    """The archive or folder cannot be read as a plugin; the message says why."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_files: int = 5000
    max_total_bytes: int = 100 * 1024 * 1024


DEFAULT_LIMITS = Limits()


class _NotThisFormat(Exception):
    """The bytes are not (a readable) archive of the format tried."""


def read_archive(data: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, bytes]:
    """The files of a zip archive, or else of a (gzipped) tar archive, with the root folder stripped."""
    for reader in (_read_zip, _read_tar):
        try:
            return _strip_root(reader(data, limits))
        except _NotThisFormat:
            continue
    raise ArchiveError("Could not read archive as .zip or .tgz")


def read_folder(folder: Path, limits: Limits = DEFAULT_LIMITS) -> dict[str, bytes]:
    """The files under `folder`, without hidden files and folders and without SKIPPED_FOLDERS."""
    files: dict[str, bytes] = {}
    total = 0
    for directory, subfolders, names in os.walk(folder):
        subfolders[:] = sorted(
            name for name in subfolders if not name.startswith(".") and name not in SKIPPED_FOLDERS
        )
        for name in sorted(names):
            path = Path(directory, name)
            if name.startswith(".") or not path.is_file():
                continue
            if len(files) >= limits.max_files:
                raise ArchiveError(f"{folder} has more than {limits.max_files} files")
            total += path.stat().st_size
            if total > limits.max_total_bytes:
                raise ArchiveError(f"{folder} holds more than {limits.max_total_bytes} bytes")
            files[path.relative_to(folder).as_posix()] = path.read_bytes()
    return files


def pack_zip(files: dict[str, bytes]) -> bytes:
    """A deflated zip of `files` (no root folder), the same bytes for the same files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            archive.writestr(info, files[name], compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def safe_path(name: str) -> str:
    """`name` as a normalised relative path, or ArchiveError if it is absolute or leaves its root."""
    path = name.replace("\\", "/")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if path.startswith("/") or (parts and ":" in parts[0]) or ".." in parts:
        raise ArchiveError(f"unsafe path in archive: {name!r}")
    return posixpath.join(*parts) if parts else ""


def _read_zip(data: bytes, limits: Limits) -> dict[str, bytes]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError) as error:
        raise _NotThisFormat from error
    with archive:
        _check_count(len(archive.infolist()), limits)
        entries = [info for info in archive.infolist() if not info.is_dir()]
        if sum(info.file_size for info in entries) > limits.max_total_bytes:
            raise _too_big(limits)
        files: dict[str, bytes] = {}
        budget = limits.max_total_bytes
        for info in entries:
            name = safe_path(info.filename)
            try:
                with archive.open(info) as entry:
                    # zipfile stops at the declared size; bound the read anyway rather than rely on that.
                    contents = entry.read(budget + 1)
            except (zipfile.BadZipFile, RuntimeError, NotImplementedError, zlib.error, EOFError) as error:
                raise _NotThisFormat from error
            budget -= len(contents)
            if budget < 0:
                raise _too_big(limits)
            files[name] = contents
        return files


def _read_tar(data: bytes, limits: Limits) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            budget = limits.max_total_bytes
            for count, member in enumerate(_members(archive), start=1):
                _check_count(count, limits)
                if not member.isfile():
                    continue
                name = safe_path(member.name)
                budget -= member.size  # a tar header's size is exact: check before decompressing
                if budget < 0:
                    raise _too_big(limits)
                entry = archive.extractfile(member)
                assert entry is not None  # regular files always have contents
                files[name] = entry.read()
    except (tarfile.TarError, zlib.error, EOFError, OSError) as error:
        raise _NotThisFormat from error
    return files


def _members(archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Members one at a time (TarFile.getmembers would read every header first, without a cap)."""
    while (member := archive.next()) is not None:
        yield member


def _strip_root(files: dict[str, bytes]) -> dict[str, bytes]:
    files = {
        name: contents
        for name, contents in files.items()
        if name and name.split("/", 1)[0] != _MACOS_METADATA
    }
    tops = {name.split("/", 1)[0] for name in files}
    if len(tops) == 1 and all("/" in name for name in files):
        return {name.split("/", 1)[1]: contents for name, contents in files.items()}
    return files


def _check_count(count: int, limits: Limits) -> None:
    if count > limits.max_files:
        raise ArchiveError(f"archive has more than {limits.max_files} entries")


def _too_big(limits: Limits) -> ArchiveError:
    return ArchiveError(f"archive unpacks to more than {limits.max_total_bytes} bytes")
