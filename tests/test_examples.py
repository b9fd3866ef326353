"""The examples really run: ``examples/demo.py`` end to end (reduced), and its safety rails.

The full demo (``make demo``) trains 400 steps; here the same program runs 60 steps with a
smaller window and interval, so that every stage -- reference run, SIGKILL, resume with
bit-identical losses, ``kf-ckpt ls/gc/plan/export``, loading the export back -- still
happens, through the installed ``kf-ckpt`` script.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from kempnerforge.checkpoint.store.files import read_latest
from kempnerforge.checkpoint.store.layout import list_step_dirs
from kempnerforge.config import AsyncCheckpointMode, load_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
REDUCED = [
    "--steps", "60", "--kill-at", "45",
    "--set", "checkpoint.dyn_ckpt_window.stop=8", "--set", "checkpoint.interval=10",
]  # fmt: skip


def _load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kf_demo", EXAMPLES / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_job_file_matches_the_issue() -> None:
    config = load_config(EXAMPLES / "job.toml")
    window = config.dyn_ckpt_window
    assert window is not None
    assert (window.start, window.stop, window.strategy) == (0, 256, "power2")
    assert config.interval == 100
    assert config.keep_last_n == 2
    assert config.async_mode is AsyncCheckpointMode.async_


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py"), "--out", str(out), *REDUCED],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
        check=False,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log

    # Every stage ran, through the installed script.
    for command in ("ls", "gc", "plan", "export", "trace"):
        assert f"$ kf-ckpt {command} " in done.stdout, command
    assert "simulating a crash: SIGKILL" in done.stdout
    assert "29 of 29 exported tensors" in done.stdout

    # The losses the demo compared: the resumed run continues the reference run exactly.
    losses = {
        name: [
            json.loads(line) for line in (out / "losses" / f"{name}.jsonl").read_text().splitlines()
        ]
        for name in ("reference", "run-killed", "run")
    }
    reference = {r["step"]: r["loss"] for r in losses["reference"]}
    assert [r["step"] for r in losses["run-killed"]] == list(range(1, 46))
    # The kill came 5 steps after the async save of step 40: the resume starts from 40 when
    # that background write had finished (latest moves as soon as it is durable), else from 30.
    resumed_from = losses["run"][0]["step"] - 1
    assert resumed_from in {30, 40}
    assert [r["step"] for r in losses["run"]] == list(range(resumed_from + 1, 61))
    resumed = 60 - resumed_from
    assert f"All {resumed} resumed losses are bit-for-bit equal" in done.stdout
    assert all(reference[r["step"]] == r["loss"] for r in losses["run"])

    # What is left on disk: milestones 1, 2, 4, 8 and the newest interval checkpoint
    # (gc --keep-last-n 1 removed step 50), with latest on it; the export is complete.
    run = out / "run"
    assert [step for step, _ in list_step_dirs(run)] == [1, 2, 4, 8, 60]
    assert read_latest(run).step == 60
    assert (out / "export" / "model.safetensors").is_file()
    assert not list((out / "export").glob("*.tmp*"))

    # The demo ends with a trace of the kept checkpoints and its figure next to the output.
    assert f"{out / 'run'}: 5 checkpoints, steps 1* 2* 4* 8* 60" in done.stdout
    assert (out / "trace.png").read_bytes().startswith(b"\x89PNG")


def test_demo_refuses_an_out_dir_it_did_not_create(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("do not delete")
    assert _load_demo().main(["--out", str(tmp_path)]) == 1
    assert "was not written by the demo" in capsys.readouterr().err
    assert precious.read_text() == "do not delete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]


def test_demo_clears_only_its_own_earlier_output(tmp_path: Path) -> None:
    demo = _load_demo()
    demo.prepare_out(tmp_path)
    for name in ("run", "reference", "export"):
        (tmp_path / name / "step_1").mkdir(parents=True)
    (tmp_path / demo.FIGURE).write_bytes(b"old figure")
    (tmp_path / "notes.txt").write_text("mine")
    demo.prepare_out(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [demo.MARKER, "losses", "notes.txt"]


@pytest.mark.parametrize(
    "argv", [["--steps", "100", "--kill-at", "100"], ["--steps", "100", "--kill-at", "0"]]
)
def test_demo_rejects_a_kill_step_outside_the_run(argv: list[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        _load_demo().main(["--out", str(tmp_path / "out"), *argv])
    assert exc.value.code == 2
    assert not (tmp_path / "out").exists()
