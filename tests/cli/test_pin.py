"""``kf-ckpt pin / unpin``, and ``ls`` with pins and metrics: exact output, --sort, --filter, JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kempnerforge.checkpoint.store.collect import hold_lock
from kempnerforge.checkpoint.store.layout import LOCK_NAME, PIN_NAME
from tests.checkpoint._trees import snapshot
from tests.cli._tree import CHECKPOINTS, NOW_S, set_mtime
from tests.cli.conftest import run_installed

LOSSES = {100: 2.91, 200: 2.47, 400: 2.52, 500: 2.6}


@pytest.fixture
def metrics_tree(fixed_tree: Path) -> Path:
    """The fixed tree with eval_loss (and lr, for the older ones) recorded at save time."""
    for step, loss in LOSSES.items():
        path = fixed_tree / f"step_{step}" / "metadata.json"
        doc = json.loads(path.read_text())
        doc["metrics"] = {"eval_loss": loss, "lr": 3e-4 if step < 400 else None}
        path.write_text(json.dumps(doc))
        set_mtime(path.parent, NOW_S - CHECKPOINTS[step][2])
    return fixed_tree


LS_PINNED = """\
  step  status        size    tokens  age        marks      gc      why                                  note
------  ----------  ------  --------  ---------  ---------  ------  -----------------------------------  -------------------
     2  complete    1.5 MB      4.2M  4 d ago    milestone  keep    dynamic milestone
   100  complete    3.0 MB    209.7M  2 d ago               delete  beyond keep_last_n=2
   200  complete    3.0 MB    419.4M  30 h ago   pinned     keep    pinned                               best eval loss 2.47
   300  incomplete  1.2 MB    629.1M  20 h ago              delete  abandoned incomplete save
   400  complete    3.0 MB    838.9M  5 h ago               keep    within keep_last_n=2
   500  complete    3.0 MB      1.0B  2 h ago    latest     keep    latest
   600  in-flight   1.2 MB      1.3B  1 min ago             keep    in flight: a save may be writing it

7 checkpoints, 15.9 MB; gc would delete 2 (4.2 MB)
"""

LS_BY_LOSS = """\
  step  status        size    tokens  age          eval_loss      lr  marks      gc      why                                  note
------  ----------  ------  --------  ---------  -----------  ------  ---------  ------  -----------------------------------  -------------------
   200  complete    3.0 MB    419.4M  30 h ago          2.47  0.0003  pinned     keep    pinned                               best eval loss 2.47
   400  complete    3.0 MB    838.9M  5 h ago           2.52       -             keep    within keep_last_n=2
   500  complete    3.0 MB      1.0B  2 h ago            2.6       -  latest     keep    latest
   100  complete    3.0 MB    209.7M  2 d ago           2.91  0.0003             delete  beyond keep_last_n=2
     2  complete    1.5 MB      4.2M  4 d ago              -       -  milestone  keep    dynamic milestone
   300  incomplete  1.2 MB    629.1M  20 h ago             -       -             delete  abandoned incomplete save
   600  in-flight   1.2 MB      1.3B  1 min ago            -       -             keep    in flight: a save may be writing it

7 checkpoints, 15.9 MB; gc would delete 2 (4.2 MB)
"""

LS_FILTERED = """\
  step  status      size    tokens  age       marks      gc    why                note
------  --------  ------  --------  --------  ---------  ----  -----------------  -------------------
   200  complete  3.0 MB    419.4M  30 h ago  pinned     keep  pinned             best eval loss 2.47
     2  complete  1.5 MB      4.2M  4 d ago   milestone  keep  dynamic milestone

7 checkpoints, 15.9 MB; gc would delete 2 (4.2 MB); showing 2 (pinned or milestone)
"""


def test_pin_then_ls_shows_the_mark_and_the_note(run_cli, metrics_tree: Path) -> None:
    done = run_cli("pin", "ckpt/step_200", "--note", "best eval loss 2.47")
    assert (done.exit_code, done.stdout) == (
        0,
        "pinned step 200 (ckpt/step_200): best eval loss 2.47\n",
    )
    listing = run_cli("ls", "ckpt")
    assert (listing.exit_code, listing.stdout) == (0, LS_PINNED)


def test_ls_sorts_by_a_metric_and_filters(run_cli, metrics_tree: Path) -> None:
    assert run_cli("pin", "ckpt", "--step", "200", "--note", "best eval loss 2.47").exit_code == 0
    by_loss = run_cli(
        "ls", "ckpt", "--metric", "eval_loss", "--metric", "lr", "--sort", "metric:eval_loss"
    )
    assert (by_loss.exit_code, by_loss.stdout) == (0, LS_BY_LOSS)
    filtered = run_cli("ls", "ckpt", "--filter", "pinned", "--filter", "milestone", "--sort=-size")
    assert (filtered.exit_code, filtered.stdout) == (0, LS_FILTERED)
    # Descending: missing values still come last; ties keep step order.
    worst = json.loads(run_cli("ls", "ckpt", "--sort=-metric:eval_loss", "--json").stdout)
    assert [c["step"] for c in worst["checkpoints"]] == [100, 500, 400, 200, 2, 300, 600]
    young = json.loads(run_cli("ls", "ckpt", "--sort", "age", "--json").stdout)
    assert [c["step"] for c in young["checkpoints"]] == [600, 500, 400, 300, 200, 100, 2]
    deletable = json.loads(run_cli("ls", "ckpt", "--filter", "deletable", "--json").stdout)
    assert [c["step"] for c in deletable["checkpoints"]] == [100, 300]
    assert (deletable["filter"], deletable["sort"], deletable["count"]) == (
        ["deletable"],
        "step",
        7,
    )
    incomplete = json.loads(run_cli("ls", "ckpt", "--filter", "incomplete", "--json").stdout)
    assert [c["step"] for c in incomplete["checkpoints"]] == [300, 600]


def test_ls_json_carries_pin_and_metrics(run_cli, metrics_tree: Path) -> None:
    assert run_cli("pin", "ckpt/step_200", "--note", "best").exit_code == 0
    doc = json.loads(run_cli("ls", "ckpt", "--json").stdout)
    assert doc["format_version"] == 1
    by_step = {c["step"]: c for c in doc["checkpoints"]}
    pinned = by_step[200]
    assert pinned["pinned"] is True and pinned["gc_reason"] == "pinned"
    assert set(pinned["pin"]) == {"note", "pinned_at", "user", "host"}
    assert pinned["pin"]["note"] == "best"
    assert pinned["metrics"] == {"eval_loss": 2.47, "lr": 3e-4}
    assert by_step[500]["metrics"] == {"eval_loss": 2.6, "lr": None}
    assert (by_step[2]["pinned"], by_step[2]["pin"], by_step[2]["metrics"]) == (False, None, {})
    gc_doc = json.loads(run_cli("gc", "ckpt", "--json").stdout)
    reasons = {d["step"]: (d["reason"], d["outcome"]) for d in gc_doc["decisions"]}
    assert reasons[200] == ("pinned", "kept") and reasons[100] == ("beyond_keep_last_n", "deleted")
    assert (metrics_tree / "step_200" / PIN_NAME).is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pin", "ckpt", "--step", "7"], "kf-ckpt: error: no checkpoint for step 7 under ckpt\n"),
        (
            ["pin", "ckpt/step_300"],
            "kf-ckpt: error: ckpt/step_300 is incomplete (no DCP .metadata); only a complete "
            "checkpoint can be pinned\n",
        ),
        (
            ["pin", "ckpt"],
            "is not a step_<N> checkpoint directory; pass one, or pass the checkpoint root with --step N",
        ),
        (["pin", "ckpt/step_best", "--step", "2"], "no checkpoint for step 2 under ckpt/step_best"),
        (["pin", "nowhere", "--step", "2"], "nowhere does not exist"),
        (["pin", "ckpt/step_200", "--step", "100"], "is the checkpoint of step 200, not 100"),
        (["unpin", "ckpt", "--step", "7"], "kf-ckpt: error: no checkpoint for step 7 under ckpt\n"),
    ],
)
def test_pin_errors_exit_2_and_change_nothing(run_cli, fixed_tree: Path, args, message) -> None:
    before = snapshot(fixed_tree)
    result = run_cli(*args)
    assert (result.exit_code, result.stdout) == (2, "")
    assert message in result.stderr
    assert snapshot(fixed_tree) == before


def test_unpin_not_pinned_is_a_no_op_and_unpin_releases(run_cli, fixed_tree: Path) -> None:
    result = run_cli("unpin", "ckpt/step_100")
    assert (result.exit_code, result.stdout) == (
        0,
        "step 100 (ckpt/step_100) is not pinned; nothing to do\n",
    )
    assert run_cli("pin", "ckpt/step_100", "--note", "x").exit_code == 0
    again = run_cli("pin", "ckpt/step_100", "--note", "paper table 2")
    assert again.stdout == "updated the pin of step 100 (ckpt/step_100): paper table 2\n"
    done = run_cli("unpin", "ckpt", "--step", "100")
    assert done.stdout == "unpinned step 100 (ckpt/step_100) (note was: paper table 2)\n"
    assert not (fixed_tree / "step_100" / PIN_NAME).exists()


def test_pin_under_a_held_lock_exits_75(run_cli, fixed_tree: Path, tmp_path: Path) -> None:
    before = snapshot(fixed_tree)
    with hold_lock(fixed_tree):
        result = run_cli("pin", "ckpt/step_100", "--wait-lock", "0.2")
        installed = run_installed("pin", "ckpt", "--step", "100", cwd=tmp_path)
        unpinned = run_installed("unpin", "ckpt", "--step", "100", cwd=tmp_path)
    for code, stdout, stderr in [
        (result.exit_code, result.stdout, result.stderr),
        (installed.returncode, installed.stdout, installed.stderr),
        (unpinned.returncode, unpinned.stdout, unpinned.stderr),
    ]:
        assert (code, stdout) == (75, "")
        assert stderr.startswith(f"kf-ckpt: error: ckpt/{LOCK_NAME} is held by another process")
    assert snapshot(fixed_tree) == before


def test_installed_pin_and_unpin(fixed_tree: Path, tmp_path: Path) -> None:
    done = run_installed("pin", "ckpt/step_400", "--note", "before the spike", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (
        0,
        "pinned step 400 (ckpt/step_400): before the spike\n",
    )
    undone = run_installed("unpin", "ckpt/step_400", cwd=tmp_path)
    assert undone.returncode == 0 and undone.stdout.startswith("unpinned step 400")


def test_ls_rejects_a_bad_sort_key(run_cli, fixed_tree: Path) -> None:
    result = run_cli("ls", "ckpt", "--sort", "loss")
    assert result.exit_code == 2
    assert "'loss' is not a sort key; use step, size, age or metric:NAME" in result.stderr


@pytest.mark.parametrize("args", [["pin", "--step", "100"], ["unpin", "--step", "100"]])
def test_pin_and_unpin_never_import_torch(fixed_tree: Path, args: list[str]) -> None:
    code = (
        "import sys\n"
        "from kempnerforge.cli.main import cli\n"
        f"cli([{args[0]!r}, {str(fixed_tree)!r}, *{args[1:]!r}], standalone_mode=False)\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "False"


PLAN_JOB = """\
[checkpoint]
interval = 100
keep_last_n = 2
async_mode = "async"

[checkpoint.dyn_ckpt_window]
start = 0
stop = 256
"""

PLAN_PINNED = """\
steps                               saves  kind       at end    why
--------------------------------  -------  ---------  --------  --------------------
1, 2, 4, 8, 16, 32, 64, 128, 256        9  milestone  kept      dynamic milestone
300                                     1  pinned     kept      pinned
400                                     1  interval   deleted   beyond keep_last_n=2
500                                     1  pinned     kept      pinned
600..800 every 100                      3  interval   deleted   beyond keep_last_n=2
900                                     1  interval   kept      within keep_last_n=2
1000                                    1  interval   kept      latest
"""


def test_plan_forecasts_pins(run_cli, tmp_path: Path) -> None:
    (tmp_path / "job.toml").write_text(PLAN_JOB)
    result = run_cli("plan", "-c", "job.toml", "--max-steps", "1000", "--pins", "500,300")
    assert result.exit_code == 0
    assert "13 left at the end" in result.stdout
    assert result.stdout.endswith(PLAN_PINNED)
    doc = json.loads(
        run_cli(
            "plan", "-c", "job.toml", "--max-steps", "1000", "--pins", "300,500", "--json"
        ).stdout
    )
    assert doc["pins"] == [300, 500]
    assert [r["steps"] for r in doc["runs"] if r["pinned"]] == [[300], [500]]
    assert doc["survivor_count"] == len([1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 500, 900, 1000])
    unsaved = run_cli("plan", "-c", "job.toml", "--max-steps", "1000", "--pins", "550")
    assert unsaved.exit_code == 2 and "the run never saves step 550" in unsaved.stderr
    bad = run_cli("plan", "-c", "job.toml", "--max-steps", "1000", "--pins", "5x")
    assert bad.exit_code == 2 and "'5x' is not a list of steps" in bad.stderr
