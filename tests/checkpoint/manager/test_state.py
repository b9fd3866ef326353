"""train_state.pt: RNG round trips, upstream files, and loading that never runs stored code."""

from __future__ import annotations

import io
import os
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from kempnerforge.checkpoint.manager.train_state import (
    RNG_EXTENSION_KEY,
    InsecureFileWarning,
    get_rng_state,
    load_train_state,
    parse_train_state,
    save_train_state,
    set_rng_state,
)
from kempnerforge.errors import CorruptCheckpointError

OTHER_UID = 12345


class MarkerPayload:
    """Unpickling this creates ``path`` (``builtins.open(path, "w")``): a stand-in for any code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def _draws() -> tuple[float, float, torch.Tensor]:
    return random.random(), float(np.random.rand()), torch.rand(3)


def _torch_save_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _planted(path: Path, marker: Path) -> Path:
    path.write_bytes(_torch_save_bytes({"step": 1, "extra": MarkerPayload(marker)}))
    return path


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leave a cached gaussian in the numpy state
    save_train_state(tmp_path / "ts.pt", {"step": 7, "rng": get_rng_state()})
    expected = _draws()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)

    state = load_train_state(tmp_path / "ts.pt")
    set_rng_state(state["rng"])

    assert state["step"] == 7
    assert isinstance(state["rng"]["python"], tuple)  # what random.setstate takes
    assert state["rng"]["numpy"][0] == "MT19937"  # the legacy tuple np.random.set_state takes
    actual = _draws()
    assert actual[:2] == expected[:2]
    assert torch.equal(actual[2], expected[2])


def test_upstream_file_with_numpy_ndarray_state_loads(tmp_path: Path) -> None:
    np.random.seed(5)
    upstream = {
        "step": 3,
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),  # tuple holding a uint32 ndarray
            "torch": torch.random.get_rng_state(),
        },
    }
    (tmp_path / "ts.pt").write_bytes(_torch_save_bytes(upstream))
    expected = np.random.rand(4)
    np.random.seed(0)

    set_rng_state(load_train_state(tmp_path / "ts.pt")["rng"])

    assert np.array_equal(np.random.rand(4), expected)


def test_file_written_under_numpy_1_module_path_loads(tmp_path: Path) -> None:
    # numpy 1.x pickles _reconstruct as numpy.core.multiarray; rewrite the archive accordingly.
    original = zipfile.ZipFile(io.BytesIO(_torch_save_bytes({"numpy": np.random.get_state()})))
    out = tmp_path / "ts.pt"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for info in original.infolist():
            data = original.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray\n_reconstruct" in data
                data = data.replace(b"numpy._core.", b"numpy.core.")
            archive.writestr(info.filename, data)

    state = load_train_state(out)

    assert state["numpy"][0] == "MT19937"
    assert state["numpy"][1].dtype == np.uint32


def test_planted_payload_never_executes(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _planted(tmp_path / "train_state.pt", marker)
    # The payload is live: an unsafe load would run it.
    probe = tmp_path / "probe"
    torch.load(io.BytesIO(_torch_save_bytes(MarkerPayload(probe))), weights_only=False)
    assert probe.exists()

    with pytest.raises(CorruptCheckpointError, match=r"not unpickled \(.*GLOBAL io\.open"):
        load_train_state(path)

    assert not marker.exists()


def test_file_of_another_user_is_refused_before_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _planted(tmp_path / "train_state.pt", marker)
    os.chown(path, OTHER_UID, -1)

    with pytest.raises(PermissionError, match=f"owned by uid {OTHER_UID}"):
        load_train_state(path)

    assert not marker.exists()


def test_valid_file_of_another_user_is_refused_too(tmp_path: Path) -> None:
    path = tmp_path / "train_state.pt"
    save_train_state(path, {"step": 1})
    os.chown(path, OTHER_UID, -1)

    with pytest.raises(PermissionError, match="chown"):
        load_train_state(path)


def test_group_writable_file_loads_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "train_state.pt"
    save_train_state(path, {"step": 4})
    path.chmod(0o664)

    with pytest.warns(InsecureFileWarning, match="chmod go-w"):
        state = load_train_state(path)

    assert state["step"] == 4


def test_symlinked_train_state_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.pt"
    save_train_state(real, {"step": 1})
    link = tmp_path / "train_state.pt"
    link.symlink_to(real)

    with pytest.raises(PermissionError, match="symlink"):
        load_train_state(link)


def test_damaged_or_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "train_state.pt"
    with pytest.raises(CorruptCheckpointError, match="is missing"):
        load_train_state(path)
    path.write_bytes(b"not a torch archive")

    with pytest.raises(CorruptCheckpointError, match="damaged"):
        load_train_state(path)


def test_saving_an_unloadable_extra_fails_at_save_time(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "train_state.pt"

    with pytest.raises(TypeError, match="weights_only"):
        save_train_state(path, {"step": 1, "extra": {"bad": MarkerPayload(marker)}})

    assert not path.exists()
    assert not marker.exists()


def test_each_rank_restores_its_own_entry_when_world_size_matches() -> None:
    ranks = [
        {"rng": {"who": 0}, "dataloader": {"pos": 0}},
        {"rng": {"who": 1}, "dataloader": None},
    ]
    ours = {
        "step": 3,
        "rng": {"who": 0, RNG_EXTENSION_KEY: {"ranks": ranks}},
        "dataloader": {"pos": 0},
    }
    one = parse_train_state(ours, 1, 2)
    assert (one.rng, one.dataloader, one.step, one.extra) == ({"who": 1}, None, 3, {})
    other_world = parse_train_state(ours, 2, 3)  # rank 0's copy, from the top level
    assert other_world.rng is not None and other_world.rng["who"] == 0
    assert other_world.dataloader == {"pos": 0}
    upstream = parse_train_state({"rng": {"who": 9}, "phase": 2}, 0, 1)
    assert (upstream.rng, upstream.dataloader, upstream.extra) == ({"who": 9}, None, {"phase": 2})
    assert upstream.frozen_params is None


def test_files_of_our_first_format_still_load() -> None:
    """Before the upstream layout: extras under "extra", per-rank state top-level."""
    old = {
        "format_version": 1,
        "step": 4,
        "tokens_seen": 8,
        "scheduler": None,
        "extra": {"note": "hi"},
        "frozen_params": ["head.weight"],
        "rng": {"python": [3, [1] * 625, None], "torch": torch.random.get_rng_state()},
        "dataloader": None,
        "ranks": [{"rng": {"who": 0}, "dataloader": {"pos": 5}}],
    }
    parsed = parse_train_state(old, 0, 1)
    assert parsed.extra == {"note": "hi"} and parsed.frozen_params == ["head.weight"]
    assert parsed.dataloader == {"pos": 5} and parsed.step == 4
