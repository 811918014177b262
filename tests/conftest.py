"""Shared fixtures: the repo root, a PATH that finds this environment's python, small real shard sets."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
OFFICIAL_FIXTURES = REPO / "tests" / "fixtures" / "official"
# A training config small enough for a CPU test: swin_pico at 32 / 16 px, 48 samples per epoch, two epochs.
TINY = [
    "model.arch=swin_pico",
    "model.out_dim=256",
    "model.hidden_dim=64",
    "model.bottleneck_dim=32",
    "model.drop_path_rate=0.1",
    "crops.global_size=32",
    "crops.local_size=[16]",
    "crops.local_number=[2]",
    "optim.batch_size_per_device=8",
    "optim.epochs=2",
    "optim.warmup_epochs=1",
    "optim.lr=0.002",
    "data.samples_per_epoch=48",
    "data.num_workers=2",
    "data.shuffle_buffer=64",
    "run.threads=2",
    "run.tensorboard=false",
    "run.log_every_steps=2",
    "loss.warmup_teacher_temp_epochs=1",
]


# A sitecustomize.py for one rank of a distributed run (RANK 1, or Slurm task 1 with SLURM_PROCID): its loss
# turns NaN at its third step while the other rank's stays finite.
POISON_RANK_1 = """
import json
import os
if (os.environ.get("RANK") or os.environ.get("SLURM_PROCID")) == "1":
    import esvit.losses.esvit_loss as _m
    _real, _calls = _m.EsViTLoss.forward, [0]
    def _poisoned(self, *a, **k):
        parts = _real(self, *a, **k)
        _calls[0] += 1
        if _calls[0] == 3:
            parts.total = parts.total * float("nan")
        return parts
    _m.EsViTLoss.forward = _poisoned
"""


def official_checkpoint(tmp_path: Path, name: str) -> Path:
    """An official-layout checkpoint saved by microsoft/esvit's own code (tests/fixtures/official/README.md),
    decompressed byte for byte (stored as .xz to keep the repository small)."""
    import lzma
    import shutil

    out = tmp_path / f"{name}.pth"
    with lzma.open(OFFICIAL_FIXTURES / f"{name}.pth.xz", "rb") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def torchrun_pretrain(shards: Path, out: Path, *overrides: str, env: dict | None = None, timeout: float = 600):
    """``esvit pretrain`` on :data:`TINY` (plus ``overrides``) as two processes under torchrun (env:// rendezvous,
    gloo on CPU); the finished ``subprocess.CompletedProcess``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "esvit"]
    cmd += ["pretrain", "--shards", str(shards), "--out", str(out), "--no-progress", *TINY, *overrides]
    return subprocess.run(cmd, cwd=REPO, env=env or env_with_python(), capture_output=True, text=True, timeout=timeout)


def env_with_python() -> dict[str, str]:
    """Environment whose PATH starts with this interpreter's bin dir (Snakemake rules call `python`)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(
    *args: str, cwd: Path | None = None, check: bool = False, timeout: float = 600
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "esvit", *args],
        cwd=cwd or REPO,
        env=env_with_python(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"esvit {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def require_fashion_mnist() -> None:
    if not FASHION_ROOT.is_dir():
        msg = "Debian's dataset-fashion-mnist is not installed (make install installs it)"
        if os.environ.get("CI"):
            pytest.fail(msg)  # never skip silently on CI
        pytest.skip(msg)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory) -> Path:
    """The scikit-learn digits train split as a shard set with several shards."""
    from esvit.data.shards import ShardConfig, write_shards
    from esvit.data.sources import get_source

    out = tmp_path_factory.mktemp("digits") / "train"
    write_shards(get_source("digits"), "digits", "train", out, ShardConfig(max_samples=150, workers=2), progress=False)
    return out


def make_jpeg(path: Path, seed: int, size=(64, 48), quality: int = 90) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="JPEG", quality=quality)
    return path.read_bytes()


class FileServer:
    """A local HTTP server for download tests: serves ``files`` (URL path -> bytes) with ``Range`` support,
    logs every request's path and Range header, and can misbehave as real servers do (``drop_after``: close the
    connection after that many bytes of a response, once; ``ignore_range``: answer 200 with the whole file)."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.drop_after: int | None = None
        self.ignore_range = False
        self.range_from_zero = False  # answer a range request with 206 but from byte 0 (a broken server)
        self.no_length = False  # no Content-Length: the end of the file is the end of the connection
        self.content_type = "application/octet-stream"
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                import hashlib

                etag = '"' + hashlib.md5(body).hexdigest() + '"'
                start = 0
                if_range = self.headers.get("If-Range")
                if rng and not server.ignore_range and (if_range is None or if_range == etag):
                    start = 0 if server.range_from_zero else int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                part = body[start:]
                self.send_header("ETag", etag)
                self.send_header("Content-Type", server.content_type)
                if not server.no_length:
                    self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                if server.drop_after is not None:
                    cut, server.drop_after = server.drop_after, None
                    self.wfile.write(part[:cut])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the connection breaks mid-file
                    return
                self.wfile.write(part)

            def log_message(self, *args) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:  # a client that hangs up early is a test's point
                import sys

                if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
                    super().handle_error(request, client_address)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def file_server():
    server = FileServer()
    yield server
    server.close()


def tiny_cfg(shards, *extra):
    """The :data:`TINY` training config on ``shards``, with ``extra`` overrides."""
    from esvit.train.config import load_train_config

    return load_train_config(None, [*TINY, f"data.shards={shards}", *extra])


# ------------------------------------------------------------------------- a results tree for the report


def write_metrics(
    results: Path,
    ev: str,
    run: str,
    dataset: str,
    value: float,
    ckpt: Path | None,
    metric="top1",
    sha=None,
    arch="swin_tiny_w7",
):
    """One metrics record as the evaluation commands write it, at results/<ev>/<run>/<dataset>/metrics.json."""
    from esvit.data.shards import file_sha256

    path = results / ev / run / dataset / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "run": run,
                "arch": arch,
                "dataset": dataset,
                "eval": ev,
                "metric_name": metric,
                "value": value,
                "metrics": {},
                "n_train": 100,
                "n_test": 50,
                "hparams": {},
                "checkpoint": str(ckpt) if ckpt else None,
                "checkpoint_sha256": sha or (file_sha256(ckpt) if ckpt else "random-init-seed0"),
                "wall_s": 1.0,
            }
        )
    )


@pytest.fixture
def results(tmp_path) -> Path:
    """A results tree written by hand: one run (a Swin-T/W7 V+R config), its random init, linear / k-NN / probe
    records, a training log, and one result whose checkpoint has changed since."""
    res = tmp_path / "results"
    run_dir = res / "pretrain" / "tiny"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(
        yaml.safe_dump(
            {"model": {"arch": "swin_tiny_w7"}, "loss": {"region_loss_weight": 0.5}, "optim": {"epochs": 300}}
        )
    )
    (run_dir / "final.pth").write_bytes(b"weights")
    (run_dir / "log.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "step": s,
                    "loss": 8 - s / 10,
                    "loss_view": 8.2 - s / 10,
                    "loss_region": 7.8 - s / 10,
                    "lr": 1e-4 * s,
                    "teacher_temp": 0.04,
                }
            )
            + "\n"
            for s in range(1, 11)
        )
    )
    ck = run_dir / "final.pth"
    write_metrics(res, "linear", "tiny", "imagenet", 77.0, ck)
    write_metrics(res, "knn", "tiny", "imagenet", 74.0, ck)
    for ds, a, b in (("cifar10", 90.0, 60.0), ("dtd", 70.0, 72.0), ("pets", 80.0, None)):
        write_metrics(res, "probe", "tiny", ds, a, ck, metric="accuracy")
        if b is not None:
            write_metrics(res, "probe", "tiny_random", ds, b, None, metric="accuracy")
    old = run_dir / "checkpoint0001.pth"  # a result computed from a checkpoint that has since changed
    old.write_bytes(b"old")
    write_metrics(res, "knn", "tiny", "cifar10", 50.0, old, sha="0" * 64)
    return res


# ------------------------------------------------------------------------------------- esvit status


def status_config(tmp_path, runs: dict) -> str:
    """A workflow config with the digits set and ``runs``, written to tmp_path (for `esvit status`)."""
    cfg = {
        "datasets": {"digits": {"source": "digits", "splits": ["train", "test"]}},
        "runs": runs,
        "eval": {"datasets": ["digits"], "random_init_baseline": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def status_rows(tmp_path, config: str) -> list[dict]:
    """`esvit status --json` of ``config`` on tmp_path/results, one dict per run."""
    proc = run_cli("status", "--config", config, "--results", str(tmp_path / "results"), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


# --------------------------------------------------------------------------- MNIST's idx files


def write_idx(path, arr: np.ndarray) -> None:
    """Write an array in MNIST's idx format (big-endian header, uint8 payload)."""
    header = struct.pack(">HBB", 0, 8, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def mnist_idx_gz(images: np.ndarray | None = None, labels: np.ndarray | None = None) -> bytes:
    """MNIST's idx file format, gzipped as the MNIST site serves it."""
    if images is not None:
        raw = struct.pack(">IIII", 0x803, *images.shape) + images.astype(np.uint8).tobytes()
    else:
        raw = struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes()
    return gzip.compress(raw, mtime=0)


def serve_fake_mnist(server, n_train: int = 30, n_test: int = 10) -> dict[str, bytes]:
    """Random MNIST-format files (30 train, 10 test) served by ``server`` at the paths torchvision fetches."""
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte.gz": mnist_idx_gz(rng.integers(0, 256, (n_train, 28, 28))),
        "train-labels-idx1-ubyte.gz": mnist_idx_gz(labels=np.arange(n_train) % 10),
        "t10k-images-idx3-ubyte.gz": mnist_idx_gz(rng.integers(0, 256, (n_test, 28, 28))),
        "t10k-labels-idx1-ubyte.gz": mnist_idx_gz(labels=np.arange(n_test) % 10),
    }
    for name, body in files.items():
        server.files[f"/ossci-datasets.s3.amazonaws.com/mnist/{name}"] = body
    return files
