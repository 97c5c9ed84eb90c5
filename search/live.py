"""A living index: each worker serves one generation of the index and switches to a newer one
without a restart (plain Python, no Flask).

A build writes a new generation folder, then replaces meta.json in one atomic rename
(search/index_format.py). Each worker stats meta.json every SEARCH_INDEX_POLL_S seconds (a
`stat`, nothing read while it is unchanged). When it changed, a background thread opens the new
generation beside the current one and checks it exactly as at start (the arrays, the catalog
folder, the models it was built with, the vector store), runs one query on it so its pages are in
memory, then switches: one reference assignment, under a lock. A request takes the current
generation when it starts and keeps it to the end (`acquire` / `release`), so in-flight requests finish
on the old one; the last of them closes it (its store is closed, its arrays unmapped, its hold on
the folder dropped, so the next writer may remove it).

The models are not reloaded: a generation built with other weights or in another format is
refused, with a log line and a count (`search_index_generations_total{outcome="refused"}`), and
the worker keeps serving the one it has. A refused meta.json is not tried again until it changes.
"""
from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from search.index_format import Index, IndexLoadError
from search.index_guard import GenerationGone, GenerationHold, hold_generation

log = logging.getLogger("fashion.index.live")
HOLD_ATTEMPTS = 5  # meta.json read again when its generation was removed before we held it
BACKGROUND_NICENESS = 10  # the loading thread yields the CPU to request threads (Linux: per thread)


@dataclass(eq=False)
class Generation:
    """One opened generation and everything built over it; `users` counts the requests on it."""

    index: Index
    searcher: object  # search.searcher.Searcher (its store, the fusion, the shared query cache)
    photos: object | None  # search.photos.PhotoEmbedder, or None when photo queries are off
    catalog_dir: Path
    hold: GenerationHold
    opened_at: float = field(default_factory=time.time)
    info: dict = field(init=False)
    name: str = field(init=False)  # the generation folder (meta.json's "generation"): X-Index-Generation
    # of meta.json's content: an `ann` attached to the same generation is a change too
    meta_digest: str = field(init=False)
    users: int = 0
    retired: bool = False
    closed: bool = False

    def __post_init__(self):
        self.name = self.index.meta["generation"]
        self.meta_digest = digest_of(self.index.meta)
        # What /readyz shows of it; computed once, so reading it never touches the store.
        self.info = {"index_generation": self.name, "products": len(self.index.products),
                     "backend": self.searcher.store.describe()}

    @property
    def store(self):
        return self.searcher.store

    def close(self) -> None:
        """Release the store, the arrays and the hold (called once, when no request uses it)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.store.close()
        except Exception:  # noqa: BLE001 - a store that fails to close must not stop the release
            log.exception("closing the vector store of generation %s failed", self.name)
        self.hold.release()
        # The arrays are memory-mapped: dropping the last references unmaps them.
        self.index = self.searcher = self.photos = None


def meta_signature(index_dir: Path) -> tuple | None:
    """What changes whenever meta.json is replaced (a rename gives it a new inode): cheap to poll."""
    try:
        st = os.stat(index_dir / "meta.json")
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def digest_of(meta: dict) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]


def check_catalog(index: Index, catalog_dir: str | None, sample: int) -> Path:
    """The catalog folder the result urls serve images from, checked in O(sample): it must
    exist, and most of a sample of the index's images spread over it must be there (a wrong
    SEARCH_CATALOG_DIR fails here). A few missing images only warn: at query time a result shows
    another image of its product, and /images/ answers 404 for that file alone.
    `python -m search.index verify` checks every image, offline."""
    catalog = Path(catalog_dir or index.meta["catalog_dir"])
    if not catalog.is_dir():
        raise IndexLoadError(f"catalog folder {catalog} does not exist; set SEARCH_CATALOG_DIR to the "
                             "catalog the index was built from (result urls serve its images)")
    checked, missing, examples = index.missing_images(catalog, index.sample_rows(sample))
    if checked and missing * 2 > checked:
        raise IndexLoadError(f"the catalog at {catalog} lacks {missing} of {checked} images sampled from the index "
                             f"(e.g. {', '.join(examples)}); set SEARCH_CATALOG_DIR to the catalog the index was "
                             "built from, or rebuild the index (`python -m search.index verify` lists them all)")
    if missing:
        log.warning(json.dumps({"event": "catalog_images_missing", "catalog": str(catalog), "sampled": checked,
                                "missing": missing, "examples": examples,
                                "hint": "python -m search.index verify --index DIR lists every missing image"}))
    return catalog


def open_held(index_dir: Path) -> tuple[Index, GenerationHold]:
    """The index meta.json names now, with its generation held (so no writer removes it while
    mapped). A generation removed between reading meta.json and holding it: read it again."""
    for _ in range(HOLD_ATTEMPTS):
        index = Index.load(index_dir)
        try:
            hold = hold_generation(index_dir, index.meta["generation"])
        except GenerationGone:
            continue
        # meta.json may have moved on while we held the folder; what we hold is what we mapped.
        return index, hold
    raise IndexLoadError(f"index at {index_dir} kept changing while it was opened ({HOLD_ATTEMPTS} tries); "
                         "is a writer replacing it in a loop?")


class LiveIndex:
    """The generation this worker serves, and the watcher that switches to new ones.

    `open_generation(index, hold)` builds a Generation over an opened index (checks included) or
    raises; the service passes one that reuses its loaded models. `on_event(outcome, generation,
    detail)` is told of every load: "initial" and "swapped" (with the generation now served),
    "refused" (generation None; the detail says why)."""

    def __init__(self, index_dir: str | Path, open_generation: Callable[[Index, GenerationHold], Generation], *,
                 poll_s: float = 1.0, on_event: Callable[[str, Generation | None, str], None] | None = None):
        self.index_dir = Path(index_dir)
        self.poll_s = poll_s
        self._open_generation = open_generation
        self._on_event = on_event or (lambda outcome, generation, detail: None)
        self._lock = threading.Lock()  # guards _current and the users counts; held for microseconds
        self._reload_lock = threading.Lock()  # one load at a time (the watcher, or check_now in tests)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._seen = meta_signature(self.index_dir)
        self._refused: str | None = None  # meta digest last refused: not retried until meta.json changes
        self._current = self._open()
        self._on_event("initial", self._current, self._current.name)

    # ---------------------------------------------------------------- requests

    @property
    def current(self) -> Generation:
        return self._current

    def acquire(self) -> Generation:
        """The current generation, counted as in use until `release`."""
        with self._lock:
            generation = self._current
            generation.users += 1
            return generation

    def release(self, generation: Generation) -> None:
        with self._lock:
            generation.users -= 1
            done = generation.retired and generation.users == 0
        if done:
            self._close(generation)

    # ---------------------------------------------------------------- new generations

    def _open(self) -> Generation:
        index, hold = open_held(self.index_dir)
        try:
            return self._open_generation(index, hold)
        except BaseException:
            hold.release()
            raise

    def check_now(self) -> bool:
        """Look at meta.json once; open, check and switch to a new generation when it changed.
        True when it switched. Never raises: a refused generation is logged and counted."""
        with self._reload_lock:
            signature = meta_signature(self.index_dir)
            if signature == self._seen:
                return False
            self._seen = signature
            try:
                text = (self.index_dir / "meta.json").read_text()
                digest = digest_of(json.loads(text))
            except (OSError, ValueError) as exc:
                self._refuse(f"meta.json: {exc}")
                return False
            if digest in (self._current.meta_digest, self._refused):
                return False
            started = time.perf_counter()
            try:
                new = self._open()
            except Exception as exc:  # noqa: BLE001 - any failure keeps the old generation serving
                self._refused = digest
                self._refuse(f"{type(exc).__name__}: {exc}")
                return False
            self._refused = None
            # Counted before the switch: whoever sees the new generation also sees it counted.
            self._on_event("swapped", new, f"{new.name} in {time.perf_counter() - started:.2f} s")
            self._switch(new)
            return True

    def _refuse(self, reason: str) -> None:
        log.error(json.dumps({"event": "index_generation_refused", "pid": os.getpid(), "index": str(self.index_dir),
                              "serving": self._current.name, "reason": reason}))
        self._on_event("refused", None, reason)

    def _switch(self, new: Generation) -> None:
        with self._lock:
            old, self._current = self._current, new
            old.retired = True
            idle = old.users == 0
        log.info(json.dumps({"event": "index_generation_swapped", "pid": os.getpid(), "from": old.name,
                             "to": new.name, "products": len(new.index.products)}))
        if idle:
            self._close(old)

    def _close(self, generation: Generation) -> None:
        generation.close()
        gc.collect()  # the arrays are unmapped when their last reference goes; cycles must not keep them

    # ---------------------------------------------------------------- the watcher

    def start_watching(self) -> None:
        """Poll meta.json every poll_s seconds in a daemon thread (0: never; SIGHUP still reloads).
        The thread holds the LiveIndex weakly: an app that is dropped (tests make many) takes its
        watcher and its mapped generation with it."""
        if self.poll_s <= 0 or self._watcher is not None:
            return
        self._watcher = threading.Thread(target=_watch, args=(weakref.ref(self), self.poll_s, self._stop),
                                         name="index-watcher", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
            self._watcher = None


def _watch(live_ref, poll_s: float, stop: threading.Event) -> None:
    try:  # a lower priority for this thread only: loading must not slow the requests down
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICENESS)
    except (AttributeError, OSError):
        pass
    while not stop.wait(poll_s):
        live = live_ref()
        if live is None:
            return
        try:
            live.check_now()
        except Exception:  # noqa: BLE001 - the watcher must outlive any surprise
            log.exception("index watcher")
        del live
