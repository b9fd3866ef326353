"""kf-ckpt export and show: options, config-selected dtype, output, exit codes, the real script."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests._cli import invoke
from tests.checkpoint.export._ckpt import (
    corrupt_after_write,
    dcp_save,
    flip_byte,
    trained_model,
    training_state,
    write_checkpoint,
)
from tests.checkpoint.export.conftest import STEP

Weights = dict[str, torch.Tensor]
KF_CKPT = Path(sys.executable).with_name("kf-ckpt")

SHOW_TABLE = """\
{step_dir} (step 10, 123,456 tokens seen)
name             shape    dtype    size
---------------  -------  -------  ------
steps            []       int64    8 B
mask             [8]      bool     8 B
scale            [8]      float16  16 B
embed.weight     [16, 8]  float32  512 B
layers.0.weight  [8, 8]   float32  256 B
layers.0.bias    [8]      float32  32 B
layers.1.weight  [8, 8]   float32  256 B
layers.1.bias    [8]      float32  32 B
norm.weight      [8]      float32  32 B
norm.bias        [8]      float32  32 B
lm_head.weight   [16, 8]  float32  512 B
model: 11 tensors, 1.7 kB, chosen by the 'model' group
groups: model (11, 1.7 kB), optimizer (21, 2.3 kB)
optimizer state: 21 tensors, 2.3 kB
"""


def _run(*args: str) -> tuple[int, str, str]:
    result = invoke(*args)
    return result.exit_code, result.stdout, result.stderr


def _file_dtype(path: Path) -> str:
    with safe_open(path, framework="pt") as fh:
        return fh.metadata()["dtype"]


def test_show_prints_the_table(weights_and_root: tuple[Weights, Path]) -> None:
    _, root = weights_and_root
    code, out, err = _run("show", str(root))
    assert (code, err) == (0, "")
    assert out == SHOW_TABLE.format(step_dir=root / f"step_{STEP}")


def test_show_json_and_pipeline_stages(tmp_path: Path) -> None:
    model, optimizer = trained_model()
    state = training_state(model, optimizer)
    names = list(state["model"])
    step_dir = tmp_path / "ckpt" / "step_2"
    for k, part in enumerate((names[:4], names[4:])):
        dcp_save({"model": {n: state["model"][n] for n in part}}, step_dir / f"pp{k}")

    code, out, _ = _run("show", str(tmp_path / "ckpt"), "--json")
    assert out.count("\n") == 1  # one document on one line, as the other commands print
    data = json.loads(out)
    assert (data["format"], data["format_version"]) == ("kf-ckpt-show", 1)
    assert code == 0 and data["pp_stages"] == 2 and data["optimizer_size_bytes"] == 0
    assert [(t["name"], t["stage"]) for t in data["tensors"]] == [
        (n, 0 if i < 4 else 1) for i, n in enumerate(names)
    ]
    code, out, _ = _run("show", str(step_dir))
    assert code == 0 and re.search(r"^steps +\[\] +int64 +8 B +pp0$", out, re.MULTILINE)


def test_show_incomplete_checkpoint_exits_1(weights_and_root: tuple[Weights, Path]) -> None:
    _, root = weights_and_root
    (root / f"step_{STEP}" / ".metadata").unlink()
    code, out, err = _run("show", str(root / f"step_{STEP}"))
    assert (code, out) == (1, "")
    assert err.startswith("kf-ckpt: error: checkpoint ") and "is incomplete" in err


def test_export_summary_goes_to_stderr(
    weights_and_root: tuple[Weights, Path], tmp_path: Path
) -> None:
    _, root = weights_and_root
    out_dir = tmp_path / "hf"
    code, out, err = _run("export", str(root), "-o", str(out_dir), "--verify")
    assert (code, out) == (0, "")
    assert re.fullmatch(
        rf"exported 11 tensors \(864 B, bfloat16\) of step 10 to {re.escape(str(out_dir))} "
        r"in 1 file, \d+\.\d s; verified\n",
        err,
    )
    assert _file_dtype(out_dir / "model.safetensors") == "bfloat16"


def test_dtype_comes_from_the_config_and_the_flag_wins(tmp_path: Path) -> None:
    model, optimizer = trained_model()
    root = tmp_path / "ckpt"
    write_checkpoint(root, 1, training_state(model, optimizer), config={"export_dtype": "float32"})

    assert _run("export", str(root), "-o", str(tmp_path / "a.safetensors"))[0] == 0
    assert _file_dtype(tmp_path / "a.safetensors") == "float32"  # recorded in metadata.json
    assert _run("export", str(root / "step_1"), "-o", str(tmp_path / "b.safetensors"))[0] == 0
    assert _file_dtype(tmp_path / "b.safetensors") == "float32"  # also from a step dir
    args = ("-o", str(tmp_path / "c.safetensors"), "--dtype", "bfloat16")
    assert _run("export", str(root), *args)[0] == 0
    assert _file_dtype(tmp_path / "c.safetensors") == "bfloat16"

    job = tmp_path / "job.toml"
    job.write_text(f'[checkpoint]\ndir = "{root}"\nexport_dtype = "bfloat16"\n')
    assert _run("export", "-c", str(job), "-o", str(tmp_path / "d.safetensors"))[0] == 0
    assert _file_dtype(tmp_path / "d.safetensors") == "bfloat16"  # SRC from checkpoint.dir
    sets = ("--set", "checkpoint.export_dtype=bfloat16", "--set", f"checkpoint.dir={root}")
    assert _run("export", *sets, "-o", str(tmp_path / "e.safetensors"))[0] == 0
    assert _file_dtype(tmp_path / "e.safetensors") == "bfloat16"

    code, _, err = _run(
        "export", str(root), "--set", "checkpoint.nope=1", "-o", str(tmp_path / "f")
    )
    assert code == 2 and "checkpoint.nope" in err and not (tmp_path / "f").exists()


def test_export_exit_codes(
    weights_and_root: tuple[Weights, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, root = weights_and_root
    out = tmp_path / "w.safetensors"
    assert _run("export", str(root), "-o", str(out))[0] == 0
    code, _, err = _run("export", str(root), "-o", str(out))
    assert (
        code == 2 and err == f"kf-ckpt: error: output exists: {out}; pass --force to replace it\n"
    )
    assert _run("export", str(root), "-o", str(out), "--force")[0] == 0
    code, _, err = _run("export", str(root), "-o", str(out), "--max-shard-size", "lots")
    assert code == 2 and "'lots' is not a size" in err
    code, _, err = _run("export", str(root), "--step", "99", "-o", str(tmp_path / "x"))
    assert code == 2 and "no checkpoint for step 99" in err

    corrupt_after_write(monkeypatch, lambda tmp: flip_byte(tmp, tmp.stat().st_size - 1))
    code, _, err = _run("export", str(root), "-o", str(tmp_path / "v"), "--verify")
    assert code == 1 and "verification failed" in err and "'lm_head.weight' differs" in err
    assert not (tmp_path / "v").exists()

    (root / f"step_{STEP}" / ".metadata").unlink()
    code, _, err = _run("export", str(root), "--step", str(STEP), "-o", str(tmp_path / "y"))
    assert code == 1 and "is incomplete" in err and not (tmp_path / "y").exists()


def test_cli_modules_do_not_import_torch() -> None:
    code = (
        "import sys, kempnerforge.cli.export, kempnerforge.cli.show\n"
        "from click.testing import CliRunner\n"
        "from kempnerforge.cli.main import cli\n"
        "for name in ('export', 'show'):\n"
        "    assert CliRunner().invoke(cli, [name, '--help']).exit_code == 0\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.slow
def test_installed_script_exports_with_a_progress_bar_on_a_terminal(
    weights_and_root: tuple[Weights, Path], tmp_path: Path
) -> None:
    weights, root = weights_and_root
    out = tmp_path / "hf"
    controller, terminal = pty.openpty()  # stderr is a terminal: the bar is drawn there
    try:
        proc = subprocess.run(
            [str(KF_CKPT), "export", str(root), "-o", str(out), "--dtype", "float32"],
            stdout=subprocess.PIPE,
            stderr=terminal,
            timeout=120,
        )
        os.close(terminal)
        terminal = -1
        err = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the other end is closed
                break
            if not chunk:
                break
            err += chunk
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(controller)
    assert proc.returncode == 0 and proc.stdout == b""
    text = err.decode()
    assert "exporting" in text and "100%" in text
    assert "exported 11 tensors (1.7 kB, float32) of step 10" in text
    assert set(load_file(out / "model.safetensors")) == set(weights)


@pytest.mark.slow
def test_installed_script_show(weights_and_root: tuple[Weights, Path]) -> None:
    _, root = weights_and_root
    proc = subprocess.run(
        [str(KF_CKPT), "show", str(root)], capture_output=True, text=True, timeout=120
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout == SHOW_TABLE.format(step_dir=root / f"step_{STEP}")
