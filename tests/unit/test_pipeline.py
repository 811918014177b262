"""WebDataset readers: evaluation sees each sample exactly once; training is fixed-length and resumable."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from esvit.data.pipeline import eval_pipeline, make_loader, open_shards, train_pipeline
from esvit.data.shards import ShardConfig, ShardError, write_shards
from esvit.data.sources import get_source


def to_tensor(img):
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def eval_keys(shard_dir, world_size: int, num_workers: int) -> collections.Counter:
    shards = open_shards(shard_dir)
    seen: collections.Counter = collections.Counter()
    for rank in range(world_size):
        pipe = eval_pipeline(shards, to_tensor, batch_size=32, rank=rank, world_size=world_size)
        for keys, images, labels in make_loader(pipe, num_workers=num_workers):
            assert images.shape[1:] == (3, 8, 8) and len(keys) == len(labels)
            seen.update(keys)
    return seen


@pytest.mark.parametrize("shards_per_set", ["many", "one"])
def test_eval_sees_every_key_exactly_once_across_2_ranks_x_2_workers(digits_shards, tmp_path, shards_per_set):
    shard_dir = digits_shards
    if shards_per_set == "one":  # fewer shards than (rank, worker) slots: samples are split instead
        shard_dir = tmp_path / "one"
        write_shards(get_source("digits"), "digits", "train", shard_dir, ShardConfig(workers=1), progress=False)
    total = open_shards(shard_dir).total
    seen = eval_keys(shard_dir, world_size=2, num_workers=2)
    assert len(seen) == total and set(seen.values()) == {1}


def train_labels(shards, epoch: int, batches: int, skip: int = 0, rank: int = 0, workers: int = 2) -> list[list[int]]:
    pipe = train_pipeline(
        shards, to_tensor, batch_size=16, rank=rank, seed=7, epoch=epoch, shuffle_buffer=64, skip_batches=skip
    )
    out = []
    for images, labels in make_loader(pipe, num_workers=workers, batches_per_epoch=batches - skip):
        assert images.shape == (16, 3, 8, 8)
        out.append(labels.tolist())
    return out


def test_train_epoch_has_a_fixed_number_of_full_batches_and_is_seeded(digits_shards):
    shards = open_shards(digits_shards)
    a = train_labels(shards, epoch=0, batches=12)
    assert len(a) == 12 and all(len(b) == 16 for b in a)
    assert train_labels(shards, epoch=0, batches=12) == a  # same seeds, same stream
    assert train_labels(shards, epoch=1, batches=12) != a  # the epoch is part of the seed
    assert train_labels(shards, epoch=0, batches=12, rank=1) != a  # ranks draw differently
    assert len({lab for b in a for lab in b}) == 10  # shuffled across classes


def test_train_resume_skips_exactly_the_consumed_batches(digits_shards):
    shards = open_shards(digits_shards)
    full = train_labels(shards, epoch=3, batches=10)
    for skip in (1, 4, 7):
        assert train_labels(shards, epoch=3, batches=10, skip=skip) == full[skip:]


def test_open_shards_refuses_an_incomplete_set(digits_shards, tmp_path):
    import shutil

    copy = tmp_path / "c"
    shutil.copytree(digits_shards, copy)
    victim = sorted(copy.glob("*.tar"))[0]
    victim.write_bytes(victim.read_bytes()[:-1024])
    with pytest.raises(ShardError, match="wrong size"):
        open_shards(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(ShardError, match="not a complete shard set"):
        open_shards(copy)


def test_a_comma_list_of_shard_folders_is_one_pooled_training_set(digits_shards):
    one = open_shards(digits_shards)
    mix = open_shards(f"{digits_shards},{digits_shards}")
    assert mix.total == 2 * one.total and mix.urls == one.urls * 2 and mix.manifest["mix"] == [str(digits_shards)] * 2


def test_persistent_workers_give_every_epoch_the_stream_of_a_fresh_loader(digits_shards):
    """One loader whose 2 workers persist across epochs (the cursor moved between iterations) yields, epoch by
    epoch and after a mid-epoch resume, exactly the batches of a fresh loader built for that epoch."""
    from itertools import islice

    from esvit.data.pipeline import EpochCursor

    shards = open_shards(digits_shards)

    def fresh(epoch: int, skip: int, n: int) -> list[torch.Tensor]:
        pipe = train_pipeline(shards, to_tensor, 8, seed=3, epoch=epoch, skip_batches=skip, shuffle_buffer=64)
        return [images for images, _ in islice(iter(make_loader(pipe, 2)), n)]

    cursor = EpochCursor(1, 3)  # a run resumed at batch 3 of epoch 1
    pipe = train_pipeline(shards, to_tensor, 8, seed=3, shuffle_buffer=64, cursor=cursor)
    loader = make_loader(pipe, 2, persistent=True)
    got = {}
    for epoch, skip, n in ((1, 3, 5), (2, 0, 8), (3, 0, 8)):
        cursor.set(epoch, skip)
        got[epoch] = [images for images, _ in islice(iter(loader), n)]
        want = fresh(epoch, skip, n)
        assert len(got[epoch]) == n and all(torch.equal(a, b) for a, b in zip(got[epoch], want)), f"epoch {epoch}"
    assert not torch.equal(got[2][0], got[3][0])  # the epochs differ
