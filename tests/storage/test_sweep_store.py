from __future__ import annotations

import numpy as np
import pytest

from storage.errors import BlockFailedError, InputError, StoreMismatchError
from storage.layout import DatasetInfo
from storage.metadata import ImportProvenance, import_metadata, sweep_metadata
from storage.spec import OutputsSpec, RecipeSpec, SweepSpec
from storage.ledger import BlockStatus
from storage.sweep_store import SweepStore
from storage.verify import verify_store

DATASET = DatasetInfo(name="synthetic", n_train=300, n_test=40, n_classes=3)


def make_store(path, *, num_models: int = 64, block: int = 16, outputs=("margins/test", "logits/test")) -> SweepStore:
    return SweepStore.create(path, import_metadata(
        ImportProvenance(source="synthetic"), dataset=DATASET, num_models=num_models, block=block, outputs=outputs
    ))


def block_data(rng: np.random.Generator, block: int = 16) -> dict[str, np.ndarray]:
    return {
        "masks": rng.random((block, DATASET.n_train)) < 0.5,
        "margins/test": rng.standard_normal((block, DATASET.n_test)).astype(np.float32),
        "logits/test": rng.standard_normal((block, DATASET.n_test, DATASET.n_classes)).astype(np.float32),
    }


def test_layout_full_size_one_chunk_per_block(tmp_path) -> None:
    store = make_store(tmp_path / "s.zarr")
    masks = store.array("masks")
    assert masks.shape == (64, 300) and masks.chunks == (16, 300) and masks.dtype == np.bool_
    assert store.array("margins/test").dtype == np.float16
    assert store.array("logits/test").chunks == (16, 40, 3)
    assert store.num_blocks == 4 and store.ledger.statuses().tolist() == [0, 0, 0, 0]
    reopened = SweepStore.open(tmp_path / "s.zarr")
    assert reopened.dataset == DATASET and reopened.outputs == ("margins/test", "logits/test")


def test_ledgered_block_reads_back_bit_exact(tmp_path) -> None:
    store = make_store(tmp_path / "s.zarr")
    data = block_data(np.random.default_rng(0))
    written = store.write_block(2, data)
    store.ledger.mark_complete(2, checksum=written.checksum, seconds=1.0, node="n1")
    assert store.completed_rows().tolist() == list(range(32, 48))
    assert np.array_equal(store.read("masks", slice(32, 48)), data["masks"])
    assert np.array_equal(store.read("margins/test", np.arange(32, 48)), data["margins/test"].astype(np.float16))
    assert np.array_equal(store.read("logits/test", slice(32, 48)), data["logits/test"].astype(np.float16))
    assert verify_store(store).ok


def test_unledgered_block_is_invisible_and_pending(tmp_path) -> None:
    store = make_store(tmp_path / "s.zarr")
    store.write_block(1, block_data(np.random.default_rng(1)))  # the worker wrote, the driver never heard back
    assert store.completed_rows().size == 0
    assert 1 in store.ledger.pending_blocks()
    with pytest.raises(InputError, match="not completed"):
        store.read("masks", slice(16, 32))


def test_corrupt_chunk_detected_and_repaired(tmp_path) -> None:
    store = make_store(tmp_path / "s.zarr")
    for block_id in range(2):
        written = store.write_block(block_id, block_data(np.random.default_rng(block_id)))
        store.ledger.mark_complete(block_id, checksum=written.checksum, seconds=1.0, node="n1")
    chunk = tmp_path / "s.zarr" / "margins" / "test" / "c" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    report = verify_store(store)
    assert [p.block_id for p in report.problems] == [1]
    assert "unreadable" in report.problems[0].reason
    verify_store(store, repair=True)
    assert store.ledger.statuses().tolist() == [BlockStatus.COMPLETE, BlockStatus.PENDING, 0, 0]


def test_missing_chunk_of_completed_block_detected(tmp_path) -> None:
    store = make_store(tmp_path / "s.zarr")
    written = store.write_block(0, block_data(np.random.default_rng(0)))
    store.ledger.mark_complete(0, checksum=written.checksum, seconds=1.0, node="n1")
    (tmp_path / "s.zarr" / "masks" / "c" / "0" / "0").unlink()
    assert [p.block_id for p in verify_store(store).problems] == [0]


def test_bad_block_outputs_refused_before_writing(tmp_path) -> None:
    store = make_store(tmp_path / "s.zarr")
    data = block_data(np.random.default_rng(0))
    data["margins/test"] = data["margins/test"][:, :5]
    with pytest.raises(BlockFailedError, match="shape"):
        store.write_block(0, data)
    assert not (tmp_path / "s.zarr" / "masks" / "c" / "0" / "0").exists()


def test_create_refuses_existing_paths(tmp_path) -> None:
    make_store(tmp_path / "s.zarr")
    with pytest.raises(StoreMismatchError, match="dmsweep store"):
        make_store(tmp_path / "s.zarr")
    other = tmp_path / "other"
    other.mkdir()
    (other / "file.txt").write_text("x")
    with pytest.raises(StoreMismatchError, match="something else"):
        make_store(other)
    with pytest.raises(StoreMismatchError, match="not a dmsweep store"):
        SweepStore.open(other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "s.zarr"]  # nothing else left behind


def test_resize_keeps_rows_and_grows_ledger(tmp_path) -> None:
    spec = SweepSpec(store=str(tmp_path / "s.zarr"), recipe=RecipeSpec(name="noop"), alpha=0.5, num_models=64, block=16,
                     outputs=OutputsSpec(test_logits=True))
    store = SweepStore.create(tmp_path / "s.zarr", sweep_metadata(spec, dataset=DATASET))
    data = block_data(np.random.default_rng(3))
    written = store.write_block(3, data)
    store.ledger.mark_complete(3, checksum=written.checksum, seconds=1.0, node="n1")
    store.resize(store.spec.model_copy(update={"num_models": 128}))
    grown = store.reopen()
    assert grown.num_models == 128 and grown.num_blocks == 8 and grown.array("masks").shape == (128, 300)
    assert np.array_equal(grown.read("masks", slice(48, 64)), data["masks"])
    written = grown.write_block(7, block_data(np.random.default_rng(4)))
    grown.ledger.mark_complete(7, checksum=written.checksum, seconds=1.0, node="n1")
    assert grown.completed_rows().tolist() == list(range(48, 64)) + list(range(112, 128))
    assert verify_store(grown).ok
