"""Job-file loading, dotted overrides and the lossless dict form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kempnerforge.config.checkpoint import (
    AsyncCheckpointMode,
    CheckpointConfig,
    DynamicCheckpointWindow,
)
from kempnerforge.config.loader import (
    apply_overrides,
    config_from_dict,
    config_from_toml,
    config_to_dict,
    load_config,
    recorded_config_from_dict,
)
from kempnerforge.errors import ConfigError

JOB = """
[model]
dim = 256          # other tables of the job file are ignored
n_layers = 4

[optimizer]
name = "adamw"

[checkpoint]
dir = "runs/a/ckpt"
interval = 100
async_mode = "async"
keep_last_n = 2
export_dtype = "float32"
exclude_from_loading = ["optimizer"]

[checkpoint.dyn_ckpt_window]
start = 0
stop = 256
"""


def write(tmp_path: Path, text: str, name: str = "job.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_loads_the_checkpoint_table_and_ignores_the_rest(tmp_path):
    config = config_from_toml(write(tmp_path, JOB))
    assert config == CheckpointConfig(
        dir="runs/a/ckpt",
        interval=100,
        dyn_ckpt_window=DynamicCheckpointWindow(0, 256),
        async_mode=AsyncCheckpointMode.async_,
        keep_last_n=2,
        export_dtype="float32",
        exclude_from_loading=["optimizer"],
    )


def test_job_with_an_empty_checkpoint_table_gives_defaults(tmp_path):
    assert config_from_toml(write(tmp_path, "[model]\ndim = 3\n[checkpoint]\n")) == (
        CheckpointConfig()
    )


def test_job_without_checkpoint_table_is_an_error_with_a_did_you_mean(tmp_path):
    path = write(tmp_path, "[model]\ndim = 3\n[chekpoint]\nkeep_last_n = 9\n")
    with pytest.raises(ConfigError) as excinfo:
        config_from_toml(path)
    assert str(excinfo.value) == (
        f"config file {path} has no [checkpoint] table (its tables: [model], [chekpoint]); "
        "did you mean [checkpoint] instead of [chekpoint]? rename it"
    )
    assert excinfo.value.exit_code == 2
    with pytest.raises(ConfigError, match=r"\(it has no tables\); add one \(an empty"):
        config_from_toml(write(tmp_path, "x = 1\n"))


def test_non_utf8_job_file_is_a_config_error(tmp_path):
    path = tmp_path / "job.toml"
    path.write_bytes(b'[checkpoint]\ndir = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte \d+\); save it as UTF-8"):
        config_from_toml(path)


def test_recorded_config_is_lenient_about_unknown_keys_only():
    data = {"keep_last_n": 2, "new_knob": 1, "dyn_ckpt_window": {"start": 0, "stop": 8, "x": 1}}
    config, unknown = recorded_config_from_dict(data, source="m.json")
    assert config.keep_last_n == 2 and config.dyn_ckpt_window == DynamicCheckpointWindow(0, 8)
    assert unknown == ("checkpoint.new_knob", "checkpoint.dyn_ckpt_window.x")
    with pytest.raises(ConfigError, match=r"checkpoint\.keep_last_n in m\.json must be an integer"):
        recorded_config_from_dict({"keep_last_n": "2", "new": 1}, source="m.json")
    with pytest.raises(ConfigError, match=r"unknown key checkpoint\.new_knob"):
        config_from_dict(data)


def test_unknown_key_suggests_the_near_miss(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'keep_last_n'"):
        config_from_toml(write(tmp_path, "[checkpoint]\nkeep_last = 2\n"))


def test_overrides_apply_on_top_with_coercion(tmp_path):
    config = load_config(
        write(tmp_path, JOB),
        [
            "checkpoint.keep_last_n=5",
            "checkpoint.dyn_ckpt_window.stop=1024",
            "interval=250",
            "checkpoint.async_mode=async_with_pinned_mem",
            "checkpoint.ignore_freeze_mismatch=true",
            "checkpoint.exclude_from_loading=optimizer,scheduler",
            "checkpoint.load_path=runs/a/ckpt/step_100",
        ],
    )
    assert config.keep_last_n == 5 and config.interval == 250
    assert config.dyn_ckpt_window == DynamicCheckpointWindow(0, 1024)
    assert config.async_mode is AsyncCheckpointMode.async_pinned
    assert config.ignore_freeze_mismatch is True
    assert config.exclude_from_loading == ["optimizer", "scheduler"]
    assert config.load_path == "runs/a/ckpt/step_100"


def test_overrides_create_and_remove_a_window():
    config = apply_overrides(
        CheckpointConfig(),
        ["checkpoint.dyn_ckpt_window.start=10", "checkpoint.dyn_ckpt_window.stop=20"],
    )
    assert config.dyn_ckpt_window == DynamicCheckpointWindow(10, 20)
    assert apply_overrides(config, ["checkpoint.dyn_ckpt_window=none"]).dyn_ckpt_window is None
    assert apply_overrides(config, ["checkpoint.load_path=none"]).load_path is None
    assert apply_overrides(config, ['exclude_from_loading=["optimizer"]']).exclude_from_loading == [
        "optimizer"
    ]


def test_load_config_uses_base_without_a_file():
    base = CheckpointConfig(interval=7)
    assert load_config(None, base=base) is base
    assert load_config(None, ["keep_last_n=0"], base=base).interval == 7
    assert load_config(None) == CheckpointConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[checkpoint]\nintervall = 5\n", "unknown key checkpoint.intervall in {path}; did you mean 'interval'? valid keys: checkpoint.dir, checkpoint.interval,"),
        ("[checkpoint]\ninterval = \"5\"\n", "checkpoint.interval in {path} must be an integer, got '5'"),
        ("[checkpoint]\ninterval = 0\n", "checkpoint.interval must be positive, got 0 in {path}"),
        ("[checkpoint]\nkeep_last_n = true\n", "checkpoint.keep_last_n in {path} must be an integer, got True"),
        ("[checkpoint]\nasync_mode = 3\n", "checkpoint.async_mode in {path} must be one of 'disabled', 'async', 'async_with_pinned_mem', got 3"),
        ("[checkpoint]\nasync_mode = \"later\"\n", "checkpoint.async_mode must be one of 'disabled', 'async', 'async_with_pinned_mem', got 'later' in {path}"),
        ("[checkpoint]\nexclude_from_loading = \"optimizer\"\n", "checkpoint.exclude_from_loading in {path} must be a list of strings"),
        ("[checkpoint.dyn_ckpt_window]\nstart = 0\nend = 5\n", "unknown key checkpoint.dyn_ckpt_window.end in {path}; valid keys: checkpoint.dyn_ckpt_window.start, checkpoint.dyn_ckpt_window.stop, checkpoint.dyn_ckpt_window.strategy"),
        ("[checkpoint.dyn_ckpt_window]\nstart = 600\n", "checkpoint.dyn_ckpt_window.stop must be >= start (600), got 512 in {path}"),
        ("[checkpoint.dyn_ckpt_window]\nstart = 5\nstop = 1\n", "checkpoint.dyn_ckpt_window.stop must be >= start (5), got 1 in {path}"),
        ("[checkpoint.dyn_ckpt_window]\nstart = 0\nstop = 1\nstrategy = \"nope\"\n", "unknown dyn_ckpt_window.strategy 'nope': checkpoint.dyn_ckpt_window.strategy must be a registered strategy"),
        ("[checkpoint]\ndyn_ckpt_window = 5\n", "checkpoint.dyn_ckpt_window in {path} must be a table, got 5"),
        ("checkpoint = 3\n", "checkpoint in {path} must be a table, got 3"),
        ("[checkpoint\ninterval = 5\n", "config file {path} is not valid TOML"),
    ],
)  # fmt: skip
def test_bad_job_files_name_the_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as excinfo:
        config_from_toml(path)
    assert message.format(path=path) in str(excinfo.value)
    assert excinfo.value.exit_code == 2


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*nope\.toml does not exist"):
        config_from_toml(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        config_from_toml(tmp_path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("checkpoint.keep_last=5", "unknown key checkpoint.keep_last in override 'checkpoint.keep_last=5'; valid keys: checkpoint.dir,"),
        ("model.dim=5", "unknown key model.dim"),
        ("checkpoint.dyn_ckpt_window.end=5", "unknown key checkpoint.dyn_ckpt_window.end"),
        ("checkpoint.interval", "override 'checkpoint.interval' must look like checkpoint.KEY=VALUE"),
        ("=5", "must look like checkpoint.KEY=VALUE"),
        ("checkpoint.interval=ten", "override checkpoint.interval='ten': expected an integer"),
        ("checkpoint.interval=0", "checkpoint.interval must be positive, got 0 in overrides"),
        ("checkpoint.ignore_freeze_mismatch=maybe", "expected true or false"),
        ("checkpoint.export_dtype=fp16", "checkpoint.export_dtype must be one of 'bfloat16', 'float32', got 'fp16'"),
        ("checkpoint.dyn_ckpt_window.start=600", "checkpoint.dyn_ckpt_window.stop must be >= start (600), got 512 in overrides"),
        ("checkpoint.dyn_ckpt_window=3", "only 'none' is allowed here"),
        ('checkpoint.exclude_from_loading=["a", 1]', "expected a comma-separated list or a JSON list"),
    ],
)  # fmt: skip
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError) as excinfo:
        apply_overrides(CheckpointConfig(), [override])
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    "config",
    [
        CheckpointConfig(),
        CheckpointConfig(
            dir="/scratch/run",
            interval=17,
            dyn_ckpt_window=DynamicCheckpointWindow(3, 900, "power2"),
            async_mode="async_with_pinned_mem",
            keep_last_n=-1,
            load_path="/scratch/run/step_5",
            export_dtype="float32",
            exclude_from_loading=["optimizer", "scheduler"],
            ignore_freeze_mismatch=True,
        ),
    ],
)
def test_dict_round_trip_is_lossless_and_json_able(config):
    data = config_to_dict(config)
    again = config_from_dict(json.loads(json.dumps(data)))
    assert again == config
    assert config_to_dict(again) == data


def test_dict_form_rejects_unknown_keys():
    data = config_to_dict(CheckpointConfig()) | {"colour": "blue"}
    with pytest.raises(ConfigError, match=r"unknown key checkpoint\.colour in run/metadata\.json"):
        config_from_dict(data, source="run/metadata.json")


def test_empty_window_table_opts_in_with_upstream_defaults(tmp_path):
    """KempnerForge documents an empty [checkpoint.dyn_ckpt_window] as start=0, stop=512, power2."""
    config = config_from_toml(
        write(tmp_path, "[checkpoint]\ninterval = 100\n\n[checkpoint.dyn_ckpt_window]\n")
    )
    assert config.dyn_ckpt_window == DynamicCheckpointWindow(0, 512, "power2")
    assert config_from_dict({"dyn_ckpt_window": {}}).dyn_ckpt_window == DynamicCheckpointWindow()
    partial = config_from_toml(write(tmp_path, "[checkpoint.dyn_ckpt_window]\nstop = 1024\n"))
    assert partial.dyn_ckpt_window == DynamicCheckpointWindow(start=0, stop=1024)


def test_one_window_override_creates_a_window_with_defaults():
    config = apply_overrides(CheckpointConfig(), ["checkpoint.dyn_ckpt_window.stop=10"])
    assert config.dyn_ckpt_window == DynamicCheckpointWindow(0, 10, "power2")
