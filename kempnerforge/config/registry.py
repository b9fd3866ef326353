"""Named registry of dynamic checkpoint strategies.

A strategy is a predicate ``(window, step) -> bool`` that decides which steps inside a
:class:`~kempnerforge.config.checkpoint.DynamicCheckpointWindow` are saved. Strategies are
registered by name so that a job file can select one with ``strategy = "name"``.

Example:
    >>> from kempnerforge.config.registry import registry
    >>> @registry.register_dyn_ckpt_strategy("every_10")
    ... def every_10(window, step):
    ...     return (step - window.start) % 10 == 0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from kempnerforge.config.checkpoint import DynamicCheckpointWindow

__all__ = ["DynCkptStrategy", "Registry", "registry"]

DynCkptStrategy: TypeAlias = "Callable[[DynamicCheckpointWindow, int], bool]"


class Registry:
    """Maps strategy names to dynamic checkpoint strategies."""

    def __init__(self) -> None:
        self._dyn_ckpt_strategies: dict[str, DynCkptStrategy] = {}

    def register_dyn_ckpt_strategy(self, name: str) -> Callable[[DynCkptStrategy], DynCkptStrategy]:
        """Decorator registering ``fn`` as the dynamic checkpoint strategy ``name``.

        Raises:
            ValueError: ``name`` is empty or already registered.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"strategy name must be a non-empty string, got {name!r}")

        def decorator(fn: DynCkptStrategy) -> DynCkptStrategy:
            if name in self._dyn_ckpt_strategies:
                raise ValueError(
                    f"dynamic checkpoint strategy {name!r} is already registered; "
                    "choose another name"
                )
            if not callable(fn):
                raise ValueError(f"strategy {name!r} must be callable, got {fn!r}")
            self._dyn_ckpt_strategies[name] = fn
            return fn

        return decorator

    def get_dyn_ckpt_strategy(self, name: str) -> DynCkptStrategy:
        """Return the strategy registered as ``name``.

        Raises:
            KeyError: no strategy of that name; the message lists the registered ones.
        """
        try:
            return self._dyn_ckpt_strategies[name]
        except KeyError:
            known = ", ".join(repr(n) for n in self.list_dyn_ckpt_strategies())
            raise KeyError(
                f"unknown dynamic checkpoint strategy {name!r}; registered: {known}"
            ) from None

    def list_dyn_ckpt_strategies(self) -> list[str]:
        """Names of the registered strategies, sorted."""
        return sorted(self._dyn_ckpt_strategies)


registry = Registry()
"""The process-wide registry; :mod:`kempnerforge.config.checkpoint` registers ``"power2"``."""
