"""Finding a dataset's files on disk or downloading them, with one clear error if neither works.

``data.root``, when set, is the one place a dataset's files are read from (and downloaded to):
a folder that does not exist, or lacks the files, is an error naming ``data.root``, never a
silent fall-back to another copy. Downloads use https only, and every downloaded file is
checked against its published MD5 checksum before it is used (and again whenever it is read
from the download cache), so a truncated or tampered file is refused with the fix.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from experiments.data.base import DataUnavailableError

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 30


def default_cache_dir() -> Path:
    """Where downloads go: ``$BACKPROP_BENCH_DATA`` or ``~/.cache/backprop-bench``."""
    return Path(os.environ.get("BACKPROP_BENCH_DATA", Path.home() / ".cache" / "backprop-bench"))


def check_root(dataset: str, root: str | Path | None) -> Path | None:
    """``data.root`` as a path (``~`` expanded), or ``None`` when unset.

    Raises:
        DataUnavailableError: naming ``data.root`` if it is set but not an existing folder.
    """
    if root is None or str(root) == "":
        return None
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataUnavailableError(
            f"data.root: {path} is not an existing folder ({dataset} reads its files from "
            "data.root when it is set). Fix: create it and put the files there, correct the "
            "path, or leave data.root=null to use the default places."
        )
    return path


def md5sum(path: Path) -> str:
    """The MD5 hex digest of the file at ``path`` (read in 1 MiB chunks)."""
    digest = hashlib.md5()  # noqa: S324 - the checksums the datasets publish are MD5
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: Path, expected: str, source: str) -> None:
    """Refuse a file whose MD5 is not the published one.

    Args:
        path: the file.
        expected: the published MD5 hex digest.
        source: where the file came from, for the message (a URL or a folder).

    Raises:
        DataUnavailableError: naming the file, both digests and the fix.
    """
    actual = md5sum(path)
    if actual != expected:
        raise DataUnavailableError(
            f"{path}: MD5 {actual} is not the published {expected} of this file (from "
            f"{source}): it is truncated, corrupt or not the official file. Fix: delete it "
            "and run again to download it afresh, or replace it with the official file."
        )


def unreadable(dataset: str, path: Path, error: BaseException) -> DataUnavailableError:
    """The error for a data file that exists but cannot be read (truncated, corrupt, foreign)."""
    detail = str(error).removeprefix(f"{path}: ") or type(error).__name__
    return DataUnavailableError(
        f"{dataset}: {path} is corrupt or truncated ({detail}). Fix: delete it and run again "
        "to download it afresh (data.download=true), or replace it with the official file."
    )


def _find(directory: Path, filename: str) -> Path | None:
    """``directory/filename``, or its ``.gz`` twin, or ``None``."""
    for candidate in (directory / filename, directory / f"{filename}.gz"):
        if candidate.is_file():
            return candidate
    return None


def locate_files(
    dataset: str,
    filenames: Sequence[str],
    root: str | Path | None,
    default_dirs: Sequence[str | Path | None],
    base_url: str,
    download: bool,
    fix_hint: str,
    checksums: Mapping[str, str],
) -> dict[str, Path]:
    """Return the path of every file in ``filenames``, all from one directory.

    With ``root`` (``data.root``) set, only that folder is used: files are read there, and
    downloaded there when missing. Otherwise each of ``default_dirs`` (``None`` entries are
    skipped) is tried in order, and downloads go to the last one, the download cache. A file
    may be stored plain or gzip-compressed (``name.gz``); downloads fetch
    ``base_url + name + ".gz"``, over https, and check it against ``checksums``. Files read from
    the download cache are checked again (a truncated earlier download is refused).

    Args:
        dataset: name used in messages, e.g. ``"fashion_mnist"``.
        filenames: required file names without ``.gz``.
        root: ``data.root``, or ``None``.
        default_dirs: directories to look in without ``root``, the download cache last.
        base_url: https URL prefix of the ``.gz`` files.
        download: whether a download may be attempted.
        fix_hint: how a user can provide the files, appended to the error.
        checksums: published MD5 of each ``<name>.gz``.

    Raises:
        DataUnavailableError: naming every directory tried (``data.root`` when set), the
            download outcome and the fix; or a file whose checksum does not match.
    """
    root_dir = check_root(dataset, root)
    dirs = [root_dir] if root_dir else [Path(d).expanduser() for d in default_dirs if d]
    cache = None if root_dir else dirs[-1]
    for directory in dirs:
        found = {name: _find(directory, name) for name in filenames}
        if all(found.values()):
            log.info("%s: using files in %s", dataset, directory)
            paths = {name: path for name, path in found.items() if path is not None}
            if directory == cache:
                for name, path in paths.items():
                    if path.suffix == ".gz" and f"{name}.gz" in checksums:
                        verify_checksum(path, checksums[f"{name}.gz"], f"{base_url}{name}.gz")
            return paths
    target = dirs[-1]
    if download:
        try:
            return {
                name: download_file(
                    f"{base_url}{name}.gz", target / f"{name}.gz", checksums.get(f"{name}.gz")
                )
                for name in filenames
            }
        except OSError as error:
            outcome = f"the download from {base_url} failed ({error})"
    else:
        outcome = "downloading is disabled (data.download=false)"
    where = f"data.root={root_dir}" if root_dir else describe_dirs(dirs)
    raise DataUnavailableError(
        f"{dataset}: could not find {', '.join(filenames)} (plain or .gz) in "
        f"{where}, and {outcome}. Fix: {fix_hint}"
    )


def describe_dirs(dirs: Sequence[Path]) -> str:
    """``"a"`` or ``"any of a, b"``, for error messages."""
    return str(dirs[0]) if len(dirs) == 1 else f"any of {', '.join(map(str, dirs))}"


def download_file(url: str, destination: Path, md5: str | None = None) -> Path:
    """Fetch ``url`` (https only) to ``destination`` atomically, checked against ``md5``.

    Returns ``destination`` at once if it already exists (checked against ``md5`` too). No
    partial or mismatching file is ever left at ``destination``.

    Raises:
        OSError: any network or file-system failure (``urllib.error.URLError`` included), or a
            URL that is not https.
        DataUnavailableError: if the file's MD5 is not ``md5``.
    """
    if destination.is_file():
        if md5 is not None:
            verify_checksum(destination, md5, url)
        return destination
    if not url.startswith("https://"):
        raise OSError(f"refusing to download over an unencrypted connection: {url}")
    log.info("downloading %s -> %s", url, destination)
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:  # noqa: S310
        # Only now that the server answered: a failed attempt leaves no empty folders behind.
        destination.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=destination.parent, delete=False) as tmp:
            try:
                shutil.copyfileobj(response, tmp)
            except BaseException:
                Path(tmp.name).unlink(missing_ok=True)
                raise
    actual = md5sum(Path(tmp.name)) if md5 is not None else None
    if actual != md5:
        Path(tmp.name).unlink()
        raise DataUnavailableError(
            f"{url}: the downloaded file's MD5 {actual} is not the published {md5} (a broken "
            "transfer, or not the official file); nothing was kept. Fix: run again, or put the "
            f"official {destination.name} into a folder and pass data.root=<that folder>."
        )
    os.replace(tmp.name, destination)
    return destination
