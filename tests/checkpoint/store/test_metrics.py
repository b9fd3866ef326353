"""Metrics recorded with a save: strict when written, lenient when read back by the scan."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kempnerforge.checkpoint.store.catalog import scan
from kempnerforge.checkpoint.store.metrics import MAX_METRICS, checked_metrics, recorded_metrics
from tests.checkpoint._trees import make_checkpoint


def test_checked_metrics_keeps_numbers_and_stores_non_finite_as_null() -> None:
    metrics = {"eval_loss": 2.31, "step_time": 3, "grad_norm": math.inf, "ppl": math.nan}
    assert checked_metrics(metrics) == {
        "eval_loss": 2.31,
        "step_time": 3,
        "grad_norm": None,
        "ppl": None,
    }
    assert checked_metrics(None) == {}
    assert json.loads(json.dumps(checked_metrics(metrics))) == checked_metrics(metrics)


@pytest.mark.parametrize(
    ("metrics", "error", "match"),
    [
        ({"eval_loss": "2.31"}, TypeError, r"metric 'eval_loss' must be a real number"),
        ({"ok": True}, TypeError, r"metric 'ok' must be a real number"),
        ({"nested": {"a": 1}}, TypeError, r"metric 'nested' must be a real number"),
        ({"c": 1 + 2j}, TypeError, r"must be a real number"),
        ({1: 2.0}, TypeError, r"metric names must be strings"),
        ({"": 2.0}, ValueError, r"must be 1 to 200 characters"),
        ([("eval_loss", 2.0)], TypeError, r"metrics must be a dict"),
        ({f"m{i}": 1.0 for i in range(MAX_METRICS + 1)}, ValueError, r"at most 256"),
    ],
)
def test_checked_metrics_refuses_what_is_not_a_flat_table_of_numbers(
    metrics: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        checked_metrics(metrics)  # type: ignore[arg-type]


def test_recorded_metrics_keeps_the_good_ones_and_warns() -> None:
    warnings: list[str] = []
    data = {"metrics": {"eval_loss": 2.5, "bad": "x", "flag": True, "gone": None}}
    assert recorded_metrics(data, warnings) == {"eval_loss": 2.5, "gone": None}
    assert warnings == ["metadata.json metrics 'bad', 'flag' are not numbers; ignored"]
    assert recorded_metrics({"metrics": [1]}, warnings) == {}
    assert recorded_metrics({}, warnings) == {}


def test_scan_reads_metrics_and_the_cache_returns_them(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    make_checkpoint(root, 10, extra={"metrics": {"eval_loss": 2.5, "acc": None}}, mtime_s=1e9)
    make_checkpoint(root, 20, mtime_s=1e9)
    cold = scan(root)
    warm = scan(root)
    assert warm.cache_hits == 2
    for catalog in (cold, warm):
        assert catalog.get(10).metrics == {"eval_loss": 2.5, "acc": None}  # type: ignore[union-attr]
        assert catalog.get(20).metrics == {}  # type: ignore[union-attr]
