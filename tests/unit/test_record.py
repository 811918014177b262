"""The metrics record (docs/design.md §3.4): written and read back by one definition, its JSON keys in the
contract's order, and a file that is not a record refused with an error naming the file."""

from __future__ import annotations

import json

import pytest

from esvit.errors import EsvitError
from esvit.eval.record import REQUIRED_KEYS, MetricsRecord, RecordError, read_record

CONTRACT_KEYS = [
    "run",
    "arch",
    "dataset",
    "eval",
    "metric_name",
    "value",
    "metrics",
    "n_train",
    "n_test",
    "hparams",
    "checkpoint",
    "checkpoint_sha256",
    "wall_s",
    "device",
]


def _record(**changes) -> MetricsRecord:
    fields = dict(
        run="esvit_demo",
        arch="swin_femto",
        dataset="fashion_mnist",
        eval="linear_fast",
        metric_name="top1",
        value=81.2345,
        metrics={"top1": 81.2345, "best_top1": 82.0, "best_epoch": 3, "history": [70.0, 82.0]},
        n_train=1438,
        n_test=359,
        hparams={"mode": "fast", "epochs": 4},
        checkpoint="results/x/final.pth",
        checkpoint_sha256="ab" * 32,
        wall_s=1.234,
        device="cpu",
    )
    return MetricsRecord(**{**fields, **changes})


def test_a_record_written_reads_back_equal_with_the_contracts_keys_in_order(tmp_path):
    rec = _record()
    path = rec.write(tmp_path / "linear" / "esvit_demo" / "fashion_mnist" / "metrics.json")
    assert list(json.loads(path.read_text())) == CONTRACT_KEYS
    back = read_record(path)
    assert back == rec and back.family == "linear" and _record(eval="knn").family == "knn"
    assert not list(path.parent.glob(".*tmp*"))  # written through a temporary name, nothing left behind


def test_a_record_without_a_device_reads_as_written_by_hand(tmp_path):
    """The device is the only optional key (hand-written records, as the report's tests write them, lack it)."""
    data = _record().to_json()
    del data["device"]
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({**data, "note": "an unknown key is ignored"}))
    assert read_record(path) == _record(device=None)
    assert "device" not in REQUIRED_KEYS and set(REQUIRED_KEYS) == set(CONTRACT_KEYS) - {"device"}


@pytest.mark.parametrize("key", ["value", "run", "checkpoint_sha256"])
def test_a_file_missing_a_required_key_is_refused_naming_the_file_and_the_key(tmp_path, key):
    data = _record().to_json()
    del data[key]
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError) as err:
        read_record(path)
    assert isinstance(err.value, EsvitError) and err.value.path == path
    assert str(path) in str(err.value) and repr(key) in str(err.value)


@pytest.mark.parametrize(
    "text,why",
    [
        ("{not json", "Expecting property name"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({**_record().to_json(), "value": "high"}), "not a number"),
        (json.dumps({**_record().to_json(), "metrics": None}), "not a JSON object"),
    ],
)
def test_unreadable_records_are_refused_naming_the_file(tmp_path, text, why):
    path = tmp_path / "metrics.json"
    path.write_text(text)
    with pytest.raises(RecordError, match=why) as err:
        read_record(path)
    assert str(err.value).startswith(f"{path}: ")
    with pytest.raises(RecordError, match="No such file"):
        read_record(tmp_path / "absent.json")
