"""Text for the torchtitan spec without a download: the Python standard library's source, one byte per token.

The files of the running interpreter's standard library (the `*.py` files beside the `os` module's), split by a hash of
the file name (one in ten for validation, as examples/train_code.py does), concatenated into one
byte stream. A batch is `local_batch_size` random windows of seq_len + 1 bytes: inputs and
next-byte labels. Each data-parallel rank draws its own windows (its generator is seeded by the
seed, its dp rank and the step), so the context- and tensor-parallel ranks of one dp rank see the
same batch, as torchtitan's trainer expects (it splits the sequence itself).
"""

import os
import pathlib
import zlib

import torch

__all__ = ["ByteStream", "stdlib_text"]


def stdlib_text(split="train"):
    """The bytes of the standard library's *.py files of `split` ("train" or "valid"), as one uint8 tensor."""
    files = sorted(pathlib.Path(os.__file__).resolve().parent.glob("*.py"))
    chosen = [f for f in files if (zlib.crc32(f.name.encode()) % 10 == 0) == (split == "valid")]
    return torch.frombuffer(bytearray(b"".join(f.read_bytes() for f in chosen)), dtype=torch.uint8)


class ByteStream:
    """An endless iterator of ({"input": [B, L]}, labels [B, L]) batches of random windows of `data`, and its
    state (the step) for checkpoints."""

    def __init__(self, data, batch_size, seq_len, dp_rank=0, seed=0):
        if len(data) < seq_len + 2:
            raise ValueError(f"the text has {len(data)} bytes, fewer than seq_len + 2 = {seq_len + 2}")
        self.data, self.batch_size, self.seq_len = data, batch_size, seq_len
        self.dp_rank, self.seed, self.step = dp_rank, seed, 0

    def batch(self, step):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.dp_rank * 10_007 + step)
        starts = torch.randint(0, len(self.data) - self.seq_len - 1, (self.batch_size,), generator=gen)
        rows = torch.stack([self.data[s : s + self.seq_len + 1] for s in starts.tolist()]).long()
        return {"input": rows[:, :-1]}, rows[:, 1:]

    def __iter__(self):
        while True:
            self.step += 1
            yield self.batch(self.step)

    def state_dict(self):
        return {f"dp_rank_{self.dp_rank}": self.step}

    def load_state_dict(self, state):
        self.step = state.get(f"dp_rank_{self.dp_rank}", 0)
