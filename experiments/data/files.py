"""Finding a dataset's files on disk or downloading them, with one clear error if neither works."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from experiments.data.base import DataUnavailableError

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 30


def default_cache_dir() -> Path:
    """Where downloads go: ``$BACKPROP_BENCH_DATA`` or ``~/.cache/backprop-bench``."""
    return Path(os.environ.get("BACKPROP_BENCH_DATA", Path.home() / ".cache" / "backprop-bench"))


def _find(directory: Path, filename: str) -> Path | None:
    """``directory/filename``, or its ``.gz`` twin, or ``None``."""
    for candidate in (directory / filename, directory / f"{filename}.gz"):
        if candidate.is_file():
            return candidate
    return None


def locate_files(
    dataset: str,
    filenames: Sequence[str],
    search_dirs: Sequence[str | Path | None],
    base_url: str,
    download: bool,
    fix_hint: str,
) -> dict[str, Path]:
    """Return the path of every file in ``filenames``, all from one directory.

    Each directory of ``search_dirs`` (``None`` entries are skipped) is tried in order; a file may
    be stored plain or gzip-compressed (``name.gz``). If none holds them all and ``download`` is
    true, ``base_url + name + ".gz"`` is fetched into the last directory.

    Args:
        dataset: name used in messages, e.g. ``"fashion_mnist"``.
        filenames: required file names without ``.gz``.
        search_dirs: directories to look in, most specific first; the last is the download target.
        base_url: URL prefix of the ``.gz`` files.
        download: whether a download may be attempted.
        fix_hint: how a user can provide the files, appended to the error.

    Raises:
        DataUnavailableError: naming every directory tried, the download outcome and the fix.
    """
    dirs = [Path(d).expanduser() for d in search_dirs if d]
    for directory in dirs:
        found = {name: _find(directory, name) for name in filenames}
        if all(found.values()):
            log.info("%s: using files in %s", dataset, directory)
            return {name: path for name, path in found.items() if path is not None}
    target = dirs[-1]
    if download:
        try:
            return {
                name: download_file(f"{base_url}{name}.gz", target / f"{name}.gz")
                for name in filenames
            }
        except OSError as error:
            outcome = f"the download from {base_url} failed ({error})"
    else:
        outcome = "downloading is disabled (data.download=false)"
    raise DataUnavailableError(
        f"{dataset}: could not find {', '.join(filenames)} (plain or .gz) in "
        f"{describe_dirs(dirs)}, and {outcome}. Fix: {fix_hint}"
    )


def describe_dirs(dirs: Sequence[Path]) -> str:
    """``"a"`` or ``"any of a, b"``, for error messages."""
    return str(dirs[0]) if len(dirs) == 1 else f"any of {', '.join(map(str, dirs))}"


def download_file(url: str, destination: Path) -> Path:
    """Fetch ``url`` to ``destination`` atomically (no partial file is left on failure).

    Returns ``destination`` at once if it already exists.

    Raises:
        OSError: any network or file-system failure (``urllib.error.URLError`` included).
    """
    if destination.is_file():
        return destination
    log.info("downloading %s -> %s", url, destination)
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:  # noqa: S310
        # Only now that the server answered: a failed attempt leaves no empty folders behind.
        destination.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=destination.parent, delete=False) as tmp:
            shutil.copyfileobj(response, tmp)
    os.replace(tmp.name, destination)
    return destination
