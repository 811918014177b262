"""Downloads: released checkpoints (``esvit/resources/releases.yaml``) and the transfer datasets torchvision can fetch.

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
import functools
import hashlib
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from esvit.errors import DownloadError
from esvit.fields import did_you_mean
from esvit.resources import resource_path

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
    "known_entry",
]

RELEASES_PATH = resource_path("releases.yaml")
CHUNK = 1 << 20
USER_AGENT = "esvit-pipeline"


@functools.cache
def load_releases(path: str | Path = RELEASES_PATH) -> dict[str, dict[str, Any]]:
    """The released checkpoints a run can name: key -> {url, arch, format, tasks, linear, knn, sha256, size}."""
    return yaml.safe_load(Path(path).read_text())


def known_entry(table: dict[str, dict], name: str, what: str) -> dict:
    """``table[name]``, or a DownloadError naming the close matches and the known names."""
    if name not in table:
        raise DownloadError(f"unknown {what} {name!r}.{did_you_mean(name, table)} Known: {', '.join(table)}")
    return table[name]


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


def _read_record(path: Path) -> dict | None:
    """The first-download record of ``path`` (``<file>.json``), or None; an unreadable one is refused."""
    record = _record_path(path)
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("size"), int) or not isinstance(data.get("sha256"), str):
        raise DownloadError(f"{record}: unreadable download record; delete it and {path.name} to download again")
    return data


def _check_record(path: Path, url: str, expected: Expected) -> Expected:
    """``expected`` completed from the file's record (size and sha256 of its first download), if any; a file
    recorded for another URL (another release, or a URL corrected since) is refused."""
    data = _read_record(path)
    if data is None:
        return expected
    if url != "?" and data.get("url") not in (None, url):
        raise DownloadError(
            f"{path}: holds the download of {data['url']}, not of {url}; give another path, or delete "
            f"it and {_record_path(path).name} to download {url} there"
        )
    return Expected(
        md5=expected.md5,
        sha256=expected.sha256 or data.get("sha256"),
        size=expected.size if expected.size is not None else data.get("size"),
    )


def _write_record(path: Path, url: str) -> None:
    from esvit.atomic import atomic_write_json

    atomic_write_json(
        _record_path(path),
        {
            "url": url,
            "size": path.stat().st_size,
            "sha256": _digest(path, "sha256"),
            "downloaded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


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
    if path.is_file() and _record_path(path).is_file():
        _verify_existing(path, "?", Expected())


# ------------------------------------------------------------------------------------------------ transfer


def _validator_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _transfer(source: str, part: Path, desc: str, progress: bool, checked: bool) -> None:
    """Append ``source`` to ``part`` from where it stops.

    A resume sends ``Range`` and ``If-Range`` (the ETag or Last-Modified of the first response, kept in
    ``<part>.json``): a server whose file changed, or that ignores the range, answers with the whole file and
    the download restarts; a ``Content-Range`` that does not start at the offset restarts it too. An HTML page
    (a mirror's error page) is refused. Without a checksum (``checked`` false) a response of unknown length is
    refused: a cut connection could not be told from the end of the file.
    """
    import http.client

    from tqdm import tqdm

    offset = part.stat().st_size if part.exists() else 0
    validator = None
    if offset and _validator_path(part).is_file():
        try:
            validator = json.loads(_validator_path(part).read_text()).get("validator")
        except ValueError:
            validator = None
    http_source = source.startswith(("http://", "https://"))
    headers = {"User-Agent": USER_AGENT}
    if offset and http_source:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator
    try:
        response = urllib.request.urlopen(urllib.request.Request(source, headers=headers), timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the partial file is whole, or longer than the file: check which
            total = (exc.headers.get("Content-Range") or "").rpartition("/")[2]
            if total.isdigit() and int(total) == offset:
                return
            part.unlink()
            raise DownloadError(
                f"{source}: the partial download {part.name} does not fit the file on the server "
                "(it changed); it was removed, rerun to download it again"
            ) from None
        raise DownloadError(f"{source}: HTTP {exc.code} {exc.reason}; check the URL or download.mirror") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, FileNotFoundError) or (not http_source and isinstance(exc.reason, OSError)):
            raise DownloadError(
                f"{source}: not found (is it in the mirror, laid out as <mirror>/<host>/<path>?)"
            ) from None
        raise DownloadError(
            f"{source}: cannot connect ({exc.reason}); check the network, or set download.mirror / "
            "download.cache to a copy reachable from here"
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(
            f"{source}: cannot connect ({exc}); check the network, or set download.mirror / "
            "download.cache to a copy reachable from here"
        ) from None
    with response:
        if "text/html" in (response.headers.get("Content-Type") or ""):
            raise DownloadError(
                f"{source}: the server answered with a web page, not the file (an error or login "
                "page?); check the URL or download.mirror"
            )
        status = getattr(response, "status", None)
        resumed = bool(offset) and status == 206
        if resumed:
            start = (response.headers.get("Content-Range") or "").removeprefix("bytes ").split("-")[0]
            resumed = start.isdigit() and int(start) == offset
            if not resumed:  # the server sent another part than asked for: restart rather than splice
                response.close()
                part.unlink()
                return _transfer(source, part, desc, progress, checked)
        if not resumed:
            offset = 0
            tag = response.headers.get("ETag") or response.headers.get("Last-Modified")
            if tag and http_source:
                _validator_path(part).write_text(json.dumps({"source": source, "validator": tag}))
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        if total is None and not checked and http_source:
            raise DownloadError(
                f"{source}: the server does not say the file's size and no checksum is known, so a "
                "cut connection could not be told from a whole file; use a mirror that does, or "
                "put the file's sha256 in esvit/resources/releases.yaml"
            )
        with (
            open(part, "ab" if resumed else "wb") as f,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=desc,
                disable=not progress,
                file=sys.stderr,
                mininterval=1.0,
            ) as bar,
        ):
            try:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
            except (OSError, urllib.error.URLError, http.client.HTTPException) as exc:
                f.flush()
                raise DownloadError(
                    f"{source}: the connection broke after {f.tell():,} bytes ({type(exc).__name__}); "
                    "rerun to continue from there"
                ) from None
        if total is not None and part.stat().st_size < total:
            raise DownloadError(
                f"{source}: the connection closed after {part.stat().st_size:,} of {total:,} bytes; "
                "rerun to continue from there"
            )


def _download_to(path: Path, url: str, expected: Expected, mirror: str | None, progress: bool) -> None:
    """Download ``url`` to ``path`` (through ``<path>.part``), verify, rename into place, record if unchecked.
    One process at a time per file (``<path>.lock``): a second one is refused naming the first."""
    from esvit.lock import RunLock

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {path.parent} ({exc.strerror}); choose a writable place") from None
    with RunLock(path, "download of", folder=False):
        if path.is_file():  # another process finished it while this one waited
            return
        part = path.with_name(path.name + ".part")
        source = mirror_url(url, mirror)
        _transfer(source, part, path.name, progress, checked=bool(expected.md5 or expected.sha256 or expected.size))
        bad = expected.problems(part)
        if bad:
            part.unlink()
            _validator_path(part).unlink(missing_ok=True)
            raise DownloadError(
                f"{path.name} from {source}: {'; '.join(bad)}. The download is damaged or the server holds another "
                "file; it was removed and nothing was unpacked. Rerun to download again, or check download.mirror"
            )
        os.replace(part, path)
        _validator_path(part).unlink(missing_ok=True)
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


def fetch(
    url: str,
    dest: str | Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    mirror: str | None = None,
    cache: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Make ``dest`` the verified file of ``url``.

    An existing ``dest`` is checked (against the checksums given, else its record) and used; otherwise the file
    comes from the cache or is downloaded (into the cache first when there is one).

    Raises:
        DownloadError: the server or network failed (a rerun resumes), or a file failed its check (it is
            removed when it was just downloaded, refused and named when it was there before).
    """
    dest = Path(dest).expanduser()
    mirror = os.path.expanduser(mirror) if mirror and "://" not in mirror else mirror
    expected = Expected(md5=md5, sha256=sha256, size=size)
    if dest.is_dir():
        raise DownloadError(f"{dest} is a folder; give the file to write (e.g. {dest / Path(urlsplit(url).path).name})")
    if dest.is_file():
        _verify_existing(dest, url, expected)
        return dest
    try:
        if cache:
            cached = cache_path(url, Path(cache).expanduser())
            if cached.is_file():
                _verify_existing(cached, url, expected)
            else:
                _download_to(cached, url, expected, mirror, progress)
            _place(cached, dest)
            return dest
        _download_to(dest, url, expected, mirror, progress)
    except OSError as exc:  # a read-only folder, a path through a file, a full disk
        where = exc.filename or dest
        raise DownloadError(
            f"cannot write {where} ({exc.strerror or exc}); choose a writable place with room"
        ) from None
    return dest


# ---------------------------------------------------------------------------------------- releases, datasets


def fetch_release(
    name: str, dest: str | Path, *, mirror: str | None = None, cache: str | Path | None = None, progress: bool = True
) -> Path:
    """Download the released checkpoint ``name`` (a key of ``esvit/resources/releases.yaml``) to ``dest``."""
    entry = known_entry(load_releases(), name, "release")
    return fetch(
        entry["url"],
        dest,
        sha256=entry.get("sha256"),
        size=entry.get("size"),
        mirror=mirror,
        cache=cache,
        progress=progress,
    )


def _archive_errors() -> tuple[type[BaseException], ...]:
    import gzip
    import lzma
    import tarfile
    import zipfile

    return (EOFError, tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, lzma.LZMAError)


def _unpack(extract, archive: str, to: str | None, *args: Any, **kwargs: Any) -> Any:
    """torchvision's ``extract_archive``, with a damaged archive refused (removed with its record) in one line."""
    try:
        return extract(archive, to, *args, **kwargs)
    except _archive_errors() as exc:
        Path(archive).unlink(missing_ok=True)
        _record_path(Path(archive)).unlink(missing_ok=True)
        raise DownloadError(
            f"{archive}: damaged archive ({type(exc).__name__}: {exc}); it was removed, rerun to "
            "download it again (or check download.mirror)"
        ) from None


@contextlib.contextmanager
def _torchvision_through_fetch(
    mirror: str | None, cache: str | Path | None, progress: bool, fetched: list, unpacking: Path
) -> Iterator[None]:
    """Route torchvision's ``download_url`` (what its ``download=True`` calls for every file) through
    :func:`fetch`, and its ``extract_archive`` through a journal (``unpacking``: every archive is listed there
    before it is unpacked, so an interrupted unpacking is redone), in every dataset module that imported them."""
    import torchvision.datasets  # noqa: F401  (loads the dataset modules)
    import torchvision.datasets.utils as tvu

    originals = {"download_url": tvu.download_url, "extract_archive": tvu.extract_archive}

    def download_url(
        url: str, root: str | Path, filename: str | None = None, md5: str | None = None, *a: Any, **k: Any
    ) -> None:
        dest = Path(root).expanduser() / (filename or os.path.basename(urlsplit(url).path))
        fetch(url, dest, md5=md5, mirror=mirror, cache=cache, progress=progress)
        fetched.append({"url": url, "file": str(dest), "md5": md5})

    def extract_archive(from_path: str | Path, to_path: str | Path | None = None, *a: Any, **k: Any) -> Any:
        from esvit.atomic import atomic_write_json

        journal = json.loads(unpacking.read_text()) if unpacking.is_file() else []
        entry = {"archive": str(from_path), "to": str(to_path) if to_path is not None else None}
        if entry not in journal:
            atomic_write_json(unpacking, [*journal, entry])
        return _unpack(originals["extract_archive"], str(from_path), entry["to"], *a, **k)

    replacements = {"download_url": download_url, "extract_archive": extract_archive}
    patched = [
        (m, name)
        for mod_name, m in list(sys.modules.items())
        if mod_name.startswith("torchvision.datasets")
        for name, original in originals.items()
        if getattr(m, name, None) is original
    ]
    for module, name in patched:
        setattr(module, name, replacements[name])
    try:
        yield
    finally:
        for module, name in patched:
            setattr(module, name, originals[name])


def fetch_dataset(
    name: str, root: str | Path, *, mirror: str | None = None, cache: str | Path | None = None, progress: bool = True
) -> list[dict]:
    """Download and unpack the transfer dataset ``name`` (a key of ``esvit/resources/datasets.yaml``) under ``root``,
    as its torchvision class lays it out, and open every split once to check it.

    Complete only once every split opens: then ``<root>/.esvit-download-<name>.json`` is written. Until then a
    rerun first unpacks again every archive an earlier attempt started unpacking (torchvision itself only checks
    that a folder exists, so a half-unpacked set would otherwise pass).

    Returns:
        The files fetched: ``[{url, file, md5}]`` (empty when everything was there already).
    """
    from esvit.atomic import atomic_write_json
    from esvit.data.transfer import load_registry

    entry = known_entry(load_registry(), name, "dataset")
    if not entry.get("auto_download"):
        raise DownloadError(
            f"{name} cannot be downloaded automatically. Download: {entry['download']}. Unpack it under "
            f"the dataset's root so that it holds {entry['layout']}, and set download: false for it"
        )
    import torchvision.datasets as tvd
    import torchvision.datasets.utils as tvu

    cls = getattr(tvd, entry["class"])
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DownloadError(f"{root} is a file; give the folder to unpack {name} under")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {root} ({exc.strerror}); choose a writable place with room") from None
    complete, unpacking = root / f".esvit-download-{name}.json", root / f".esvit-unpacking-{name}.json"
    fetched: list[dict] = []
    try:
        if not complete.is_file() and unpacking.is_file():  # an earlier attempt stopped while unpacking
            for job in json.loads(unpacking.read_text()):
                if Path(job["archive"]).is_file():
                    _unpack(tvu.extract_archive, job["archive"], job["to"])
        with _torchvision_through_fetch(mirror, cache, progress, fetched, unpacking):
            for kwargs in entry["splits"].values():
                cls(root=str(root), download=True, **kwargs)
        for kwargs in entry["splits"].values():  # each split opens as the shard step will open it
            cls(root=str(root), **({**kwargs, "download": False} if "download" in _params(cls) else kwargs))
    except DownloadError:
        raise
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        raise DownloadError(
            f"{name}: torchvision {entry['class']} could not be fetched or opened under {str(root)!r}: {exc}"
        ) from None
    atomic_write_json(
        complete, {"dataset": name, "files": fetched, "complete": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    )
    unpacking.unlink(missing_ok=True)
    return fetched


def _params(cls: type) -> set[str]:
    import inspect

    return set(inspect.signature(cls).parameters)
