"""Tokenize once, then batch by length: each batch is padded only to its own longest sequence."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class EncodedSplit(torch.utils.data.Dataset):
    """Token ids (unpadded) with their labels and their index in the split."""

    input_ids: list[list[int]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> tuple[list[int], int, int]:
        return self.input_ids[i], int(self.labels[i]), i

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def encode(tokenizer, texts: list[str], labels: np.ndarray, max_length: int) -> EncodedSplit:
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    return EncodedSplit(ids, np.asarray(labels, dtype=np.int64))


class LengthBucketBatchSampler(torch.utils.data.Sampler):
    """Batches of similar length. Training: a seeded shuffle, then sorting within chunks of
    ``chunk_batches`` batches, then a shuffle of the batch order; evaluation: sorted by length."""

    def __init__(self, lengths: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0, chunk_batches: int = 50):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.chunk = batch_size * chunk_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        if not self.shuffle:
            order = np.argsort(-self.lengths, kind="stable")  # longest first: memory peaks at once
            return [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        batches = []
        for start in range(0, len(order), self.chunk):
            chunk = order[start : start + self.chunk]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i : i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size


class PadCollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[tuple[list[int], int, int]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _, _ in items)
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, (ids, _, _) in enumerate(items):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": torch.tensor([y for _, y, _ in items]),
            "index": torch.tensor([i for _, _, i in items]),
        }


def loader(split: EncodedSplit, batch_size: int, shuffle: bool, pad_id: int, seed: int = 0):
    sampler = LengthBucketBatchSampler(split.lengths(), batch_size, shuffle, seed)
    return torch.utils.data.DataLoader(split, batch_sampler=sampler, collate_fn=PadCollator(pad_id))
