"""CheckpointConfig / DynamicCheckpointWindow semantics and validation."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from kempnerforge.config.checkpoint import (
    AsyncCheckpointMode,
    CheckpointConfig,
    DynamicCheckpointWindow,
)

W = DynamicCheckpointWindow


def saves(config: CheckpointConfig, upto: int) -> list[int]:
    return [s for s in range(upto + 1) if config.should_save(s)]


def milestones(config: CheckpointConfig, upto: int) -> list[int]:
    return [s for s in range(upto + 1) if config.is_dynamic_milestone(s)]


@pytest.mark.parametrize(
    ("window", "interval", "upto", "expected_saves", "expected_milestones"),
    [
        # No window: plain interval cadence (step 0 is a multiple of every interval).
        (None, 100, 350, [0, 100, 200, 300], []),
        (None, 7, 30, [0, 7, 14, 21, 28], []),
        # Window 0..512: 0, 1, 2, 4, ..., 512; interval takes over after the window.
        (
            W(0, 512),
            1000,
            2100,
            [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000],
            [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
        ),
        # Window starting later: step 0 is outside it, so the interval decides (0 % 50 == 0).
        (
            W(100, 300),
            50,
            450,
            [0, 50, 100, 101, 102, 104, 108, 116, 132, 164, 228, 350, 400, 450],
            [100, 101, 102, 104, 108, 116, 132, 164, 228],
        ),
        # Inside the window the interval does not fire (200, 250, 300 are multiples of 50).
        (
            W(100, 300),
            50,
            300,
            [0, 50, 100, 101, 102, 104, 108, 116, 132, 164, 228],
            [100, 101, 102, 104, 108, 116, 132, 164, 228],
        ),
        # stop == start: a single milestone.
        (W(40, 40), 25, 100, [0, 25, 40, 50, 75, 100], [40]),
        # Interval larger than the run: only the window saves.
        (W(0, 10), 10_000, 500, [0, 1, 2, 4, 8], [0, 1, 2, 4, 8]),
        # Steps past stop follow the interval; 16 = start + 2^3 would be <= stop only if stop >= 16.
        (W(8, 15), 10, 40, [0, 8, 9, 10, 12, 20, 30, 40], [8, 9, 10, 12]),
    ],
)
def test_should_save_and_milestones(window, interval, upto, expected_saves, expected_milestones):
    config = CheckpointConfig(interval=interval, dyn_ckpt_window=window)
    assert saves(config, upto) == expected_saves
    assert milestones(config, upto) == expected_milestones


def test_milestones_are_a_subset_of_saves():
    config = CheckpointConfig(interval=30, dyn_ckpt_window=W(5, 200))
    assert set(milestones(config, 400)) <= set(saves(config, 400))


def test_window_boundaries():
    window = W(100, 300)
    assert not window.contains(99) and window.contains(100) and window.contains(300)
    assert not window.contains(301)
    assert not window.is_milestone(99) and not window.is_milestone(300) and window.is_milestone(228)


def test_negative_step_is_an_error():
    with pytest.raises(ValueError, match="step must be >= 0, got -1"):
        CheckpointConfig().should_save(-1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval": 0}, "checkpoint.interval must be positive, got 0"),
        ({"interval": -5}, "checkpoint.interval must be positive, got -5"),
        ({"interval": "10"}, "checkpoint.interval must be an integer, got '10'"),
        ({"interval": True}, "checkpoint.interval must be an integer, got True"),
        ({"export_dtype": "float16"}, "checkpoint.export_dtype must be one of 'bfloat16', 'float32', got 'float16'"),
        ({"async_mode": "sometimes"}, "checkpoint.async_mode must be one of 'disabled', 'async', 'async_with_pinned_mem', got 'sometimes'"),
        ({"dir": ""}, "checkpoint.dir must be a non-empty string"),
        ({"keep_last_n": 2.5}, "checkpoint.keep_last_n must be an integer, got 2.5"),
        ({"exclude_from_loading": "optimizer"}, "checkpoint.exclude_from_loading must be a list of strings"),
        ({"ignore_freeze_mismatch": "yes"}, "checkpoint.ignore_freeze_mismatch must be true or false"),
        ({"load_path": ""}, "checkpoint.load_path must be a non-empty string or None"),
    ],
)  # fmt: skip
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError) as excinfo:
        CheckpointConfig(**kwargs)
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 10), "checkpoint.dyn_ckpt_window.start must be >= 0, got -1"),
        ((10, 9), "checkpoint.dyn_ckpt_window.stop must be >= start (10), got 9"),
        ((0, 10, "fibonacci"), "checkpoint.dyn_ckpt_window.strategy must be a registered strategy ("),
        ((0, 10, "fibonacci"), "unknown dyn_ckpt_window.strategy 'fibonacci'"),
        (("0", 10), "checkpoint.dyn_ckpt_window.start must be an integer, got '0'"),
    ],
)  # fmt: skip
def test_window_validation(args, message):
    with pytest.raises(ValueError) as excinfo:
        DynamicCheckpointWindow(*args)
    assert message in str(excinfo.value)


def test_unknown_strategy_lists_the_registered_ones():
    with pytest.raises(ValueError) as excinfo:
        DynamicCheckpointWindow(0, 10, "fibonacci")
    assert "'power2'" in str(excinfo.value) and "'fibonacci'" in str(excinfo.value)


def test_async_mode_string_is_coerced():
    config = CheckpointConfig(async_mode="async_with_pinned_mem")
    assert config.async_mode is AsyncCheckpointMode.async_pinned
    assert CheckpointConfig(async_mode="async").async_mode is AsyncCheckpointMode.async_


@pytest.mark.parametrize("keep", [0, -1, 1, 3])
def test_keep_last_n_accepts_any_integer(keep):
    assert CheckpointConfig(keep_last_n=keep).keep_last_n == keep


def test_window_given_as_a_dict_is_coerced():
    config = CheckpointConfig(dyn_ckpt_window={"start": 0, "stop": 8})
    assert config.dyn_ckpt_window == DynamicCheckpointWindow(0, 8)


def test_fields_match_the_reference_page():
    """Names, order and defaults of the spec's CheckpointConfig.__init__ signature."""
    signature = inspect.signature(CheckpointConfig)
    assert list(signature.parameters) == [
        "dir",
        "interval",
        "dyn_ckpt_window",
        "async_mode",
        "keep_last_n",
        "load_path",
        "export_dtype",
        "exclude_from_loading",
        "ignore_freeze_mismatch",
    ]
    config = CheckpointConfig()
    assert (config.dir, config.interval, config.dyn_ckpt_window) == ("checkpoints", 1000, None)
    assert config.async_mode is AsyncCheckpointMode.disabled
    assert (config.keep_last_n, config.load_path, config.export_dtype) == (3, None, "bfloat16")
    assert config.exclude_from_loading == [] and config.ignore_freeze_mismatch is False
    assert [m.value for m in AsyncCheckpointMode] == ["disabled", "async", "async_with_pinned_mem"]
    assert [m.name for m in AsyncCheckpointMode] == ["disabled", "async_", "async_pinned"]
    assert [f.name for f in dataclasses.fields(DynamicCheckpointWindow)] == [
        "start",
        "stop",
        "strategy",
    ]
    assert DynamicCheckpointWindow(0, 1).strategy == "power2"


def test_docstrings_match_the_reference_page():
    assert CheckpointConfig.__doc__ == "Checkpointing settings."
    assert (DynamicCheckpointWindow.__doc__ or "").startswith(
        "A bounded step range with a registered checkpoint strategy."
    )
    assert (CheckpointConfig.should_save.__doc__ or "").startswith(
        "Whether to write a checkpoint at ``step``."
    )
    assert (CheckpointConfig.is_dynamic_milestone.__doc__ or "").startswith(
        "True if ``step`` is a milestone of the configured ``dyn_ckpt_window``."
    )


def test_exclude_from_loading_default_is_not_shared():
    a, b = CheckpointConfig(), CheckpointConfig()
    a.exclude_from_loading.append("optimizer")
    assert b.exclude_from_loading == []


def test_window_defaults_and_method_names_follow_upstream():
    """DynamicCheckpointWindow(stop=1024) and an empty window work as in KempnerForge."""
    assert DynamicCheckpointWindow() == DynamicCheckpointWindow(0, 512, "power2")
    window = DynamicCheckpointWindow(stop=1024)
    assert (window.start, window.stop, window.strategy) == (0, 1024, "power2")
    assert [s for s in range(1100) if window.is_milestone(s)] == [0] + [2**k for k in range(11)]
    assert window.contains(1024) and not window.contains(1025)
    assert not hasattr(window, "fires")


@pytest.mark.parametrize(
    ("kwargs", "upstream_wording"),
    [
        ({"start": -1}, "dyn_ckpt_window.start must be >= 0"),
        ({"start": 10, "stop": 5}, "dyn_ckpt_window.stop must be >= start"),
        ({"strategy": "nope"}, "unknown dyn_ckpt_window.strategy"),
    ],
)
def test_window_errors_contain_upstream_wording(kwargs, upstream_wording):
    with pytest.raises(ValueError) as excinfo:
        DynamicCheckpointWindow(**kwargs)
    assert upstream_wording in str(excinfo.value)


def test_interval_error_contains_upstream_wording():
    with pytest.raises(ValueError, match="interval must be positive"):
        CheckpointConfig(interval=0)
