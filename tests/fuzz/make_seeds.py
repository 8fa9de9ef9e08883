#!/usr/bin/env python3
"""Writes the seed corpora of tests/fuzz (corpus/<target>/seed-*). Run from anywhere; the
files are committed, so this runs only when a target's input format changes."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name in os.listdir(d):
        os.remove(os.path.join(d, name))
    for i, s in enumerate(seeds):
        with open(os.path.join(d, "seed-%02d" % i), "wb") as f:
            f.write(s)


def args(*words):
    return b"\0".join(w.encode() for w in words)


write("plan_args", [
    args("--params", "7.5B", "--world", "64", "--stage", "2", "--precision", "fp16"),
    args("--fit", "80GB", "--world", "8,64", "--precision", "fp16"),
    args("--params", "350M", "--world", "1,2,1024", "--json"),
    args("--params", "1T", "--world", "1", "--optimizer", "adam-amsgrad", "--gradient-slots", "--defer-reduction",
         "--bucket", "1", "--alignment", "1M"),
    args("--fit", "1.5TiB", "--world", "1048576", "--stage", "0", "--precision", "bf16-pure", "--optimizer", "sgd"),
    args("--params", "124000000", "--world", "8", "--precision", "bf16-accum", "--optimizer", "lamb", "--json"),
    args("--help"),
    args("--params", "0.5K", "--world", "3,", "--stage", "3"),
    args("--params", "7.5B", "--world", "64", "--partitioner", "bucketed", "--largest-param", "206M", "--json"),
    args("--fit", "80GB", "--world", "8", "--largest-param", "1T", "--partitioner", "contiguous"),
    args("--fit", "9000TB", "--world", "1048576", "--stage", "3"),
    args("--params", "70B", "--world", "64", "--stage", "3", "--gather-buffers", "3", "--gather-elements", "50M", "--json"),
])

write("consolidate_args", [
    args("ckpt", "model.safetensors"),
    args("ckpt/step-20", "out/model.safetensors", "--optimizer-state"),
    args("ckpt", "model.safetensors", "--optimizer"),
    args("only-one"),
    b'layer.0/"weight"\\\n\x01\x1f',
])


def size_small(v):  # reader::size(): kind 8..15 -> byte % 64 + 1
    assert 1 <= v <= 64
    return bytes([8, v - 1])


def size_u16(v):  # kind 5: two bytes
    return bytes([5]) + struct.pack("<H", v)


def size_any(v):
    if v == 0:
        return bytes([0])
    if v == 1:
        return bytes([1])
    if v <= 64:
        return size_small(v)
    return size_u16(v)


def layout(world, alignment, bucket, sizes, stage=2, bucketed=False, slots=False, defer=False, fault=0,
           broken=0, seed=1, staging=1):
    shape = 0
    out = bytearray([shape, world - 1])
    out += size_any(alignment) + size_any(bucket)
    out += bytes([len(sizes)])
    for s in sizes:
        out += size_any(s)
    mode = stage | (4 if bucketed else 0) | (8 if slots else 0) | (16 if defer else 0) | ((staging - 1) << 5)
    out += bytes([mode, fault, broken]) + struct.pack("<Q", seed)
    return bytes(out)


model = [1, 3, 17, 1, 64, 5, 129, 2, 31, 7, 250, 1]
write("layout", [
    layout(3, 16, 64, model),
    layout(4, 1, 1, model, bucketed=True),
    layout(2, 4, 7, model, stage=1, slots=True),
    layout(1, 16, 1 << 15, model, stage=0),
    layout(4, 8, 13, model, stage=2, defer=True, bucketed=True, seed=7),
    layout(4, 1, 5, model, stage=2, staging=3, seed=3),
    layout(3, 4, 61, model, stage=1, staging=2, bucketed=True, slots=True, seed=5),
    layout(3, 16, 64, model, fault=2, broken=4),   # overlapping spans
    layout(2, 16, 64, [5, 0, 7]),                  # an empty parameter
    layout(2, 16, 64, []),                         # no parameters
    bytes([0x01, 0, 0, 0, 0, 0x80]) + size_any(16) + size_any(64) + bytes([1]) + size_any(3),  # a huge world
    bytes([0, 1, 4, 60, 6]) + b"\xff" * 8 + bytes([2, 4, 255, 6]) + b"\xff" * 8,  # near-2^64 sizes
])
