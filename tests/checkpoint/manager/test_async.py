"""Async saves: latest never names an incomplete step, the disk matches sync mode, failures surface."""

from __future__ import annotations

import json
import resource
import signal
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from kempnerforge.checkpoint.manager import CheckpointManager, async_save
from kempnerforge.checkpoint.manager.async_save import AsyncCheckpointer
from kempnerforge.checkpoint.manager.train_state import load_train_state
from kempnerforge.checkpoint.store.files import read_latest
from kempnerforge.checkpoint.store.layout import DCP_METADATA, check_complete
from kempnerforge.errors import CheckpointSaveError
from tests.checkpoint._models import (
    TinyNet,
    assert_bit_equal,
    build,
    make_config,
    snapshot,
    train_step,
)

ASYNC_MODES = ["async", "async_with_pinned_mem"]


@pytest.fixture(autouse=True)
def _no_pinning_warning() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*needs CUDA for pinned host memory")
        yield


def _latest_is_complete(root: Path) -> int | None:
    step = read_latest(root).step
    if step is not None:
        assert check_complete(root / f"step_{step}").complete, f"latest -> incomplete step_{step}"
    return step


def _train_and_save(root: Path, mode: str, observe: bool) -> None:
    model, optimizer, scheduler = build(0)
    manager = CheckpointManager(make_config(root, async_mode=mode), model, optimizer)
    for step in range(1, 7):
        train_step(model, optimizer, scheduler)
        if step % 2 == 0:
            manager.save(step, tokens_seen=step, scheduler=scheduler)
            if observe:
                # Either the flush of `step` is still running (latest names the save before) or
                # it is durable and rank 0 already moved latest to it: never an incomplete step.
                assert _latest_is_complete(root) in {step - 2 or None, step}
    manager.wait()
    assert _latest_is_complete(root) == 6
    manager.close()


def _files(step_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(step_dir.iterdir())}


@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_async_never_leaves_latest_incomplete_and_matches_sync_disk(
    tmp_path: Path, mode: str
) -> None:
    _train_and_save(tmp_path / "sync", "disabled", observe=False)
    _train_and_save(tmp_path / mode, mode, observe=True)

    for step in (2, 4, 6):
        sync_files = _files(tmp_path / "sync" / f"step_{step}")
        async_files = _files(tmp_path / mode / f"step_{step}")
        assert set(async_files) == set(sync_files)
        shards = [name for name in sync_files if name.endswith(".distcp")]
        assert shards
        for name in shards:
            assert async_files[name] == sync_files[name], f"step_{step}/{name} differs"
        assert_bit_equal(
            load_train_state(tmp_path / mode / f"step_{step}" / "train_state.pt"),
            load_train_state(tmp_path / "sync" / f"step_{step}" / "train_state.pt"),
        )
        meta = [
            json.loads((tmp_path / d / f"step_{step}" / "metadata.json").read_text())
            for d in ("sync", mode)
        ]
        for doc in meta:
            del doc["saved_at"], doc["checkpoint"]["async_mode"], doc["checkpoint"]["dir"]
            del doc["run_id"]  # each manager records its own
        assert meta[0] == meta[1]


def test_state_is_captured_at_save_time(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyNet(dim=256, hidden=1024)  # a few MB, so the flush is still running below
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    manager = CheckpointManager(make_config(tmp_path, async_mode="async"), model, optimizer)
    expected = snapshot(model, optimizer)

    manager.save(1)
    with torch.no_grad():  # training goes on while the flush runs
        for p in model.parameters():
            p.add_(1.0)
        for state in optimizer.state.values():
            state["exp_avg"].mul_(-3.0)
    assert manager.flush_pending_save() == 1

    fresh = TinyNet(dim=256, hidden=1024)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    CheckpointManager(make_config(tmp_path), fresh, fresh_optimizer).load()
    assert_bit_equal(snapshot(fresh, fresh_optimizer), expected)
    manager.close()


def test_load_finishes_a_pending_save_first(tmp_path: Path) -> None:
    model, optimizer, _ = build(0)
    manager = CheckpointManager(make_config(tmp_path, async_mode="async"), model, optimizer)
    manager.save(5)
    assert read_latest(tmp_path).step is None

    assert manager.load()[0] == 5
    assert manager.flush_pending_save() is None


@pytest.fixture
def file_size_limit() -> Iterator[None]:
    """Writes past 1 MiB fail with EFBIG in this process (a real, deterministic I/O error)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_failed_flush_raises_at_the_next_call_and_never_moves_latest(
    tmp_path: Path, file_size_limit: None
) -> None:
    torch.manual_seed(0)
    model = TinyNet(dim=256, hidden=1024)  # shards of several MB, train_state of a few kB
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    manager = CheckpointManager(make_config(tmp_path, async_mode="async"), model, optimizer)
    manager.save(1)
    manager.wait()

    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, hard))
    try:
        manager.save(2)  # staging and train_state.pt succeed; the shards fail in the background
        with pytest.raises(CheckpointSaveError, match=r"step 2.*'latest' was not moved"):
            manager.wait()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, hard))

    assert read_latest(tmp_path).step == 1
    assert not (tmp_path / "step_2" / DCP_METADATA).exists()
    manager.save(3)  # the manager recovers
    manager.wait()
    assert _latest_is_complete(tmp_path) == 3
    manager.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="pinned memory works with CUDA")
def test_pinned_mode_without_cuda_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(async_save, "_warned_no_pinning", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = AsyncCheckpointer(pinned=True)
        second = AsyncCheckpointer(pinned=True)

    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1
    assert "behaves like 'async'" in messages[0] or "like 'async'" in messages[0]
    assert first.pinned is False and second.pinned is False
    first.close()
    second.close()


def test_latest_moves_as_soon_as_the_flush_is_durable(tmp_path: Path) -> None:
    """A crash between two async saves resumes from the newest durable one, not the one before."""
    root = tmp_path / "ckpt"
    model, optimizer, scheduler = build(0)
    manager = CheckpointManager(make_config(root, async_mode="async"), model, optimizer)
    train_step(model, optimizer, scheduler)
    manager.save(1, tokens_seen=1)
    pending = manager._async.pending if manager._async else None
    assert pending is not None
    pending.future.result()  # the flush is done, but nobody called wait() or save() yet
    deadline = 600  # polls of 0.1 s: the callback runs right after the future completes
    while read_latest(root).step != 1 and deadline:
        deadline -= 1
        time.sleep(0.1)
    assert _latest_is_complete(root) == 1
    # A fresh process would resume from step 1 now (the crash case).
    fresh_model, fresh_optimizer, _ = build(1)
    other = CheckpointManager(make_config(root), fresh_model, fresh_optimizer)
    assert other.load()[0] == 1
    manager.close()
    assert _latest_is_complete(root) == 1


def test_async_checkpointer_save_alone_stages_then_flushes(tmp_path: Path) -> None:
    """The public one-call path: save() copies the state before it returns, so the caller may
    change its tensors at once; a second save before wait() is refused; a failed flush surfaces
    in wait() and leaves the checkpointer usable."""
    import torch.distributed.checkpoint as dcp

    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4)}
    expected = {k: v.clone() for k, v in state.items()}
    checkpointer = AsyncCheckpointer()
    try:
        pending = checkpointer.save(state, checkpoint_id=tmp_path / "step_1", step=1)
        assert pending.step == 1 and checkpointer.pending is pending
        state["w"].mul_(-1)  # the staged copy, not this tensor, is what gets written
        state["b"].zero_()
        with pytest.raises(RuntimeError, match="step 1 is still pending; call wait"):
            checkpointer.save(state, checkpoint_id=tmp_path / "step_2", step=2)
        assert checkpointer.wait() == 1 and checkpointer.pending is None
        assert checkpointer.wait() is None
        loaded = {k: torch.empty_like(v) for k, v in expected.items()}
        dcp.load(loaded, checkpoint_id=str(tmp_path / "step_1"))
        assert_bit_equal(loaded, expected)

        blocker = tmp_path / "step_3"
        blocker.write_text("a file where the checkpoint directory should go")
        checkpointer.save(state, checkpoint_id=blocker, step=3)
        with pytest.raises(CheckpointSaveError, match="background save of step 3"):
            checkpointer.wait()
        checkpointer.save(state, checkpoint_id=tmp_path / "step_4", step=4)
        assert checkpointer.wait() == 4
        assert (tmp_path / "step_4" / DCP_METADATA).is_file()
    finally:
        checkpointer.close()
