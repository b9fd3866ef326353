"""The trash of a checkpoint root, ``<root>/.kf-trash/``, and symlink-safe tree removal.

A victim is first renamed into the trash (one atomic ``rename`` on the same filesystem): from
then on it is gone from the root, and whatever happens next (SIGKILL, power loss) no
half-deleted ``step_<N>`` is ever left where a loader could find it. Its files are then removed
with ``unlinkat``/``rmdir`` relative to open directory descriptors: a symlink is unlinked, never
followed, and every directory is opened with ``O_NOFOLLOW``, so nothing outside the tree is
touched even if a symlink is swapped in while we work. A directory the process owns whose mode
blocks removal (no ``w`` or ``x``) gets ``u+rwx`` first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from kempnerforge.checkpoint.store.layout import DCP_METADATA, TRASH_NAME
from kempnerforge.errors import RetentionError

__all__ = [
    "NO_SPACE",
    "clear_trash",
    "describe_error",
    "grant_owner",
    "move_to_trash",
    "no_space",
    "open_trash",
    "remove_in_place",
    "remove_tree",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_trash(root_fd: int, *, create: bool) -> int | None:
    """Open ``.kf-trash`` of the root open as ``root_fd``; None when absent and not ``create``.

    Raises:
        RetentionError: ``.kf-trash`` exists but is not a real directory (a symlink, a file):
            nothing is moved anywhere until it is removed.
    """
    if create:
        try:
            os.mkdir(TRASH_NAME, 0o700, dir_fd=root_fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise RetentionError(f"cannot create {TRASH_NAME}: {exc.strerror}") from exc
    try:
        return os.open(TRASH_NAME, _DIR_FLAGS, dir_fd=root_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise RetentionError(
                f"{TRASH_NAME} in the checkpoint root is not a real directory (a symlink or a "
                f"file); gc moves nothing until it is removed: rm {TRASH_NAME}"
            ) from exc
        raise RetentionError(f"cannot open {TRASH_NAME}: {exc.strerror}") from exc


NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
"""The errors of a full disk or an exhausted quota: the trash cannot be made, delete in place."""


def no_space(exc: BaseException) -> bool:
    """``exc`` (or the OS error behind it) says the disk or the quota is full."""
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    return isinstance(cause, OSError) and cause.errno in NO_SPACE


def remove_in_place(root_fd: int, name: str) -> None:
    """Remove the checkpoint directory ``name`` of the root where it is (no trash).

    For a full disk, where the trash cannot be created. Crash-safe order: first every DCP
    ``.metadata`` marker (the step directory's and each ``pp<k>/`` stage's) is unlinked and the
    directory fsync'ed, so that a run killed half-way leaves an incomplete directory that can
    never be taken for a checkpoint (the next gc removes it as abandoned); then the rest goes,
    never following a symlink (see :func:`remove_tree`).

    Raises:
        OSError: something could not be removed.
    """
    fd = os.open(name, _DIR_FLAGS, dir_fd=root_fd)
    try:
        for child in os.listdir(fd):
            if child.startswith("pp"):
                with contextlib.suppress(OSError):  # not a stage directory, or unreadable
                    stage = os.open(child, _DIR_FLAGS, dir_fd=fd)
                    try:
                        _unlink_marker(stage)
                    finally:
                        os.close(stage)
        _unlink_marker(fd)
    finally:
        os.close(fd)
    remove_tree(root_fd, name, is_dir=True)


def _unlink_marker(dir_fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(DCP_METADATA, dir_fd=dir_fd)
    with contextlib.suppress(OSError):
        os.fsync(dir_fd)


def move_to_trash(parent_fd: int, name: str, trash_fd: int, trash_name: str) -> None:
    """Rename ``name`` of the directory open as ``parent_fd`` to ``trash_name`` in the trash.

    Both ends are open directory descriptors (see :func:`open_trash`), so no symlink on either
    path is followed. A directory the process owns without its own ``w`` bit gets ``u+rwx``
    first: moving a directory to another parent rewrites its ``..`` entry.

    Raises:
        OSError: the rename failed (``FileNotFoundError`` when ``name`` is already gone).
    """
    try:
        os.rename(name, trash_name, src_dir_fd=parent_fd, dst_dir_fd=trash_fd)
    except PermissionError:
        if not grant_owner(parent_fd, name):
            raise
        os.rename(name, trash_name, src_dir_fd=parent_fd, dst_dir_fd=trash_fd)


def clear_trash(trash_fd: int) -> tuple[int, list[str]]:
    """Remove everything in the trash; return (entries removed, why others could not be)."""
    removed, problems = 0, []
    for name in sorted(os.listdir(trash_fd)):
        try:
            remove_tree(trash_fd, name)
            removed += 1
        except (OSError, RecursionError) as exc:
            problems.append(f"{TRASH_NAME}/{name}: {describe_error(exc)}")
    return removed, problems


def remove_tree(parent_fd: int, name: str, *, is_dir: bool = False) -> None:
    """Remove ``name`` (file, symlink or directory tree) from the directory open as ``parent_fd``.

    Never follows a symlink. An entry that is already gone counts as removed. ``is_dir`` skips
    the first ``unlink`` attempt when the caller knows ``name`` is a directory.

    Raises:
        OSError: something could not be removed (what is left stays inside this tree).
    """
    if is_dir:
        _remove_dir(parent_fd, name)
        return
    try:
        _unlink(parent_fd, name)
    except IsADirectoryError:
        _remove_dir(parent_fd, name)


def grant_owner(parent_fd: int, name: str) -> bool:
    """Give the owner ``rwx`` on directory ``name`` when this process owns it; True if changed."""
    try:
        st = os.lstat(name, dir_fd=parent_fd)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        return False
    mode = stat.S_IMODE(st.st_mode) | stat.S_IRWXU
    try:
        os.chmod(name, mode, dir_fd=parent_fd, follow_symlinks=False)
    except NotImplementedError:  # no lchmod here; lstat above showed a real directory
        os.chmod(name, mode, dir_fd=parent_fd)
    return True


def _unlink(parent_fd: int, name: str) -> None:
    """Unlink a non-directory; IsADirectoryError when ``name`` is a directory."""
    try:
        os.unlink(name, dir_fd=parent_fd)
    except FileNotFoundError:
        pass
    except PermissionError:
        # Linux says EISDIR for a directory; other systems say EPERM.
        st = os.lstat(name, dir_fd=parent_fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), name) from None
        raise


def _remove_dir(parent_fd: int, name: str) -> None:
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        return
    except PermissionError:
        if not grant_owner(parent_fd, name):
            raise
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        granted = False
        for child in os.listdir(fd):
            try:
                remove_tree(fd, child)
            except PermissionError:
                if granted or not _grant_fd(fd):
                    raise
                granted = True
                remove_tree(fd, child)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(name, dir_fd=parent_fd)


def _grant_fd(fd: int) -> bool:
    """``u+rwx`` on the directory open as ``fd`` (it blocks unlinking its entries)."""
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & stat.S_IRWXU == stat.S_IRWXU:
        return False
    os.fchmod(fd, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
    return True


def describe_error(exc: BaseException) -> str:
    """A short reason for a failed removal, naming the file when the OS says which."""
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return "nested too deep to remove"
