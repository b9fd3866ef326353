"""kf-ckpt stats, diff and trace: exact output, JSON/CSV, exit codes, the real script."""

from __future__ import annotations

import json
import math
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from kempnerforge.cli.main import cli
from tests.checkpoint.export._inspect import write_model

KF_CKPT = Path(sys.executable).with_name("kf-ckpt")
WINDOW = {"dyn_ckpt_window": {"start": 0, "stop": 2}}


def _models() -> dict[int, dict[str, torch.Tensor]]:
    return {
        0: {
            "layers.0.w": torch.tensor([[3.0, 4.0], [0.0, 0.0]]),
            "layers.0.b": torch.tensor([1.0, math.nan, math.inf]),
            "layers.1.w": torch.tensor([1.0, 2.0]).bfloat16(),
            "n": torch.tensor([2], dtype=torch.int64),
        },
        1: {
            "layers.0.w": torch.tensor([[3.0, 4.0], [1.0, 0.0]]),
            "layers.0.b": torch.tensor([1.0, 2.0, 3.0]),
            "layers.1.w": torch.tensor([2.0, 2.0]).bfloat16(),
            "n": torch.tensor([3], dtype=torch.int64),
            "extra": torch.ones(2),
        },
        2: {
            "layers.0.w": torch.tensor([[3.0, 4.0], [1.0, 1.0]]),
            "layers.0.b": torch.tensor([1.0, 2.0, 4.0]),
            "layers.1.w": torch.tensor([2.0, 4.0]).bfloat16(),
            "n": torch.tensor([3], dtype=torch.int64),
            "extra": torch.ones(2),
        },
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inspect") / "ckpt"
    for step, model in _models().items():
        write_model(path, step, model, config=WINDOW)
    return path


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


STATS_TABLE = """\
{root}/step_0 (step 0)
name        shape    dtype       l2_norm    mean    std    min    max    abs_max    nan    inf    zeros
----------  -------  --------  ---------  ------  -----  -----  -----  ---------  -----  -----  -------
layers.0.w  [2, 2]   float32           5    1.75  1.785      0      4          4      0      0        2
layers.0.b  [3]      float32           1       1      0      1      1          1      1      1        0
layers.1.w  [2]      bfloat16      2.236     1.5    0.5      1      2          2      0      0        0
n           [1]      int64             2       2      0      2      2          2      0      0        0
total: 4 tensors, 10 values, l2_norm 5.916, 1 NaN, 1 Inf
"""


def test_stats_table_and_nonfinite_health_check(root: Path) -> None:
    assert _run("stats", str(root), "--step", "0") == (0, STATS_TABLE.format(root=root), "")
    code, out, err = _run("stats", str(root), "--step", "0", "--fail-on-nonfinite")
    assert (code, out) == (1, STATS_TABLE.format(root=root))
    assert err == (
        f"kf-ckpt: error: {root}/step_0 holds 1 NaN and 1 Inf values; see the nan and inf columns\n"
    )
    code, out, err = _run("stats", str(root), "--fail-on-nonfinite", "--json")  # newest: step 2
    document = json.loads(out)
    assert (code, err, document["step"], document["total"]["nan_count"]) == (0, "", 2, 0)
    assert document["tensors"][0] == {
        "name": "layers.0.w", "shape": [2, 2], "dtype": "float32", "numel": 4,
        "l2_norm": math.sqrt(27), "mean": 2.25, "std": math.sqrt(27 / 4 - 2.25**2),
        "min": 1.0, "max": 4.0, "abs_max": 4.0, "nan_count": 0, "inf_count": 0, "zero_count": 0,
    }  # fmt: skip


DIFF_TABLE = """\
A: {root}/step_1 (step 1)
B: {root}/step_2 (step 2)
name          l2_a    l2_b    l2_diff    rel_diff    cosine    max_abs_diff
----------  ------  ------  ---------  ----------  --------  --------------
layers.1.w   2.828   4.472          2      0.7071    0.9487               2
layers.0.b   3.742   4.583          1      0.2673    0.9915               1
layers.0.w   5.099   5.196          1      0.1961    0.9813               1
extra        1.414   1.414          0           0         1               0
n                3       3          0           0         1               0
total        7.681   8.888      2.449      0.3189    0.9667               2
"""


def test_diff_table_lists_and_order(root: Path) -> None:
    assert _run("diff", str(root), "--from", "1", "--to", "2") == (
        0, DIFF_TABLE.format(root=root), ""
    )  # fmt: skip
    code, out, _ = _run(
        "diff", str(root / "step_0"), str(root / "step_1"), "--depth", "2", "--sort", "name"
    )
    assert code == 0
    assert out.splitlines()[4:] == [
        "layers.0     nan   6.325        nan         nan       nan             nan",
        "layers.1   2.236   2.828          1      0.4472    0.9487               1",
        "n              2       3          1         0.5         1               1",
        "total        nan    7.55        nan         nan       nan             nan",
        "only in B (1): extra",
    ]
    code, out, _ = _run("diff", str(root), "--from", "1", "--to", "2", "--top", "1", "--json")
    document = json.loads(out)
    assert [r["name"] for r in document["rows"]] == ["layers.1.w"]
    assert document["total"]["l2_diff"] == pytest.approx(math.sqrt(6))
    assert (document["only_in_a"], document["only_in_b"], document["shape_mismatch"]) == (
        [],
        [],
        [],
    )


TRACE_TABLE = """\
{root}: 3 checkpoints, steps 0* 1* 2*
name      l2@0    l2@2  rel change      max change    at step
------  ------  ------  ------------  ------------  ---------
layers     nan   8.246   ▄                  0.3536          2
n            2       3  █▁                     0.5          1
extra        -   1.414   ▁                       0          2
total      nan   8.888   ▄                  0.3189          2
* milestone of the checkpoint window
"""


def test_trace_table_csv_and_json(root: Path) -> None:
    assert _run("trace", str(root), "--depth", "1") == (0, TRACE_TABLE.format(root=root), "")
    code, out, err = _run("trace", str(root), "--depth", "1", "--steps", "1,2", "--csv")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "step,name,l2,rel_change",
        "1,layers,6.928203230275509,", "1,n,3.0,", "1,extra,1.4142135623730951,",
        "1,total,7.681145747868608,",
        "2,layers,8.246211251235321,0.35355339059327373", "2,n,3.0,0.0",
        "2,extra,1.4142135623730951,0.0", "2,total,8.888194417315589,0.31889640207164033",
    ]  # fmt: skip
    code, out, _ = _run("trace", str(root), "--steps", "milestones", "--json", "--include", "n")
    assert json.loads(out) == {
        "format": "kf-ckpt-trace", "format_version": 1, "root": str(root), "steps": [0, 1, 2],
        "rows": [{"name": "n", "l2": [2.0, 3.0, 3.0], "rel_change": [None, 0.5, 0.0]}],
        "total": {"l2": [2.0, 3.0, 3.0], "rel_change": [None, 0.5, 0.0]},
    }  # fmt: skip


def test_trace_plot_from_the_command_line(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "trace.png"
    code, stdout, err = _run("trace", str(root), "--plot", str(out), "--json")
    assert (code, err) == (0, f"kf-ckpt: wrote {out}\n")
    assert json.loads(stdout)["format"] == "kf-ckpt-trace"
    assert out.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["stats", "{tmp}/missing"],
            2,
            "kf-ckpt: error: {tmp}/missing does not exist; pass a checkpoint root or a checkpoint directory\n",
        ),
        (
            ["stats", "{root}", "--step", "7"],
            2,
            "kf-ckpt: error: no checkpoint for step 7 under {root}; run 'kf-ckpt ls {root}'\n",
        ),
        (
            ["stats", "{root}", "--include", "nothing*"],
            1,
            "kf-ckpt: error: no model tensors selected in {root}/step_2 by the include patterns (nothing*); top-level groups found: model (5 tensors), optimizer (4 tensors); select the model with include patterns on these dotted names\n",
        ),
        (["diff", "{root}"], 2, None),
        (
            ["diff", "{root}", "--from", "0", "--to", "5"],
            2,
            "kf-ckpt: error: no checkpoint for step 5 under {root}; run 'kf-ckpt ls {root}'\n",
        ),
        (["trace", "{root}", "--json", "--csv"], 2, None),
        (["trace", "{root}", "--steps", "1,x"], 2, None),
        (
            ["trace", "{root}", "--steps", "3"],
            2,
            "kf-ckpt: error: no checkpoint for step 3 under {root}; run 'kf-ckpt ls {root}'\n",
        ),
        (
            ["trace", "{root}", "--plot", "{tmp}/t.pdf"],
            2,
            "kf-ckpt: error: plot file {tmp}/t.pdf must end in .png or .svg\n",
        ),
        (
            ["trace", "{tmp}/missing"],
            2,
            "kf-ckpt: error: checkpoint root {tmp}/missing does not exist; check checkpoint.dir or the DIR argument\n",
        ),
    ],
)
def test_bad_input_exit_codes(
    root: Path, tmp_path: Path, args: list[str], code: int, message: str | None
) -> None:
    result = CliRunner().invoke(
        cli, [a.format(root=root, tmp=tmp_path) for a in args], catch_exceptions=False
    )
    assert result.exit_code == code and result.stdout == ""
    if message is not None:
        assert result.stderr == message.format(root=root, tmp=tmp_path)
    else:
        assert result.stderr.startswith("Usage: ") and "Error: " in result.stderr


def test_incomplete_and_corrupt_sources_fail_cleanly(root: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    (broken / "step_2" / ".metadata").unlink()
    code, out, err = _run("stats", str(broken / "step_2"))
    assert (code, out) == (1, "")
    assert err.startswith(f"kf-ckpt: error: checkpoint {broken}/step_2 is incomplete")
    code, out, err = _run("trace", str(broken))
    assert code == 0 and err == "kf-ckpt: note: skipped step_2: incomplete (no DCP .metadata)\n"
    for shard in (broken / "step_1").glob("*.distcp"):
        shard.write_bytes(shard.read_bytes()[:64])
    code, out, err = _run("diff", str(broken), "--from", "0", "--to", "1")
    assert (code, out) == (1, "")
    assert err.startswith(f"kf-ckpt: error: checkpoint {broken}/step_1 is corrupt (shard ")
    assert "Traceback" not in err and err.count("\n") == 1


def _run_on_terminal(args: list[str]) -> tuple[int, bytes, str]:
    controller, terminal = pty.openpty()  # stderr is a terminal: the bar is drawn there
    try:
        proc = subprocess.run(
            [str(KF_CKPT), *args], stdout=subprocess.PIPE, stderr=terminal, timeout=120
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
    return proc.returncode, proc.stdout, err.decode()


@pytest.mark.slow
def test_installed_script_stats_with_a_progress_bar(root: Path) -> None:
    code, out, err = _run_on_terminal(["stats", str(root), "--step", "0"])
    assert (code, out.decode()) == (0, STATS_TABLE.format(root=root))
    assert "reading" in err and "100%" in err


@pytest.mark.slow
def test_installed_script_diff_and_trace(root: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(KF_CKPT), "diff", str(root), "--from", "1", "--to", "2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, DIFF_TABLE.format(root=root), "")
    figure = tmp_path / "trace.svg"
    proc = subprocess.run(
        [str(KF_CKPT), "trace", str(root), "--depth", "1", "--plot", str(figure)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, TRACE_TABLE.format(root=root))
    assert proc.stderr == f"kf-ckpt: wrote {figure}\n" and "<svg" in figure.read_text()


@pytest.mark.slow
def test_commands_without_plot_never_import_matplotlib(root: Path) -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from kempnerforge.cli.main import cli\n"
        "root = sys.argv[1]\n"
        "for args in (['stats', root], ['diff', root, '--from', '0', '--to', '2'],\n"
        "             ['trace', root, '--json'], ['trace', root, '--csv']):\n"
        "    assert CliRunner().invoke(cli, args).exit_code == 0, args\n"
        "assert 'torch' in sys.modules and 'matplotlib' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code, str(root)], check=True, timeout=120)
