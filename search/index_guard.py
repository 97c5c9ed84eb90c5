"""Who may touch an index folder, and when: readers hold the generation they map, writers hold
the folder.

Readers (every serving process) take a shared `flock` on `gen-<id>/.readers` for as long as they
map that generation (`hold_generation`). A writer removes an old generation only when it can take
that lock exclusively, i.e. when no process maps it; the kernel drops a dead process's locks, so a
crashed worker never pins a generation. `flock` needs only a read-only descriptor, so a service
that mounts the index read-only can still hold its generation.

Writers (build, ann, export, publish) hold the whole index folder: an exclusive `flock` on
`INDEX/.writer.lock` for the whole command (`writer_lock`), so one writes at a time; a second one
says who holds it and waits (or, told not to wait, stops with `WriterBusy`). The kernel drops the
lock of a writer that dies, even by SIGKILL: a stale lock never blocks. Holding it, a writer first
removes what a crashed one left (`remove_leftovers`): temp files, half-written or no longer used
generations, folders half removed, export versions no link points at.

A folder that is replaced whole (the text-encoder export) is a symlink to a sibling version
folder, flipped with one rename (`new_folder_version`, `switch_folder`): a reader that resolves
the link once (os.path.realpath) reads every file from one version.

See docs/index-writers.md.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("fashion.index.writers")

READERS_FILE = ".readers"  # in each generation folder; written by the writer before the switch
WRITER_LOCK_FILE = ".writer.lock"  # in the index folder: the writers' lock, and who holds it (JSON)
REMOVING_PREFIX = ".removing-"  # a generation renamed away, being deleted
GENERATION_PREFIX = "gen-"
# A file being written beside its target, `.<name>.<pid>-<8 hex>.tmp` (`staged_path`): unique per
# writer and call, so two writers never write one temp file. ".meta.json.tmp": the one name all used before.
STAGED_FILE = re.compile(r"^\..+\.\d+-[0-9a-f]{8}\.tmp$")
LEGACY_STAGED_FILES = (".meta.json.tmp",)
# Beside a versioned folder's link `<name>`: `.<name>.v-*` its versions, `.<name>.link-*` a link being
# made (or, after a migration's exchange, the old real folder), `.<name>.migrating-*` a real folder set
# aside by a migration without an atomic exchange.
VERSION_ENTRY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>v|link|migrating)-(?P<tag>\d{8}T\d{6}-[0-9a-f]{8}|\d+-[0-9a-f]{8})$")


class GenerationGone(Exception):
    """The generation was removed between reading meta.json and holding it: read meta.json again."""


class GenerationHold:
    """A shared lock on one generation: while held, no writer removes it."""

    def __init__(self, folder: Path, fd: int | None):
        self.folder, self._fd = folder, fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> GenerationHold:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):  # a hold dropped without release() must not pin the generation forever
        self.release()


def hold_generation(index_dir: str | Path, generation: str) -> GenerationHold:
    """Hold `generation` of the index at `index_dir` (shared lock). A generation written before
    holds existed (no .readers file) is returned unheld. Raises GenerationGone when the folder was
    removed meanwhile (a writer removes it with the file locked exclusively, so a reader either
    gets the lock before, or finds the folder gone after)."""
    folder = Path(index_dir) / generation
    path = folder / READERS_FILE
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        if not folder.is_dir():
            raise GenerationGone(f"generation {generation} of {index_dir} was removed") from None
        return GenerationHold(folder, None)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a writer checks it (never for a whole removal of a held one)
        same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        same = False
    if not same:
        os.close(fd)
        raise GenerationGone(f"generation {generation} of {index_dir} was removed")
    return GenerationHold(folder, fd)


def remove_generation_if_unused(folder: str | Path) -> bool:
    """Remove a generation folder unless a process holds it; True when removed. Taken exclusively,
    the folder is first renamed away (one atomic step, so a reader finds it whole or gone), then
    deleted. A folder without a .readers file (written before holds existed, or a crashed writer's
    half-written generation) is held by no one."""
    folder = Path(folder)
    path = folder / READERS_FILE
    try:  # read-write where allowed: NFS emulates flock with fcntl locks, whose exclusive kind needs it
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = None
    except OSError:  # not writable (another owner, a read-only mount): a local flock does not need it
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
        trash = folder.with_name(f"{REMOVING_PREFIX}{folder.name}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(folder, trash)
        except FileNotFoundError:
            return False
    finally:
        if fd is not None:
            os.close(fd)
    shutil.rmtree(trash, ignore_errors=True)
    return True


# --------------------------------------------------------------------------- writers


class WriterBusy(Exception):
    """Another writer holds the index folder and this one was told not to wait (--no-wait); the
    message is the line to print. Writer commands exit with EXIT_STATUS then."""

    EXIT_STATUS = 2


_held: set[tuple[str, int]] = set()  # (folder's real path, thread) holding a writer_lock in this process
_held_guard = threading.Lock()


@contextlib.contextmanager
def writer_lock(index_dir: str | Path, command: str, *, wait: bool = True) -> Iterator[Path]:
    """Hold the index folder for writing: an exclusive flock on INDEX/.writer.lock (the folder is
    created when absent). Another holder is named on stderr in one line ("waiting for `build`
    (pid 1234, since 12:03:04) to finish writing DIR ...") and waited for; with wait=False,
    WriterBusy is raised instead. Once held, what crashed writers left is removed
    (`remove_leftovers`). Nested use by the same thread (a command calling library writers that
    lock too) holds it once. Yields the folder."""
    folder = Path(index_dir)
    folder.mkdir(parents=True, exist_ok=True)
    key = (os.path.realpath(folder), threading.get_ident())
    with _held_guard:
        nested = key in _held
    if nested:
        yield folder
        return
    fd = _take_writer_lock(folder, command, wait)
    with _held_guard:
        _held.add(key)
    try:
        remove_leftovers(folder)
        yield folder
    finally:
        with _held_guard:
            _held.discard(key)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # nobody holds it now: no stale name for the next one to read
        os.close(fd)  # closing drops the flock


HOLDER_RECORD_WAIT_S = 1.0  # how long a waiting writer waits for the holder's record, to name it


def _take_writer_lock(folder: Path, command: str, wait: bool) -> int:
    path = folder / WRITER_LOCK_FILE
    announced = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe_holder(fd)
                if not wait:
                    raise WriterBusy(f"{holder} is writing {folder}; not waiting (--no-wait): "
                                     "run the command again once it is done") from None
                if not announced:
                    print(f"waiting for {holder} to finish writing {folder} ...", file=sys.stderr, flush=True)
                    announced = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:  # the file locked must still be the one at the path (a copied-over index replaces it)
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    record = {"pid": os.getpid(), "command": command, "since": time.time(), "host": socket.gethostname()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    return fd


def _describe_holder(fd: int) -> str:
    """`build` (pid 1234, since 12:03:04), from what the holder wrote into the lock file. A holder
    writes its record just after it takes the lock: read again for up to HOLDER_RECORD_WAIT_S."""
    deadline = time.monotonic() + HOLDER_RECORD_WAIT_S
    while True:
        try:
            record = json.loads(os.pread(fd, 4096, 0) or b"null")
            command, pid, since = record["command"], int(record["pid"]), float(record["since"])
            break
        except (OSError, ValueError, TypeError, KeyError):
            if time.monotonic() >= deadline:
                return "another writer"  # it has the lock but has not written its name
            time.sleep(0.01)
    started = time.localtime(since)
    when = time.strftime("%H:%M:%S" if started[:3] == time.localtime()[:3] else "%Y-%m-%d %H:%M:%S", started)
    host = record.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"`{command}` (pid {pid}{where}, since {when})"


def staged_path(path: str | Path) -> Path:
    """A unique hidden name beside `path` to write it under before renaming it into place."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def is_staged(name: str) -> bool:
    return bool(STAGED_FILE.match(name)) or name in LEGACY_STAGED_FILES


def sync_folder(folder: str | Path) -> None:
    """fsync a folder: its entries (a rename, a new file) survive a power cut."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_leftovers(folder: str | Path) -> list[str]:
    """Remove what writers that died left in `folder` (call it holding the writer_lock: nothing
    else writes then): export versions no link points at (`switch_folder`); and in an index
    folder (one with meta.json): staged temp files, `.removing-*` folders, and every generation
    but the one meta.json names that no process holds (half-written ones have no holder). Returns
    the names removed."""
    folder = Path(folder)
    removed = _remove_stale_versions(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except FileNotFoundError:  # not an index (an export's folder elsewhere), or not yet: a first
        return removed  # build removes half-written generations after its switch, the next writer the rest
    except (OSError, ValueError):
        meta = {}  # unreadable: which generation is live is unknown, so none is removed
    current = meta.get("generation") if isinstance(meta, dict) else None
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if entry.is_symlink():
            continue
        if name.startswith(REMOVING_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(name)
        elif is_staged(name) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(name)
        elif name.startswith(GENERATION_PREFIX) and entry.is_dir():
            for inner in entry.iterdir():
                if is_staged(inner.name) and inner.is_file():
                    inner.unlink(missing_ok=True)
                    removed.append(f"{name}/{inner.name}")
            if current and name != current and remove_generation_if_unused(entry):
                removed.append(name)
    if removed:
        log.info("removed what earlier writers left in %s: %s", folder, ", ".join(removed))
    return removed


def remove_unused_generations(index_dir: str | Path, current: str) -> list[str]:
    """After a switch to `current`: remove every other generation no process holds (a held one
    stays until a later writer finds it released)."""
    return [p.name for p in sorted(Path(index_dir).glob(f"{GENERATION_PREFIX}*"))
            if p.name != current and p.is_dir() and not p.is_symlink() and remove_generation_if_unused(p)]


# --------------------------------------------------------------------------- folders replaced whole


def new_folder_version(target: str | Path) -> Path:
    """An empty version folder beside `target` (`.<name>.v-<time>-<random>`), to be filled, then
    put in place by `switch_folder`."""
    target = Path(target)
    version = target.with_name(f".{target.name}.v-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-"
                               f"{uuid.uuid4().hex[:8]}")
    version.mkdir()
    version.chmod(0o755)  # the service may run as another user
    return version


def switch_folder(target: str | Path, version: str | Path) -> None:
    """Make `target` show `version` (from `new_folder_version`, complete) in one atomic step:
    `target` is a symlink to it, replaced by a new symlink with one rename; then the versions it
    showed before are removed. A real folder at `target` (written before versions) is migrated:
    swapped with the link in one step where the kernel can (renameat2 RENAME_EXCHANGE), else set
    aside, then replaced (the next writer puts it back if a crash came between)."""
    target, version = Path(target), Path(version)
    if version.parent != target.parent or not VERSION_ENTRY.match(version.name):
        raise ValueError(f"{version} is not a version folder beside {target} (see new_folder_version)")
    for path in sorted(version.rglob("*")):  # the content is on disk before any reader can see it
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    sync_folder(version)
    link = target.with_name(f".{target.name}.link-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.symlink(version.name, link)  # relative: the index folder can be moved or copied with its links
    if target.is_dir() and not target.is_symlink():
        log.info("migrating %s: the folder becomes a link to versions of it (now %s); the old one is removed",
                 target, version.name)
        if not _exchange(link, target):  # the old folder is at `link` now, removed below
            aside = target.with_name(f".{target.name}.migrating-{version.name.rsplit('.v-', 1)[1]}")
            os.rename(target, aside)
            os.replace(link, target)
    else:
        os.replace(link, target)
    sync_folder(target.parent)
    _remove_stale_versions(target.parent, only=target.name)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _remove_stale_versions(folder: Path, only: str | None = None) -> list[str]:
    """Versions no link points at, links being made, migrated real folders; a migration stopped
    between its two renames (no link, a folder set aside) is undone first."""
    groups: dict[str, list[tuple[str, Path]]] = {}
    for entry in folder.iterdir():
        match = VERSION_ENTRY.match(entry.name)
        if match and (only is None or match["name"] == only):
            groups.setdefault(match["name"], []).append((match["kind"], entry))
    removed = []
    for name, entries in groups.items():
        target = folder / name
        aside = sorted(entry for kind, entry in entries if kind == "migrating")
        if aside and not os.path.lexists(target):
            os.rename(aside[-1], target)
            log.info("%s: put back the folder a stopped migration had set aside", target)
        shown = os.path.realpath(target) if target.is_symlink() else None
        for kind, entry in entries:
            if not os.path.lexists(entry) or (kind == "v" and os.path.realpath(entry) == shown):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed
