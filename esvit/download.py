"""Downloads: released checkpoints (``configs/releases.yaml``) and the transfer datasets torchvision can fetch.

One function does the transfer, :func:`fetch`:

- it resumes a partial file (``<name>.part``, an HTTP ``Range`` request; a server that ignores the range
  restarts it), shows progress, and renames the file into place only once it is complete and verified;
- it verifies an ``md5`` / ``sha256`` / ``size`` when given; a file that fails is removed and refused, with a
  message naming it, the URL and both checksums;
- without a known checksum it records the file's size and sha256 on first download (``<file>.json``) and checks
  the file against that record on every later use (a truncated or replaced file is refused, not used);
- ``mirror``: a site mirror laid out as ``wget -x`` saves (``<mirror>/<host>/<path>``), an ``http(s)://`` or
  ``file://`` URL or a local folder;
- ``cache``: a shared folder holding the downloads in the same ``<host>/<path>`` layout; a verified file found
  there is linked (or copied) instead of downloaded, and new downloads land there first.

Datasets are fetched by their torchvision class with ``download=True``, so torchvision decides the URLs, the
checksums and where each archive is unpacked; its downloader is routed through :func:`fetch` for the resume,
mirror, cache and progress. Only standard-library networking is used, and nothing here imports torch until a
dataset download starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import yaml

__all__ = [
    "DownloadError",
    "RELEASES_PATH",
    "load_releases",
    "mirror_url",
    "cache_path",
    "fetch",
    "fetch_release",
    "fetch_dataset",
    "check_recorded",
]

RELEASES_PATH = Path(__file__).resolve().parents[1] / "configs" / "releases.yaml"
CHUNK = 1 << 20
USER_AGENT = "esvit-pipeline"


class DownloadError(RuntimeError):
    """A download failed or a file failed its check; the message names the file, the URL and what to do."""


def load_releases(path: str | Path = RELEASES_PATH) -> dict[str, dict[str, Any]]:
    """The released checkpoints a run can name: key -> {url, arch, format, tasks, linear, knn, sha256, size}."""
    return yaml.safe_load(Path(path).read_text())


# ------------------------------------------------------------------------------------------------ locations


def _as_url(location: str) -> str:
    """A URL as it is, a local folder as a ``file://`` URL."""
    return location if "://" in location else Path(location).resolve().as_uri()


def mirror_url(url: str, mirror: str | None) -> str:
    """Where ``url`` is fetched from: itself, or its ``<host>/<path>`` under the mirror."""
    if not mirror:
        return url
    parts = urlsplit(url)
    return f"{_as_url(mirror).rstrip('/')}/{parts.netloc}{parts.path}"


def cache_path(url: str, cache: str | Path) -> Path:
    """The file of ``url`` in a download cache: ``<cache>/<host>/<path>``."""
    parts = urlsplit(url)
    rel = Path(parts.netloc) / parts.path.lstrip("/")
    if ".." in rel.parts or not parts.path.strip("/"):
        raise DownloadError(f"{url}: not a file URL that can be cached")
    return Path(cache) / rel


# -------------------------------------------------------------------------------------------------- checks


def _digest(path: Path, algo: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algo).hexdigest()


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


@dataclass
class Expected:
    """What a file must be; anything left ``None`` is not checked (and size + sha256 get recorded)."""

    md5: str | None = None
    sha256: str | None = None
    size: int | None = None

    def problems(self, path: Path) -> list[str]:
        out = []
        size = path.stat().st_size
        if self.size is not None and size != self.size:
            out.append(f"size {size:,} bytes, expected {self.size:,}")
        if self.md5 and (got := _digest(path, "md5")) != self.md5:
            out.append(f"md5 {got}, expected {self.md5}")
        if self.sha256 and (got := _digest(path, "sha256")) != self.sha256:
            out.append(f"sha256 {got}, expected {self.sha256}")
        return out


def _check_record(path: Path, url: str, expected: Expected) -> Expected:
    """``expected`` completed from the file's record (size and sha256 of its first download), if any."""
    record = _record_path(path)
    if not record.is_file():
        return expected
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        raise DownloadError(f"{record}: unreadable download record; delete it and {path.name} to download again") from None
    return Expected(md5=expected.md5, sha256=expected.sha256 or data.get("sha256"),
                    size=expected.size if expected.size is not None else data.get("size"))  # fmt: skip


def _write_record(path: Path, url: str) -> None:
    from esvit.atomic import atomic_write_json

    atomic_write_json(_record_path(path), {"url": url, "size": path.stat().st_size, "sha256": _digest(path, "sha256"),
                                           "downloaded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})  # fmt: skip


def _verify_existing(path: Path, url: str, expected: Expected) -> None:
    full = _check_record(path, url, expected)
    bad = full.problems(path)
    if bad:
        raise DownloadError(
            f"{path}: {'; '.join(bad)} (of {url}). The file is damaged or another file: delete it (and "
            f"{_record_path(path).name} if present) to download it again"
        )


def check_recorded(path: str | Path) -> None:
    """If ``path`` was downloaded (it has a ``<file>.json`` record), check it is still the recorded file."""
    path = Path(path)
    record = _record_path(path)
    if path.is_file() and record.is_file():
        _verify_existing(path, json.loads(record.read_text()).get("url", "?"), Expected())


# ------------------------------------------------------------------------------------------------ transfer


def _transfer(source: str, part: Path, desc: str, progress: bool) -> None:
    """Append ``source`` to ``part`` from where it stops (a ``Range`` request); restart if the server ignores it."""
    from tqdm import tqdm

    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset and source.startswith(("http://", "https://")):
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(source, headers=headers), timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the partial file is already whole
            return
        raise DownloadError(f"{source}: HTTP {exc.code} {exc.reason}; check the URL or download.mirror") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"{source}: cannot connect ({reason}); check the network, or set download.mirror / "
                            "download.cache to a copy reachable from here") from None  # fmt: skip
    with response:
        resumed = offset and getattr(response, "status", None) == 206
        if not resumed:
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with open(part, "ab" if resumed else "wb") as f, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
            disable=not progress, file=sys.stderr, mininterval=1.0,
        ) as bar:  # fmt: skip
            try:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
            except (OSError, urllib.error.URLError) as exc:
                raise DownloadError(f"{source}: the connection broke after {f.tell():,} bytes ({exc}); rerun to "
                                    "continue from there") from None  # fmt: skip
        if total is not None and part.stat().st_size < total:
            raise DownloadError(f"{source}: the connection closed after {part.stat().st_size:,} of {total:,} bytes; "
                                "rerun to continue from there")  # fmt: skip


def _download_to(path: Path, url: str, expected: Expected, mirror: str | None, progress: bool) -> None:
    """Download ``url`` to ``path`` (through ``<path>.part``), verify, rename into place, record if unchecked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    source = mirror_url(url, mirror)
    _transfer(source, part, path.name, progress)
    bad = expected.problems(part)
    if bad:
        part.unlink()
        raise DownloadError(
            f"{path.name} from {source}: {'; '.join(bad)}. The download is damaged or the server holds another "
            "file; it was removed and nothing was unpacked. Rerun to download again, or check download.mirror"
        )
    os.replace(part, path)
    if not (expected.md5 or expected.sha256):
        _write_record(path, url)


def _place(src: Path, dest: Path) -> None:
    """``dest`` becomes the cached file ``src``: a hard link, else a copy (written under a temp name)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    if _record_path(src).is_file():
        shutil.copyfile(_record_path(src), _record_path(dest))


def fetch(url: str, dest: str | Path, *, md5: str | None = None, sha256: str | None = None, size: int | None = None,
          mirror: str | None = None, cache: str | Path | None = None, progress: bool = True) -> Path:  # fmt: skip
    """Make ``dest`` the verified file of ``url``.

    An existing ``dest`` is checked (against the checksums given, else its record) and used; otherwise the file
    comes from the cache or is downloaded (into the cache first when there is one).

    Raises:
        DownloadError: the server or network failed (a rerun resumes), or a file failed its check (it is
            removed when it was just downloaded, refused and named when it was there before).
    """
    dest = Path(dest)
    expected = Expected(md5=md5, sha256=sha256, size=size)
    if dest.is_file():
        _verify_existing(dest, url, expected)
        return dest
    if cache:
        cached = cache_path(url, cache)
        if cached.is_file():
            _verify_existing(cached, url, expected)
        else:
            _download_to(cached, url, expected, mirror, progress)
        _place(cached, dest)
        return dest
    _download_to(dest, url, expected, mirror, progress)
    return dest


# ---------------------------------------------------------------------------------------- releases, datasets


def fetch_release(name: str, dest: str | Path, *, mirror: str | None = None, cache: str | Path | None = None,
                  progress: bool = True) -> Path:  # fmt: skip
    """Download the released checkpoint ``name`` (a key of ``configs/releases.yaml``) to ``dest``."""
    releases = load_releases()
    if name not in releases:
        from esvit.config import _did_you_mean

        raise DownloadError(f"unknown release {name!r}.{_did_you_mean(name, releases)} Known: {', '.join(releases)}")
    entry = releases[name]
    return fetch(entry["url"], dest, sha256=entry.get("sha256"), size=entry.get("size"), mirror=mirror, cache=cache,
                 progress=progress)  # fmt: skip


@contextlib.contextmanager
def _torchvision_through_fetch(mirror: str | None, cache: str | Path | None, progress: bool, fetched: list) -> Iterator[None]:
    """Route torchvision's ``download_url`` (what its ``download=True`` calls for every file) through
    :func:`fetch`, in every dataset module that imported it by name."""
    import torchvision.datasets  # noqa: F401  (loads the dataset modules)
    import torchvision.datasets.utils as tvu

    original = tvu.download_url

    def download_url(url: str, root: str | Path, filename: str | None = None, md5: str | None = None, *a: Any, **k: Any) -> None:
        dest = Path(root).expanduser() / (filename or os.path.basename(urlsplit(url).path))
        fetch(url, dest, md5=md5, mirror=mirror, cache=cache, progress=progress)
        fetched.append({"url": url, "file": str(dest), "md5": md5})

    patched = [m for name, m in list(sys.modules.items())
               if name.startswith("torchvision.datasets") and getattr(m, "download_url", None) is original]  # fmt: skip
    for module in patched:
        module.download_url = download_url
    try:
        yield
    finally:
        for module in patched:
            module.download_url = original


def fetch_dataset(name: str, root: str | Path, *, mirror: str | None = None, cache: str | Path | None = None,
                  progress: bool = True) -> list[dict]:  # fmt: skip
    """Download and unpack the transfer dataset ``name`` (a key of ``configs/datasets.yaml``) under ``root``,
    as its torchvision class lays it out, and open every split once to check it.

    Returns:
        The files fetched: ``[{url, file, md5}]`` (empty when everything was there already).
    """
    from esvit.data.transfer import load_registry

    registry = load_registry()
    if name not in registry:
        from esvit.config import _did_you_mean

        raise DownloadError(f"unknown dataset {name!r}.{_did_you_mean(name, registry)} Known: {', '.join(registry)}")
    entry = registry[name]
    if not entry.get("auto_download"):
        raise DownloadError(f"{name} cannot be downloaded automatically: download {entry['download']} by hand and "
                            f"unpack it under the dataset's root so that it holds {entry['layout']}; then set "
                            f"download: false for it")  # fmt: skip
    import torchvision.datasets as tvd

    cls = getattr(tvd, entry["class"])
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    fetched: list[dict] = []
    with _torchvision_through_fetch(mirror, cache, progress, fetched):
        for split, kwargs in entry["splits"].items():
            try:
                cls(root=str(root), download=True, **kwargs)
            except DownloadError:
                raise
            except (RuntimeError, OSError, ValueError) as exc:
                raise DownloadError(f"{name} ({split}): torchvision {entry['class']} could not be fetched or opened "
                                    f"under {str(root)!r}: {exc}") from None  # fmt: skip
    return fetched
