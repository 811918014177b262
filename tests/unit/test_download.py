"""Downloads against a local HTTP server: fresh, resumed after a broken connection, a server that ignores Range,
a damaged file refused, the first-download record, a site mirror (URL or folder), a shared cache; and a
torchvision dataset fetched through it in its real file format."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from esvit.download import DownloadError, cache_path, fetch, fetch_dataset, load_releases, mirror_url
from tests.conftest import run_cli
from tests.conftest import serve_fake_mnist as _fake_mnist

BODY = os.urandom(3 * (1 << 20) + 12345)  # a little over three read chunks
MD5 = hashlib.md5(BODY).hexdigest()
URL = "https://files.example.org/models/run1/checkpoint_best.pth"  # served by the mirror at its host/path


@pytest.fixture
def mirror(file_server):
    file_server.files["/files.example.org/models/run1/checkpoint_best.pth"] = BODY
    return file_server


def test_fresh_download_through_a_mirror_is_verified_and_renamed_into_place(tmp_path, mirror):
    dest = fetch(URL, tmp_path / "ckpt.pth", md5=MD5, mirror=mirror.url, progress=False)
    assert dest.read_bytes() == BODY
    assert not (tmp_path / "ckpt.pth.part").exists()
    assert mirror.requests == [("/files.example.org/models/run1/checkpoint_best.pth", None)]
    fetch(URL, dest, md5=MD5, mirror=mirror.url, progress=False)  # there and verified: nothing fetched
    assert len(mirror.requests) == 1


def test_a_broken_connection_is_resumed_where_it_stopped(tmp_path, mirror):
    mirror.drop_after = 1_000_000
    with pytest.raises(DownloadError, match="rerun to continue"):
        fetch(URL, tmp_path / "ckpt.pth", md5=MD5, mirror=mirror.url, progress=False)
    part = tmp_path / "ckpt.pth.part"
    assert part.stat().st_size == 1_000_000 and not (tmp_path / "ckpt.pth").exists()
    fetch(URL, tmp_path / "ckpt.pth", md5=MD5, mirror=mirror.url, progress=False)
    assert mirror.requests[-1][1] == "bytes=1000000-"  # only the rest was asked for
    assert (tmp_path / "ckpt.pth").read_bytes() == BODY and not part.exists()


def test_a_server_that_ignores_the_range_restarts_the_file(tmp_path, mirror):
    (tmp_path / "ckpt.pth.part").write_bytes(BODY[:5000])
    mirror.ignore_range = True
    fetch(URL, tmp_path / "ckpt.pth", md5=MD5, mirror=mirror.url, progress=False)
    assert (tmp_path / "ckpt.pth").read_bytes() == BODY


def test_a_damaged_download_is_refused_and_removed(tmp_path, mirror):
    mirror.files["/files.example.org/models/run1/checkpoint_best.pth"] = BODY[:-1] + b"\0"
    with pytest.raises(DownloadError) as info:
        fetch(URL, tmp_path / "ckpt.pth", md5=MD5, mirror=mirror.url, progress=False)
    msg = str(info.value)
    assert "checkpoint_best.pth" in msg and f"expected {MD5}" in msg and "removed" in msg
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth.lock"]  # nothing left that a later step could use


def test_the_first_download_is_recorded_and_a_later_change_is_refused(tmp_path, mirror):
    dest = fetch(URL, tmp_path / "ckpt.pth", mirror=mirror.url, progress=False)  # no checksum known
    record = json.loads((tmp_path / "ckpt.pth.json").read_text())
    assert record["size"] == len(BODY) and record["sha256"] == hashlib.sha256(BODY).hexdigest() and record["url"] == URL
    with open(dest, "r+b") as f:  # truncated on disk later
        f.truncate(len(BODY) // 2)
    with pytest.raises(DownloadError, match=r"size .* expected .*delete it"):
        fetch(URL, dest, mirror=mirror.url, progress=False)
    assert dest.stat().st_size == len(BODY) // 2  # refused, not silently replaced


def test_a_file_changed_on_the_server_between_attempts_is_downloaded_anew_not_spliced(tmp_path, mirror):
    mirror.drop_after = 1_000_000
    with pytest.raises(DownloadError, match="rerun to continue"):
        fetch(URL, tmp_path / "ckpt.pth", mirror=mirror.url, progress=False)
    new_body = os.urandom(len(BODY))
    mirror.files["/files.example.org/models/run1/checkpoint_best.pth"] = new_body
    fetch(URL, tmp_path / "ckpt.pth", mirror=mirror.url, progress=False)
    assert mirror.requests[-1][1] == "bytes=1000000-"  # asked for the rest, with If-Range: got the whole new file
    assert (tmp_path / "ckpt.pth").read_bytes() == new_body


def test_a_server_that_resumes_from_the_wrong_byte_is_not_spliced(tmp_path, mirror):
    (tmp_path / "ckpt.pth.part").write_bytes(BODY[:5000])
    mirror.range_from_zero = True
    fetch(URL, tmp_path / "ckpt.pth", mirror=mirror.url, progress=False)
    assert (tmp_path / "ckpt.pth").read_bytes() == BODY


def test_a_partial_file_longer_than_the_servers_is_removed_not_used(tmp_path, mirror):
    (tmp_path / "ckpt.pth.part").write_bytes(os.urandom(len(BODY) + 10))
    with pytest.raises(DownloadError, match="does not fit the file on the server"):
        fetch(URL, tmp_path / "ckpt.pth", mirror=mirror.url, progress=False)
    assert not (tmp_path / "ckpt.pth").exists() and not (tmp_path / "ckpt.pth.part").exists()
    assert fetch(URL, tmp_path / "ckpt.pth", mirror=mirror.url, progress=False).read_bytes() == BODY


def test_unknown_length_without_a_checksum_and_web_pages_are_refused(tmp_path, mirror):
    mirror.no_length = True
    with pytest.raises(DownloadError, match="does not say the file's size"):
        fetch(URL, tmp_path / "a.pth", mirror=mirror.url, progress=False)
    assert fetch(URL, tmp_path / "b.pth", md5=MD5, mirror=mirror.url, progress=False).read_bytes() == BODY  # checked
    mirror.no_length, mirror.content_type = False, "text/html; charset=utf-8"
    with pytest.raises(DownloadError, match="web page"):
        fetch(URL, tmp_path / "c.pth", mirror=mirror.url, progress=False)
    assert not (tmp_path / "c.pth").exists()


def test_a_second_process_downloading_the_same_file_is_refused_naming_the_first(tmp_path, mirror):
    import subprocess
    import sys

    from esvit.lock import LockError

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom esvit.lock import RunLock\n"
            f"with RunLock({str(tmp_path / 'ckpt.pth')!r}, 'download of', folder=False):\n"
            "    print('held', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockError, match=f"download of .*ckpt.pth.* is in use by pid {holder.pid}"):
            fetch(URL, tmp_path / "ckpt.pth", md5=MD5, mirror=mirror.url, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "ckpt.pth").exists() and not (tmp_path / "ckpt.pth.part").exists()


def test_a_file_recorded_for_another_url_is_refused(tmp_path, mirror):
    dest = fetch(URL, tmp_path / "ckpt.pth", mirror=mirror.url, progress=False)
    with pytest.raises(DownloadError, match="holds the download of https://files.example.org"):
        fetch("https://files.example.org/models/run2/checkpoint_best.pth", dest, mirror=mirror.url, progress=False)


def test_a_missing_file_names_the_url(tmp_path, file_server):
    with pytest.raises(DownloadError, match="HTTP 404.*download.mirror"):
        fetch(URL, tmp_path / "x.pth", mirror=file_server.url, progress=False)
    with pytest.raises(DownloadError, match="cannot connect"):
        fetch("http://127.0.0.1:9/nothing.bin", tmp_path / "y.bin", progress=False)


def test_a_mirror_folder_and_a_shared_cache(tmp_path, mirror):
    folder = tmp_path / "site-mirror"
    path = folder / "files.example.org/models/run1/checkpoint_best.pth"
    path.parent.mkdir(parents=True)
    path.write_bytes(BODY)
    assert mirror_url(URL, str(folder)).startswith("file://")
    assert fetch(URL, tmp_path / "a.pth", md5=MD5, mirror=str(folder), progress=False).read_bytes() == BODY
    cache = tmp_path / "cache"
    fetch(URL, tmp_path / "b.pth", md5=MD5, mirror=mirror.url, cache=cache, progress=False)
    fetch(URL, tmp_path / "c.pth", md5=MD5, mirror=mirror.url, cache=cache, progress=False)
    assert len(mirror.requests) == 1  # the second came from the cache
    assert cache_path(URL, cache).read_bytes() == (tmp_path / "c.pth").read_bytes() == BODY


def test_progress_is_shown_on_stderr(tmp_path, mirror, capfd):
    fetch(URL, tmp_path / "ckpt.pth", md5=MD5, mirror=mirror.url, progress=True)
    err = capfd.readouterr().err
    assert "ckpt.pth" in err and "3.01M" in err


def test_the_release_table_names_known_architectures_and_the_official_urls():
    from esvit.archs import ARCHS

    releases = load_releases()
    assert {"swin_tiny_w7_vr", "swin_base_w14_vr", "swin_tiny_w7_v", "swin_tiny_supervised"} <= set(releases)
    for name, entry in releases.items():
        assert entry["arch"] in ARCHS and entry["format"] in ("official", "timm"), name
        if entry["format"] == "official":  # the official README's links (Swin's V+R files: checkpoint_best.pth)
            family = entry["arch"].split("_")[0]
            assert entry["url"].startswith(f"https://chunyleu.blob.core.windows.net/output/ckpts/esvit/{family}/")
            best = entry["tasks"] == "V+R" and family == "swin"
            assert entry["url"].endswith("checkpoint_best.pth" if best else "checkpoint.pth"), name


def test_the_supervised_reference_is_timms_own_swin_t():
    """The URL of the supervised Swin-T is the one timm's pretrained config names (its hub file)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg("swin_tiny_patch4_window7_224.ms_in1k")
    assert (
        load_releases()["swin_tiny_supervised"]["url"]
        == f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors"
    )


# ----------------------------------------------------------------------------------------- a real dataset


def test_a_torchvision_dataset_is_fetched_unpacked_and_sharded(tmp_path, file_server, monkeypatch):
    """torchvision decides the URLs and the layout; the files come through the mirror; the shard step then opens
    them with download=False. (The checksums are the fakes': the real ones are the next test's.)"""
    import torchvision.datasets as tvd

    files = _fake_mnist(file_server)
    monkeypatch.setattr(tvd.MNIST, "resources", [(n, hashlib.md5(b).hexdigest()) for n, b in files.items()])
    fetched = fetch_dataset("mnist", tmp_path / "mnist", mirror=file_server.url, progress=False)
    assert sorted(os.path.basename(f["file"]) for f in fetched) == sorted(files)
    assert len(tvd.MNIST(str(tmp_path / "mnist"), train=True)) == 30
    assert len(tvd.MNIST(str(tmp_path / "mnist"), train=False)) == 10
    from esvit.data.sources import get_source

    source = get_source("mnist", str(tmp_path / "mnist"))
    assert len(source.records("train")) == 30 and len(source.records("test")) == 10


def test_a_dataset_archive_that_fails_torchvisions_checksum_is_refused_and_not_unpacked(tmp_path, file_server):
    _fake_mnist(file_server)  # the fakes do not have torchvision's md5 of the real files
    with pytest.raises(DownloadError, match=r"train-images-idx3-ubyte\.gz.*expected f68b3c2dcbeaaa9fbdd348bbdeb94873"):
        fetch_dataset("mnist", tmp_path / "mnist", mirror=file_server.url, progress=False)
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    assert not list(raw.glob("*-ubyte"))  # nothing unpacked


def test_an_interrupted_unpacking_is_redone_on_the_next_run(tmp_path, file_server, monkeypatch):
    """torchvision only checks that MNIST/raw holds the files: a file cut short by an interrupted unpacking would
    pass. The journal of archives being unpacked makes the rerun unpack them again; only then is the set
    marked complete."""
    import torchvision.datasets as tvd

    files = _fake_mnist(file_server)
    monkeypatch.setattr(tvd.MNIST, "resources", [(n, hashlib.md5(b).hexdigest()) for n, b in files.items()])
    root = tmp_path / "mnist"
    fetch_dataset("mnist", root, mirror=file_server.url, progress=False)
    raw = root / "MNIST" / "raw"
    assert (root / ".esvit-download-mnist.json").is_file() and not (root / ".esvit-unpacking-mnist.json").exists()
    # the state an interrupted first run leaves: archives there, one file half unpacked, the journal, no marker
    whole = (raw / "train-images-idx3-ubyte").read_bytes()
    (raw / "train-images-idx3-ubyte").write_bytes(whole[: len(whole) // 2])
    (root / ".esvit-download-mnist.json").unlink()
    (root / ".esvit-unpacking-mnist.json").write_text(
        json.dumps([{"archive": str(raw / "train-images-idx3-ubyte.gz"), "to": str(raw)}])
    )
    assert fetch_dataset("mnist", root, mirror=file_server.url, progress=False) == []  # nothing downloaded again
    assert (raw / "train-images-idx3-ubyte").read_bytes() == whole and (root / ".esvit-download-mnist.json").is_file()


def test_a_damaged_archive_is_refused_and_removed(tmp_path, file_server, monkeypatch):
    """A set torchvision checks no md5 for (FGVC-Aircraft, KITTI): a cut archive fails to unpack; the archive
    and its record go, and the message says to rerun."""
    import torchvision.datasets as tvd

    files = _fake_mnist(file_server)
    cut = files["train-images-idx3-ubyte.gz"][:-40]
    file_server.files["/ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz"] = cut
    monkeypatch.setattr(tvd.MNIST, "resources", [(n, None) for n in files])
    with pytest.raises(DownloadError, match=r"train-images-idx3-ubyte\.gz: damaged archive .*removed, rerun"):
        fetch_dataset("mnist", tmp_path / "mnist", mirror=file_server.url, progress=False)
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    assert not (raw / "train-images-idx3-ubyte.gz").exists() and not (raw / "train-images-idx3-ubyte.gz.json").exists()


def test_a_manual_dataset_keeps_its_instructions(tmp_path):
    with pytest.raises(DownloadError, match="cannot be downloaded automatically. Download: .*Unpack it under"):
        fetch_dataset("stanford_cars", tmp_path / "cars", progress=False)


def test_download_cli_fetches_a_release_through_a_mirror(tmp_path, file_server):
    url = load_releases()["swin_tiny_w7_vr"]["url"]
    file_server.files["/" + url.split("://", 1)[1]] = BODY
    out = tmp_path / "swin_tiny_w7_vr.pth"
    proc = run_cli("download", "release", "swin_tiny_w7_vr", "--out", str(out), "--mirror", file_server.url)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == BODY and json.loads((tmp_path / "swin_tiny_w7_vr.pth.json").read_text())["url"] == url
    bad = run_cli("download", "release", "swin_tiny_w7", "--out", str(out))
    assert bad.returncode == 2 and "Did you mean 'swin_tiny_w7_v" in bad.stderr and "Traceback" not in bad.stderr
