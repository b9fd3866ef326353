"""Trace across checkpoints: norms and relative changes against torch, step selection, plots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kempnerforge.checkpoint.export import plot_trace, trace_checkpoints
from kempnerforge.checkpoint.export._dcp_meta import load_tensors
from kempnerforge.errors import CheckpointNotFoundError, ConfigError, ExportError
from tests.checkpoint.export._ckpt import dcp_save, trained_model, training_state
from tests.checkpoint.export._inspect import close, flat64, write_model

WINDOW = {"dyn_ckpt_window": {"start": 0, "stop": 4}, "interval": 3}
STEPS = (0, 1, 2, 3, 4, 6)


def _model(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    drift = 1.0 / (step + 1)
    tensors = {
        "embed.weight": torch.ones(12, 4) + drift * torch.randn(12, 4, generator=g),
        "layers.0.weight": (torch.eye(6) + drift * torch.randn(6, 6, generator=g)).bfloat16(),
        "layers.0.bias": torch.zeros(6),  # stays zero: rel_change undefined
        "layers.1.weight": torch.full((6, 6), 0.5) * (step + 1),
        "steps": torch.tensor(step, dtype=torch.int64),
    }
    if step >= 2:
        tensors["layers.1.late"] = torch.full((3,), float(step))  # appears at step 2
    return tensors


@pytest.fixture(scope="module")
def run_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trace") / "ckpt"
    for step in STEPS:
        write_model(root, step, _model(step), config=WINDOW)
    (root / "step_9").mkdir()  # an incomplete save: no .metadata
    return root


def _expected(steps: tuple[int, ...], members: list[str]) -> tuple[list, list]:
    models = {s: _model(s) for s in steps}
    l2, rel = [], []
    for i, step in enumerate(steps):
        present = [m for m in members if m in models[step]]
        l2.append(float(flat64(models[step], present).norm()) if present else None)
        both = [m for m in present if i and m in models[steps[i - 1]]]
        if not both:
            rel.append(None)
            continue
        before = flat64(models[steps[i - 1]], both)
        moved = float((flat64(models[step], both) - before).norm())
        rel.append(moved / float(before.norm()) if float(before.norm()) else None)
    return l2, rel


def _assert_series(actual: list, expected: list, name: str) -> None:
    assert len(actual) == len(expected), name
    bad = [
        (i, a, e) for i, (a, e) in enumerate(zip(actual, expected, strict=True)) if not close(a, e)
    ]
    assert not bad, f"{name}: {bad}"


@pytest.mark.parametrize("depth", [None, 1, 2])
def test_norms_and_changes_match_torch(run_root: Path, depth: int | None) -> None:
    result = trace_checkpoints(run_root, depth=depth, batch_bytes=200)
    assert result.steps == STEPS and result.milestones == (0, 1, 2, 4)
    assert result.notes == ("skipped step_9: incomplete (no DCP .metadata)",)
    names = list(_model(6))
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name if depth is None else ".".join(name.split(".")[:depth]), []).append(
            name
        )
    document = result.to_json()
    assert [r["name"] for r in document["rows"]] == list(groups)
    for row in document["rows"]:
        l2, rel = _expected(STEPS, groups[row["name"]])
        _assert_series(row["l2"], l2, row["name"])
        _assert_series(row["rel_change"], rel, row["name"])
    l2, rel = _expected(STEPS, names)
    _assert_series(document["total"]["l2"], l2, "total")
    _assert_series(document["total"]["rel_change"], rel, "total")
    assert document["total"]["rel_change"][0] is None


def test_json_and_csv(run_root: Path) -> None:
    result = trace_checkpoints(run_root, steps=[0, 4], include=["layers.1.*"])
    document = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert set(document) == {"format", "format_version", "root", "steps", "rows", "total"}
    assert (document["format"], document["format_version"]) == ("kf-ckpt-trace", 1)
    assert (document["root"], document["steps"]) == (str(run_root), [0, 4])
    rows = list(result.csv_rows())
    assert [(s, n) for s, n, _, _ in rows] == [
        (0, "layers.1.weight"), (0, "layers.1.late"), (0, "total"),
        (4, "layers.1.weight"), (4, "layers.1.late"), (4, "total"),
    ]  # fmt: skip
    assert rows[1][2:] == (None, None)  # layers.1.late did not exist at step 0
    assert rows[3][2:] == (pytest.approx(15.0), pytest.approx(4.0))  # 0.5*5*6 vs 0.5*1*6


def test_step_selection(run_root: Path) -> None:
    assert trace_checkpoints(run_root, steps="milestones").steps == (0, 1, 2, 4)
    assert trace_checkpoints(run_root, steps=[6, 0, 6]).steps == (0, 6)
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint for step 5, 7 under"):
        trace_checkpoints(run_root, steps=[5, 7])
    with pytest.raises(CheckpointNotFoundError, match="none of the selected checkpoints"):
        trace_checkpoints(run_root, steps=[9])
    with pytest.raises(ConfigError, match="steps must be 'all', 'milestones'"):
        trace_checkpoints(run_root, steps="newest")
    with pytest.raises(ExportError, match=r"no model tensors selected in .* \(x\)"):
        trace_checkpoints(run_root, include=["x"])


def test_each_checkpoint_is_read_once_in_bounded_batches(
    run_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kempnerforge.checkpoint.export import _stream

    loads: list[tuple[Path, int]] = []

    def counting(part, entries, dtypes):  # type: ignore[no-untyped-def]
        entries = list(entries)
        loads.append((part.step_dir, sum(e.size_bytes for e in entries)))
        return load_tensors(part, entries, dtypes)

    monkeypatch.setattr(_stream, "load_tensors", counting)
    result = trace_checkpoints(run_root, batch_bytes=100)
    per_dir: dict[Path, int] = {}
    for step_dir, size in loads:
        per_dir[step_dir] = per_dir.get(step_dir, 0) + size
    models = {s: _model(s) for s in STEPS}
    assert per_dir == {
        run_root / f"step_{s}": sum(t.numel() * t.element_size() for t in models[s].values())
        for s in STEPS
    }
    biggest = max(t.numel() * t.element_size() for m in models.values() for t in m.values())
    assert max(size for _, size in loads) <= max(100, biggest)
    assert result.size_bytes == sum(per_dir.values())


def test_pipeline_staged_sources(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    weights = {}
    for step in (0, 1):
        model, optimizer = trained_model(seed=step)
        state = training_state(model, optimizer)
        weights[step] = {n: t.detach().clone() for n, t in state["model"].items()}
        first = {"embed.weight", "layers.0.weight", "layers.0.bias", "steps", "mask"}
        for k, names in enumerate([first, set(state["model"]) - first]):
            dcp_save({"model": {n: t for n, t in state["model"].items() if n in names}},
                     root / f"step_{step}" / f"pp{k}")  # fmt: skip
        metadata = json.dumps({"step": step, "pp_stages": 2})
        (root / f"step_{step}" / "metadata.json").write_text(metadata)
    result = trace_checkpoints(root, depth=1)
    names = list(weights[0])
    _assert_series(
        list(result.total.l2), [float(flat64(weights[s], names).norm()) for s in (0, 1)], "l2"
    )
    moved = float((flat64(weights[1], names) - flat64(weights[0], names)).norm())
    assert close(result.total.rel_change[1], moved / float(flat64(weights[0], names).norm()))


def test_two_rank_fsdp2_source(fsdp_checkpoint: tuple[Path, dict[str, torch.Tensor]]) -> None:
    step_dir, full = fsdp_checkpoint
    result = trace_checkpoints(step_dir.parent)
    by_name = {r.name: r.l2[0] for r in result.rows}
    assert by_name.keys() == full.keys()
    assert all(close(by_name[n], float(t.double().norm())) for n, t in full.items())


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot_files(run_root: Path, tmp_path: Path, suffix: str) -> None:
    result = trace_checkpoints(run_root, depth=2)
    path = plot_trace(result, tmp_path / f"trace{suffix}", top_k=2)
    data = path.read_bytes()
    if suffix == ".png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    else:
        text = data.decode()
        assert (
            text.lstrip().startswith("<?xml")
            and "<svg" in text
            and text.rstrip().endswith("</svg>")
        )
        # The legend names the top groups, the others in one entry, the whole model, milestones.
        for label in ("layers.0", "layers.1", "other groups (2)", "total", "window milestone"):
            assert f">{label}<" in text, label
        assert ">embed.weight<" not in text  # grey, unnamed
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_plot_refuses_other_suffixes(run_root: Path, tmp_path: Path) -> None:
    result = trace_checkpoints(run_root, steps=[0, 1])
    with pytest.raises(ConfigError, match=r"must end in \.png or \.svg"):
        plot_trace(result, tmp_path / "trace.pdf")
    with pytest.raises(ConfigError, match="is not a directory"):
        plot_trace(result, tmp_path / "missing" / "trace.png")


def test_missing_matplotlib_exits_2_with_the_install_line(run_root: Path, tmp_path: Path) -> None:
    # matplotlib is installed here: simulate its absence in a fresh interpreter.
    code = (
        "import sys\n"
        "sys.modules['matplotlib'] = None  # import matplotlib now raises ImportError\n"
        "from kempnerforge.cli.main import main\n"
        "sys.argv = ['kf-ckpt', 'trace', sys.argv[1], '--plot', sys.argv[2]]\n"
        "main()\n"
    )
    out = tmp_path / "t.png"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(run_root), str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (
        "kf-ckpt: error: plotting needs matplotlib, an optional extra: "
        "pip install 'kempnerforge[plot]'\n"
    )
    assert not out.exists()
