"""Length-bucketed batches: little padding, every sample once per epoch, a new seeded order each epoch."""

import numpy as np
import torch
from accelerate import Accelerator

from clearpeft.data.batching import EncodedSplit, LengthBucketBatchSampler, loader


def test_buckets_cover_everything_once_and_pad_little():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=1000)
    sampler = LengthBucketBatchSampler(lengths, 32, shuffle=True, seed=0)
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(1000))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert padded / lengths.sum() < 1.1  # random batches pad to ~1.9x here
    sampler.set_epoch(1)
    assert sampler.batches() != batches
    sampler.set_epoch(0)
    assert sampler.batches() == batches


def test_epochs_reach_the_sampler_through_accelerate():
    split = EncodedSplit([[101] + [7] * (i % 17) + [102] for i in range(100)], np.zeros(100, dtype=np.int64))
    prepared = Accelerator(cpu=True).prepare(loader(split, 8, shuffle=True, pad_id=0, seed=0))
    orders = []
    for epoch in (0, 1, 0):
        prepared.set_epoch(epoch)
        orders.append([b["index"].tolist() for b in prepared])
    assert orders[0] == orders[2] and orders[0] != orders[1]
    batch = next(iter(prepared))
    assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max())
    assert torch.equal(batch["attention_mask"].bool(), batch["input_ids"] != 0)
