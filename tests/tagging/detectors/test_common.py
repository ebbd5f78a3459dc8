"""The detectors' shared helpers: perceptual-hash pairing."""

from __future__ import annotations

import random

from tagging.detectors.common import near_pairs
from tagging.ingest.images import hash_distance
from tests.utils.world import phash


def test_near_pairs_finds_exactly_the_close_hashes() -> None:
    rng = random.Random(3)
    base = [rng.getrandbits(64) for _ in range(60)]
    hashes: dict[str, str | None] = {}
    for i, value in enumerate(base):
        hashes[f"k{i}"] = phash(value)
        flipped = value
        for bit in rng.sample(range(64), rng.randrange(0, 10)):
            flipped ^= 1 << bit
        hashes[f"c{i}"] = phash(flipped)
    hashes.update({"none": None, "junk": "xyz", "upper": "ABCDEF0123456789"})
    valid = {k: v for k, v in hashes.items() if v and len(v) == 16 and v == v.lower()}
    keys = sorted(valid)
    expected = {
        (a, b, hash_distance(valid[a], valid[b]))
        for i, a in enumerate(keys)
        for b in keys[i + 1 :]
        if hash_distance(valid[a], valid[b]) <= 6
    }
    assert set(near_pairs(hashes, 6)) == expected
    assert {d for *_, d in expected} > {0, 6}  # identical and near hashes both exercised
