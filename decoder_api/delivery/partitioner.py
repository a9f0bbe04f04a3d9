"""Which partition of the finals topic a call's key goes to: the Java client's murmur2 partitioner.

Kafka's default partitioner (and librdkafka's ``murmur2_random`` for non-empty keys) maps a key
to ``murmur2(key) & 0x7fffffff`` modulo the topic's partition count. When partitions are added
to a live topic the modulus changes and a key moves; the publisher therefore pins each call to
the partition this function gives for the count known when the call started (see publisher.py).
"""

from __future__ import annotations

MURMUR2_SEED = 0x9747B28C
MURMUR2_M = 0x5BD1E995
MASK_32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """MurmurHash2 (32 bits) with the seed Kafka's Java client uses; unsigned."""
    length = len(data)
    h = (MURMUR2_SEED ^ length) & MASK_32
    whole = length - length % 4
    for i in range(0, whole, 4):
        h = ((h * MURMUR2_M) & MASK_32) ^ _mix(int.from_bytes(data[i : i + 4], "little"))
    h = _tail(h, data[whole:])
    h ^= h >> 13
    h = (h * MURMUR2_M) & MASK_32
    return h ^ (h >> 15)


def key_partition(key: bytes, partitions: int) -> int:
    """The partition the Java client (and librdkafka's ``murmur2_random``) chooses for ``key``."""
    if partitions < 1:
        raise ValueError(f"a topic has at least one partition, not {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def _mix(k: int) -> int:
    k = (k * MURMUR2_M) & MASK_32
    k ^= k >> 24
    return (k * MURMUR2_M) & MASK_32


def _tail(h: int, tail: bytes) -> int:
    """The last 1-3 bytes, folded in as the Java implementation does (switch fall-through)."""
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h = ((h ^ tail[0]) * MURMUR2_M) & MASK_32
    return h
