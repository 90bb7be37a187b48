"""Dataset files decoded once per store: hit for the same content, a new entry for a file changed in place, a
corrupt entry decoded again, concurrent fills leaving one whole entry, and datasets loaded alike either way."""

import multiprocessing
import zlib

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from snows_core.io.data import load_dataset
from snows_core.io.decoded import decode_cache, decoded, source_key
from snows_core.runs.cache import store_cache


class Decoder:
    """Reads the file's bytes as a uint8 array, counting calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path) -> np.ndarray:
        self.calls += 1
        return np.frombuffer(path.read_bytes(), dtype=np.uint8).copy()


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "images.bin"
    path.write_bytes(bytes(range(7)) * 3)
    return path


def test_a_file_is_decoded_once_per_store(tmp_path, source):
    decode = Decoder()
    with decode_cache(tmp_path / "store"):
        first = decoded(source, "bytes", decode)
        again = decoded(source, "bytes", decode)
        other_tag = decoded(source, "other", decode)  # another decoder of the same file: its own entry
    assert decode.calls == 2 and first.tolist() == again.tolist() == other_tag.tolist() == list(range(7)) * 3
    assert len(list((tmp_path / "store" / "data").glob("*.safetensors"))) == 2
    with decode_cache(tmp_path / "another"):
        decoded(source, "bytes", decode)
    decoded(source, "bytes", decode)  # outside any store: decoded every time
    assert decode.calls == 4


def test_switched_off_nothing_is_kept(tmp_path, source, monkeypatch):
    monkeypatch.setenv("SNOWS_CACHE", "off")
    decode = Decoder()
    with store_cache(tmp_path / "store"):
        decoded(source, "bytes", decode)
        decoded(source, "bytes", decode)
    assert decode.calls == 2 and not (tmp_path / "store").exists()


@pytest.mark.parametrize("change", ["one byte", "one more byte", "one fewer byte"])
def test_a_file_changed_in_place_is_decoded_again(tmp_path, source, change):
    decode = Decoder()
    with decode_cache(tmp_path / "store"):
        decoded(source, "bytes", decode)
        content = bytearray(source.read_bytes())
        if change == "one byte":
            content[5] ^= 1
        elif change == "one more byte":
            content.append(0)
        else:
            content.pop()
        source.write_bytes(bytes(content))  # same path and name, new content
        assert decoded(source, "bytes", decode).tolist() == list(content)
    assert decode.calls == 2


def _entry(folder, source, tag="bytes"):
    return folder / "data" / f"{source_key(source, tag)}.safetensors"


@pytest.mark.parametrize("corrupt", ["empty", "truncated", "not safetensors", "another key", "flipped data"])
def test_a_corrupt_entry_is_decoded_again_not_trusted(tmp_path, source, corrupt):
    folder = tmp_path / "store"
    with decode_cache(folder):
        decoded(source, "bytes", Decoder())
        entry = _entry(folder, source)
        whole = entry.read_bytes()
        good = np.frombuffer(source.read_bytes(), dtype=np.uint8).copy()
        if corrupt == "empty":
            entry.write_bytes(b"")
        elif corrupt == "truncated":
            entry.write_bytes(whole[:-4])
        elif corrupt == "not safetensors":
            entry.write_bytes(b"{not a header" * 10)
        elif corrupt == "another key":
            save_file({"data": good}, str(entry), metadata={"key": "0" * 64, "crc32": str(zlib.crc32(good))})
        else:  # a whole file, right key, one byte of the array changed: only the checksum sees it
            entry.write_bytes(whole[:-1] + bytes([whole[-1] ^ 1]))
        decode = Decoder()
        assert decoded(source, "bytes", decode).tolist() == good.tolist()
        assert decode.calls == 1
        assert decoded(source, "bytes", decode).tolist() == good.tolist() and decode.calls == 1  # replaced


def _fill(folder: str, source: str, barrier, results) -> None:
    from pathlib import Path

    barrier.wait()
    with decode_cache(Path(folder)):
        results.put(decoded(Path(source), "bytes", Decoder()).tolist())


def test_two_workers_filling_one_entry_at_once_leave_one_whole_entry(tmp_path, source):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    args = (str(tmp_path / "store"), str(source), barrier, results)
    workers = [context.Process(target=_fill, args=args) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert [results.get(timeout=10) for _ in workers] == [list(range(7)) * 3] * 2
    (entry,) = (tmp_path / "store" / "data").iterdir()  # no temporary file left behind
    assert entry == _entry(tmp_path / "store", source)


def test_an_npz_dataset_loads_alike_from_its_file_and_from_the_store(tmp_path):
    generator = np.random.default_rng(0)
    arrays = {
        f"{split}_{part}": generator.integers(0, 10 if part == "y" else 256, shape, dtype=np.uint8)
        for split in ("train", "test")
        for part, shape in (("x", (6, 3, 4, 4)), ("y", (6,)))
    }
    path = tmp_path / "tiny.npz"
    np.savez_compressed(path, **arrays)
    plain = load_dataset("cifar10", "test", path)
    with store_cache(tmp_path / "store"):
        cold, warm = (load_dataset("cifar10", "test", path) for _ in range(2))
    for dataset in (cold, warm):
        assert torch.equal(dataset.images, plain.images) and torch.equal(dataset.labels, plain.labels)
        assert dataset.labels.dtype == torch.int64
    assert len(list((tmp_path / "store" / "data").iterdir())) == 2  # the split's images and labels
