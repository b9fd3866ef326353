"""The dynamic checkpoint strategy registry."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kempnerforge.config.checkpoint import CheckpointConfig, DynamicCheckpointWindow
from kempnerforge.config.registry import Registry, registry


def test_power2_is_registered_on_import():
    assert "power2" in registry.list_dyn_ckpt_strategies()
    power2 = registry.get_dyn_ckpt_strategy("power2")
    window = DynamicCheckpointWindow(100, 300)
    assert [s for s in range(90, 310) if power2(window, s)] == [
        100, 101, 102, 104, 108, 116, 132, 164, 228,
    ]  # fmt: skip


def test_custom_strategy_is_selectable_and_drives_milestones():
    local = Registry()

    @local.register_dyn_ckpt_strategy("every_10")
    def every_10(window, step):
        return (step - window.start) % 10 == 0

    assert local.get_dyn_ckpt_strategy("every_10") is every_10
    assert local.list_dyn_ckpt_strategies() == ["every_10"]


def test_global_registration_is_used_by_the_config():
    name = "test_every_25"
    if name not in registry.list_dyn_ckpt_strategies():

        @registry.register_dyn_ckpt_strategy(name)
        def every_25(window, step):
            return (step - window.start) % 25 == 0

    config = CheckpointConfig(interval=1000, dyn_ckpt_window=DynamicCheckpointWindow(0, 100, name))
    assert [s for s in range(0, 130) if config.should_save(s)] == [0, 25, 50, 75, 100]
    assert config.is_dynamic_milestone(75) and not config.is_dynamic_milestone(80)


def test_duplicate_name_is_refused():
    local = Registry()
    local.register_dyn_ckpt_strategy("a")(lambda w, s: True)
    with pytest.raises(ValueError, match="'a' is already registered"):
        local.register_dyn_ckpt_strategy("a")(lambda w, s: False)


def test_unknown_name_lists_the_registered_ones():
    local = Registry()
    local.register_dyn_ckpt_strategy("b")(lambda w, s: True)
    local.register_dyn_ckpt_strategy("a")(lambda w, s: True)
    with pytest.raises(
        KeyError, match=r"unknown dynamic checkpoint strategy 'zzz'; registered: 'a', 'b'"
    ):
        local.get_dyn_ckpt_strategy("zzz")


@pytest.mark.parametrize("name", ["", None])
def test_bad_names_are_refused(name):
    with pytest.raises(ValueError, match="non-empty string"):
        Registry().register_dyn_ckpt_strategy(name)


def test_importing_config_does_not_import_torch():
    code = (
        "import sys, kempnerforge.config, kempnerforge.config.loader, "
        "kempnerforge.checkpoint.store.layout, kempnerforge.checkpoint.store.selection; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
