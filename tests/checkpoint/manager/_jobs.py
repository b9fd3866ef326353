"""Training jobs run as real processes, forked from a zygote that imports torch once.

Starting a Python process that imports torch takes seconds on a loaded machine; a requeue soak
starts twenty. ``python -m tests.checkpoint.manager._jobs`` is the zygote: it imports torch and
the manager, then forks one child per JSON line on stdin (``{"job": name, "kwargs": {...}}``) and
answers ``{"pid": N}``. Children are ordinary processes (SIGKILL them by pid); SIGCHLD is ignored
in the zygote so that a killed child is reaped at once (a zombie would still look alive).

Each job writes ``<result>.json`` when it ends: ``{"ok": true, ...}`` or the error it raised.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kempnerforge.checkpoint.manager import CheckpointManager
from kempnerforge.config.checkpoint import CheckpointConfig, DynamicCheckpointWindow
from kempnerforge.errors import SupersededError
from tests.checkpoint._models import TinyNet, build, snapshot, train_step

REPO = Path(__file__).resolve().parents[3]


def digest(model: torch.nn.Module) -> str:
    """A hash of the model's tensors, bit for bit (recorded in ``extra`` to detect mixing)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _config(root: str, **kwargs: Any) -> CheckpointConfig:
    window = kwargs.pop("window", None)
    if window is not None:
        kwargs["dyn_ckpt_window"] = DynamicCheckpointWindow(start=window[0], stop=window[1])
    kwargs.setdefault("keep_last_n", 0)
    return CheckpointConfig(dir=root, **kwargs)


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Make this job's trajectory its own (a mixed checkpoint then shows in the digests)."""
    with torch.no_grad():
        model.head.weight.add_(seed * 1e-3)


class _Gate:
    """A scheduler whose ``state_dict`` (called once the save's directory exists) waits for a
    file: the test decides when the save goes on."""

    def __init__(self, gate: str | None) -> None:
        self.gate = gate

    def state_dict(self) -> dict[str, Any]:
        if self.gate is not None:
            Path(self.gate + ".ready").touch()
            deadline = time.monotonic() + 120
            while not Path(self.gate + ".go").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def save_steps(
    root: str,
    result: str,
    steps: list[int],
    seed: int = 0,
    load_path: str | None = None,
    gate_step: int | None = None,
    gate: str | None = None,
    dim: int = 8,
    fsize_limit: int | None = None,
    **config: Any,
) -> dict[str, Any]:
    """Resume (from ``load_path`` or latest), make the run its own, train and save ``steps``.

    The save of ``gate_step`` waits at ``gate``; with ``fsize_limit``, files may not grow past
    that many bytes once resumed (RLIMIT_FSIZE: the shard writes fail, as on a full disk).
    Snapshots of the state at each save are written to ``<result>.<step>.pt``.
    """
    model, optimizer, _ = build(0, dim=dim, hidden=dim * 2)
    manager = CheckpointManager(_config(root, **config), model, optimizer, collective_timeout_s=60)
    start, _, _ = manager.load(path=load_path)
    _perturb(model, seed)
    if fsize_limit is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, resource.RLIM_INFINITY))
    saved, step = [], start
    for target in steps:
        while step < target:
            step += 1
            train_step(model, optimizer)
        gated = _Gate(gate if target == gate_step else None)
        manager.save(step, extra={"seed": seed, "digest": digest(model)}, scheduler=gated)
        torch.save(snapshot(model, optimizer), f"{result}.{step}.pt")
        saved.append(step)
    manager.close()
    return {"resumed_at": start, "saved": saved}


def train(
    root: str,
    result: str,
    seed: int,
    max_steps: int,
    step_sleep_s: float = 0.0,
    **config: Any,
) -> dict[str, Any]:
    """The soak's training loop: resume, train to ``max_steps``, save when the config says."""
    cfg = _config(root, **config)
    model, optimizer, _ = build(0)
    manager = CheckpointManager(cfg, model, optimizer, collective_timeout_s=60)
    fresh = manager.peek_saved_step() is None
    step, _, _ = manager.load()
    if step >= max_steps:  # an earlier job finished the run: nothing to train, nothing to save
        manager.close()
        torch.save(snapshot(model, optimizer), f"{result}.final.pt")
        return {"finished": step}
    _perturb(model, seed)
    try:
        if fresh and cfg.should_save(0):
            manager.save(0, extra={"seed": seed, "digest": digest(model)})
        while step < max_steps:
            step += 1
            train_step(model, optimizer)
            time.sleep(step_sleep_s)
            if cfg.should_save(step) or step == max_steps:
                manager.save(step, extra={"seed": seed, "digest": digest(model)})
        manager.close()
    except SupersededError as exc:
        return {"superseded": str(exc), "step": step}
    torch.save(snapshot(model, optimizer), f"{result}.final.pt")
    return {"finished": step}


JOBS: dict[str, Callable[..., dict[str, Any]]] = {"save_steps": save_steps, "train": train}


def _run_child(request: dict[str, Any]) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    kwargs = request["kwargs"]
    result_path = Path(kwargs["result"] + ".json")
    try:
        outcome = {"ok": True, **JOBS[request["job"]](**kwargs)}
    except BaseException as exc:
        outcome = {
            "ok": False,
            "type": type(exc).__name__,
            "message": str(exc),
            "traceback": traceback.format_exc(),
        }
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(outcome))
    os.replace(tmp, result_path)


def main() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped as soon as they die
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                _run_child(request)
            finally:
                os._exit(0)
        print(json.dumps({"pid": pid}), flush=True)


class Zygote:
    """The parent's handle on a zygote process (see the module docstring)."""

    def __init__(self) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.checkpoint.manager._jobs"],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def start(self, job: str, **kwargs: Any) -> int:
        """Fork a child running ``job(**kwargs)``; its pid."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"job": job, "kwargs": kwargs}) + "\n")
        self.proc.stdin.flush()
        return int(json.loads(self.proc.stdout.readline())["pid"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def wait_for(path: Path, timeout_s: float = 120.0) -> None:
    """Poll until ``path`` exists (a job's result or gate file)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s} s")
        time.sleep(0.01)


def result_of(result: Path, timeout_s: float = 120.0) -> dict[str, Any]:
    """The outcome a job wrote (waiting for it)."""
    done = result.with_name(result.name + ".json")
    wait_for(done, timeout_s)
    return json.loads(done.read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def kill(pid: int) -> None:
    """SIGKILL ``pid`` and wait until it is gone."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def loaded_model(step_dir: Path, dim: int = 8) -> TinyNet:
    """The model of a checkpoint directory, read with DCP in this process."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    model = TinyNet(dim, dim * 2)
    state = {"model": get_model_state_dict(model)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is .*uninitialized")
        dcp.load(state, checkpoint_id=str(step_dir))
    set_model_state_dict(model, state["model"])
    return model


if __name__ == "__main__":
    main()
