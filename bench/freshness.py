"""Freshness: how long from the start of an --update that adds one product to a 100k-product index
until the running search service answers with it.

    python bench/freshness.py [--products 100000] [--product 10-gray-crew-neck-tunic-plistre-7931669]
                              [--root /tmp/freshness] [--keep] [--weights DIR] [--workers 1]
                              [--update-threads N] [--swap-timeout 60] [--goal 60] [--cli] [--milvus]
                              [--runs 1] [--setup-only] [--clean]

Setup (not timed; --keep reuses it): a synthetic index of --products products x 5 images in the
service's format, written without embedding by bench/scale.py's `write_generated_index` (clip-like
vectors), and a catalog folder of one folder per product whose images are hard links to a few
copies of one small JPEG (regular files, as a real catalog's: ~0.4 GB of directories, no image
data). The index is then made to look like one this indexer built over that catalog: each image's sha256 and file stat
(search/indexing/update.py's STAT_ARRAY), each product's garment classes from its name, the bg
pipeline's identity and the chooser's fingerprint, so an --update has everything to reuse.

A run: the search service starts as it ships (gunicorn with docker/gunicorn.conf.py, 2 workers x
2 threads, ORT_THREADS=TORCH_THREADS=1, photo queries on with the in-process garment step) on a
free 127.0.0.1 port over that index; one real product folder is copied from
../shared/data/catalog into the catalog; then the update runs in a fresh process, as
`python -m search.index build --catalog C --out I --update` does (build_index with the CLI's
defaults: 1 process, batches of 16, one thread per model unless --update-threads; --cli runs that
very command and reads its stage line), with the real-cost U^2-Net models (../shared/tools/real-cost-models/make_models.py, random weights) and
ViT-B-32 with random weights (open_clip, pretrained=None: the real architecture and cost).

Stages, each with its seconds and share of the total (update start -> visible):
  start       process start, imports, models loaded (U^2-Net x 3, CLIP)
  scan/hash   catalog scan (one stat per file), previous index read, digests (only files whose stat
              changed are read), garment classes, reuse matching
  garment     the bg pipeline on the new product's photos (decode included)
  embed       CLIP's image tower on their garments
  write       assembling the new generation (rows gathered from the previous one) and writing it
  swap        from meta.json's switch until GET /products/<new id> is 200 on every worker: the
              product answers 200 (absent from the base generation) and each worker's /readyz
              (pid, index_generation; fresh connections) names the new generation; bounded by
              --swap-timeout, and a timeout says what was missing
The duplicate check and the report run after the switch, while the service swaps (shown apart).
Goal: <= --goal seconds (60) from the update's start to visible on every worker.

--milvus also publishes the base index to Milvus Lite (`python -m search.index publish`, untimed:
~265 s for 600k vectors on a 2-core VM), then the updated one once it is visible, and prints the
upserted / unchanged / deleted counts and seconds of that second publish. Everything is written under --root; traffic goes only to 127.0.0.1.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

CATALOG = REPO.parent / "shared" / "data" / "catalog"
TOOLS = REPO.parent / "shared" / "tools" / "real-cost-models"
SHARED_MODELS = REPO.parent / "shared" / "models"
SHIPPED = {"GUNICORN_WORKERS": "2", "GUNICORN_THREADS": "2", "ORT_THREADS": "1", "TORCH_THREADS": "1",
           "GUNICORN_LOG_LEVEL": "warning"}
MODELS_ENV = {"CLIP_MODEL": "ViT-B-32", "CLIP_PRETRAINED": "", "MODEL_CHECKSUM_DISABLED": "1", "BG_ALLOW_DOWNLOAD": "0"}
SETUP_VERSION = 3


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_avg() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


# --------------------------------------------------------------------------- setup


def ensure_weights(weights: Path) -> None:
    """The real-cost U^2-Net models (random weights, rembg's shapes) and the IS-Net matte."""
    weights.mkdir(parents=True, exist_ok=True)
    missing = [n for n in ("u2net_human_seg", "u2net_cloth_seg") if not (weights / f"{n}.onnx").exists()]
    if missing:
        say(f"writing real-cost models {missing} to {weights} ...")
        subprocess.run([sys.executable, str(TOOLS / "make_models.py"), "--out", str(weights), "--only", *missing],
                       check=True, capture_output=True)
    isnet = weights / "isnet-general-use.onnx"
    if not isnet.exists() and (SHARED_MODELS / isnet.name).exists():
        os.symlink(SHARED_MODELS / isnet.name, isnet)


LINKS_PER_FILE = 50_000  # ext4 allows 65,000 links to one inode


def write_linked_catalog(catalog: Path, index, photos_dir: Path) -> tuple[float, list[Path]]:
    """A folder per product of `index`, each image a hard link (a regular file, as in a real
    catalog: no symlink to resolve on a stat) to one of a few copies of one small JPEG; image row
    r links copy r % copies. Returns the seconds and the copies."""
    from PIL import Image

    started = time.perf_counter()
    photos_dir.mkdir(parents=True)
    first = photos_dir / "photo-0.jpg"
    Image.new("RGB", (64, 64), (120, 40, 40)).save(first)
    photos = [first] + [photos_dir / f"photo-{i}.jpg" for i in range(1, -(-len(index.image_files) // LINKS_PER_FILE))]
    for photo in photos[1:]:
        shutil.copyfile(first, photo)
    tmp = catalog.with_name(catalog.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = list(index.image_files)
    starts = np.asarray(index.product_starts).tolist()
    for p, name in enumerate(index.products):
        folder = tmp / name
        folder.mkdir()
        for row in range(starts[p], starts[p + 1]):
            os.link(photos[row % len(photos)], folder / files[row])
    tmp.rename(catalog)
    return time.perf_counter() - started, photos


def prepare(root: Path, products: int, env: dict, keep: bool) -> dict:
    """The synthetic base index and its catalog (see the module docstring); returns the setup record."""
    from bench.scale import ClipLike, identity_of, write_generated_index
    from search.garments import LocalGarments
    from search.filters import PREFIX as ATTRIBUTE_PREFIX
    from search.filters import AttributeColumns
    from search.index_format import (CLASS_SOURCES, Index, class_bits, filterable_values, product_text, read_meta,
                                     write_meta)
    from search.lexical import LexicalIndex
    from search.indexing.update import STAT_ARRAY, chooser_fingerprint, write_stats
    from search.string_table import StringTable
    from shared.garment_vocabulary import Vocabulary

    index_dir, catalog, record_path = root / "index", root / "catalog", root / "setup.json"
    identity = identity_of(root, root / "no-sample-index")
    garments = LocalGarments()  # the bg pipeline's identity, as the build will report it
    vocabulary = Vocabulary.load()
    wanted = {"version": SETUP_VERSION, "products": products,
              "identity": hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest(),
              "garments": hashlib.sha256(json.dumps(garments.identity, sort_keys=True).encode()).hexdigest(),
              "chooser": chooser_fingerprint(vocabulary, feed=False)}
    if keep and record_path.is_file() and {k: v for k, v in json.loads(record_path.read_text()).items()
                                           if k in wanted} == wanted \
            and (root / "base" / json.loads(record_path.read_text())["generation"]).is_dir():
        say(f"reusing the setup in {root}")
        return json.loads(record_path.read_text())
    for path in (index_dir, catalog, root / "photos", root / "base"):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    started = time.perf_counter()
    say(f"writing a synthetic index of {products:,} products x 5 images ...")
    written = write_generated_index(index_dir, ClipLike(), products, identity, catalog)
    say(f"  {written}")
    index = Index.load(index_dir)
    say("writing the catalog (a folder per product, hard links to a few copies of one JPEG) ...")
    catalog_s, photos = write_linked_catalog(catalog, index, root / "photos")
    digest = hashlib.sha256(photos[0].read_bytes()).digest()
    images = len(index.image_files)
    folder = index.generation_dir
    # What this indexer records and the synthetic writer leaves out: digests and stats of the
    # catalog's files (copies of one JPEG), garment classes from the names, the pipeline's identity.
    np.save(folder / "image_sha256.npy", np.frombuffer(digest * images, np.uint8).reshape(images, 32))
    stats = np.array([[st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino] for st in map(os.stat, photos)],
                     np.int64)
    write_stats(folder, stats[np.arange(images) % len(photos)])
    assert (folder / f"{STAT_ARRAY}.npy").is_file()
    names = list(index.products)
    choices = [vocabulary.choose(name) for name in names]
    np.save(folder / "product_classes.npy", np.array([class_bits(c.classes) for c in choices], np.uint8))
    np.save(folder / "product_class_sources.npy", np.array([CLASS_SOURCES.index(c.source) for c in choices], np.uint8))
    blob, offsets = StringTable.arrays([c.garment or "" for c in choices])
    np.save(folder / "product_garments.utf8.npy", blob)
    np.save(folder / "product_garments.offsets.npy", offsets)
    np.save(folder / "image_fallbacks.npy", np.zeros(images, np.uint8))
    # A folder catalog's product arrays, as write_index makes them (the synthetic writer's are a
    # feed's: display names, records with attributes): record = key, BM25 over the key, no fields.
    for path in [*folder.glob(f"{LexicalIndex.PREFIX}*.npy"), *folder.glob(f"{ATTRIBUTE_PREFIX}*.npy")]:
        path.unlink()
    records = [{"id": key, "name": key, "attributes": {}} for key in names]
    arrays = dict(LexicalIndex.arrays([product_text(r) for r in records], "english"))
    fields, columns = AttributeColumns.arrays({}, [filterable_values(r) for r in records])
    arrays.update(columns)
    for prefix, strings in (("product_names", names),
                            ("product_records", [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in records])):
        arrays[f"{prefix}.utf8"], arrays[f"{prefix}.offsets"] = StringTable.arrays(strings)
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array, allow_pickle=False)
    meta = read_meta(index_dir)
    meta.update(attributes=fields)
    meta.update(garment_pipeline=garments.identity, garment_service=garments.description,
                garment_vocabulary={"path": str(vocabulary.path) if vocabulary.path else None,
                                    "sha256": vocabulary.sha256, "version": vocabulary.version,
                                    "chooser": wanted["chooser"]})
    write_meta(index_dir, meta)
    Index.load(index_dir, for_building=True)  # it loads as a builder's index
    record = {**wanted, "generation": meta["generation"], "images": images,
              "setup_s": round(time.perf_counter() - started, 1), "catalog_s": round(catalog_s, 1)}
    # A pristine copy of the base generation, as hard links: writers remove generations no one uses,
    # and every run starts from this one.
    shutil.copytree(folder, root / "base" / folder.name, copy_function=os.link)
    record_path.write_text(json.dumps(record, indent=1))
    (root / "base-meta.json").write_text(json.dumps(meta, indent=1))
    say(f"setup done in {record['setup_s']} s")
    return record


def reset(root: Path, setup: dict, product: str) -> None:
    """Back to the base index (its generation linked from ROOT/base, its meta.json, no later
    generation) and the catalog without the product."""
    from search.index_format import write_meta

    index_dir = root / "index"
    for folder in index_dir.glob("gen-*"):
        shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(root / "base" / setup["generation"], index_dir / setup["generation"], copy_function=os.link)
    write_meta(index_dir, json.loads((root / "base-meta.json").read_text()))
    shutil.rmtree(root / "catalog" / product, ignore_errors=True)


# --------------------------------------------------------------------------- the update


def child(spec: dict) -> int:
    """The update, in this fresh process: models loaded as the CLI loads them, then build_index
    --update with the CLI's defaults. Writes the report's stages as JSON to spec["result"]."""
    loaded_at = None
    from search.config import SearchConfig
    from search.indexing.builder import build_index
    from search.indexing.embedding import BuildModels
    from search.indexing.report import print_report
    from shared.garment_vocabulary import Vocabulary

    settings = SearchConfig.from_env()
    models = BuildModels(settings.clip)
    embedder, garments = models.load()
    loaded_at = time.time()
    report = build_index(Path(spec["catalog"]), Path(spec["out"]), embedder, garments, update=True, progress=False,
                         workers=spec["workers"], models=models, batch_size=16, vocabulary=Vocabulary.load())
    done_at = time.time()
    print_report(report, Path(spec["out"]))
    Path(spec["result"]).write_text(json.dumps({
        "loaded_at": loaded_at, "switched_at": report.switched_at, "done_at": done_at, "stages": report.stages,
        "embedded": report.embedded, "reused": report.reused, "hashed": report.hashed, "skipped": report.skipped,
        "reembedded": dict(report.reembedded)}))
    return 0


CLI_STAGES = {"catalog scan": "scan", "previous index": "previous", "hash": "hash", "garment classes": "choose",
              "reuse": "match", "decode": "decode", "garment step + CLIP": "models", "garment step": "garment",
              "CLIP": "embed",
              "previous rows": "gather", "assemble": "assemble", "write": "write",
              "duplicate check": "duplicates"}


def run_update(root: Path, env: dict, workers: int, cli: bool) -> tuple[dict, float, subprocess.Popen]:
    """Start the update process; returns (spec, its start time, the process)."""
    spec = {"catalog": str(root / "catalog"), "out": str(root / "index"), "workers": workers,
            "result": str(root / "update-result.json")}
    Path(spec["result"]).unlink(missing_ok=True)
    if cli:
        argv = [sys.executable, "-m", "search.index", "build", "--catalog", spec["catalog"], "--out", spec["out"],
                "--update", "--workers", str(workers)]
    else:
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    started = time.time()
    proc = subprocess.Popen(argv, cwd=REPO, env={**os.environ, **env, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return spec, started, proc


def cli_result(output: str, switched_at: float | None, finished: float) -> dict:
    """The stages of `search.index build`'s printed stage line. The switch is when the watcher saw
    meta.json name the new generation; the models were loaded when the stages before it began."""
    line = next((ln for ln in output.splitlines() if ln.startswith("stages: ")), None)
    stages = {}
    if line:
        for part in line[len("stages: "):].split(" (")[0].split(", "):
            name, seconds = part.rsplit(" ", 2)[0], float(part.rsplit(" ", 2)[1])
            stages[CLI_STAGES.get(name, name)] = seconds
    switched_at = switched_at or finished
    before_switch = sum(v for k, v in stages.items() if k != "duplicates")
    counts = re.search(r"\((\d+) embedded, (\d+) reused\)", output)
    hashed = re.search(r"\((\d+) files hashed", output)
    return {"stages": stages, "loaded_at": switched_at - before_switch, "switched_at": switched_at,
            "done_at": finished, **({"embedded": int(counts[1]), "reused": int(counts[2])} if counts else {}),
            **({"hashed": int(hashed[1])} if hashed else {})}


# --------------------------------------------------------------------------- watching the service


class Watcher:
    """From a thread: meta.json until the build switches it (a stat every 20 ms, no HTTP traffic
    to compete with the update), then the service, fresh connections each time: GET /products/<id>
    (status, X-Index-Generation) and /readyz (pid, index_generation), to tell when every worker
    serves the new generation."""

    def __init__(self, base: str, product: str, index_dir: Path, interval: float = 0.1):
        self.base, self.product, self.interval = base, product, interval
        self.meta_path, self.meta_mtime, self.switched_at = index_dir / "meta.json", None, None
        self.base_generation = json.loads(self.meta_path.read_text())["generation"]
        self.first_200: float | None = None
        self.first_200_generation: str | None = None
        self.worker_generation: dict[int, tuple[float, str]] = {}  # pid -> (since, generation)
        self.headers_seen: set[str] = set()
        self.readyz_has_pid = False
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Watcher:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        import requests

        url = f"{self.base}/products/{self.product}"
        while not self._stop.is_set():
            now = time.time()
            if self.switched_at is None:  # nothing new can be served before the switch: no traffic meanwhile
                self._look_at_meta(now)
                self._stop.wait(0.02)
                continue
            try:
                r = requests.get(url, timeout=5, headers={"Connection": "close"})
                generation = r.headers.get("X-Index-Generation")
                if generation:
                    self.headers_seen.add(generation)
                if r.status_code == 200 and self.first_200 is None:
                    self.first_200, self.first_200_generation = now, generation
                ready = requests.get(f"{self.base}/readyz", timeout=5, headers={"Connection": "close"})
                if ready.status_code == 200:
                    body = ready.json()
                    pid, served = body.get("pid"), body.get("index_generation")
                    if pid is not None and served is not None:
                        self.readyz_has_pid = True
                        known = self.worker_generation.get(pid)
                        if known is None or known[1] != served:
                            self.worker_generation[pid] = (time.time(), served)
            except requests.RequestException:
                pass
            self._stop.wait(self.interval)

    def _look_at_meta(self, now: float) -> None:
        """When meta.json first names another generation than the base's (the build's switch)."""
        try:
            mtime = self.meta_path.stat().st_mtime_ns
            if self.switched_at is None and mtime != self.meta_mtime:
                self.meta_mtime = mtime
                if json.loads(self.meta_path.read_text())["generation"] != self.base_generation:
                    self.switched_at = now
        except (OSError, ValueError, KeyError):
            pass

    def visible(self, generation: str, workers: list[int]) -> float | None:
        """When every worker served `generation` and the product answered 200 (None: not yet)."""
        if self.first_200 is None:
            return None
        if self.readyz_has_pid:
            since = [self.worker_generation.get(pid) for pid in workers]
            if not all(s is not None and s[1] == generation for s in since):
                return None
            return max([self.first_200, *(s[0] for s in since)])
        return self.first_200  # no per-worker view: the first 200 (a lower bound for "every worker")


def start_service(root: Path, env: dict):
    from bench.load import start, worker_pids

    service_env = {**env, **SHIPPED, "SEARCH_INDEX_DIR": str(root / "index"), "SEARCH_CATALOG_DIR": str(root / "catalog")}
    started = time.perf_counter()
    proc, base = start("search:create_app()", service_env, int(SHIPPED["GUNICORN_WORKERS"]),
                       int(SHIPPED["GUNICORN_THREADS"]), timeout=600)
    return proc, base, worker_pids(proc.pid), time.perf_counter() - started


def service_log(proc, last: int = 3000) -> str:
    proc.log.seek(0)
    return proc.log.read().decode(errors="replace")[-last:]


# --------------------------------------------------------------------------- one run


def one_run(args, root: Path, setup: dict, env: dict) -> dict:
    import requests

    from search.index_format import read_meta

    reset(root, setup, args.product)
    say(f"starting the search service over {setup['products']:,} products (2 workers x 2 threads) ...")
    proc, base, workers, ready_s = start_service(root, env)
    try:
        say(f"  ready in {ready_s:.0f} s at {base}, workers {workers}")
        before = requests.get(f"{base}/products/{args.product}", timeout=10)
        header = before.headers.get("X-Index-Generation")
        say(f"  GET /products/{args.product} before: {before.status_code}, X-Index-Generation {header!r}")
        if before.status_code != 404:
            raise RuntimeError(f"the product is already served ({before.status_code}); pick another --product")
        milvus = None
        if args.milvus:
            say("publishing the base index to Milvus Lite (untimed) ...")
            for old in root.glob("milvus.db*"):
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            milvus = {"base": publish_milvus(root, env)}
            say(f"  {milvus['base']}")
        shutil.copytree(CATALOG / args.product, root / "catalog" / args.product)
        watcher = Watcher(base, args.product, root / "index", interval=0.05).start()
        load = load_avg()
        spec, started, update = run_update(root, env, args.workers, args.cli)
        output, _ = update.communicate(timeout=1800)
        finished = time.time()
        if update.returncode:
            raise RuntimeError(f"the update failed ({update.returncode}):\n{output[-3000:]}")
        result = (json.loads(Path(spec["result"]).read_text()) if not args.cli
                  else cli_result(output, watcher.switched_at, finished))
        generation = read_meta(root / "index")["generation"]
        deadline = result["switched_at"] + args.swap_timeout
        visible = None
        while time.time() < deadline:
            visible = watcher.visible(generation, workers)
            if visible is not None:
                break
            time.sleep(0.05)
        watcher.stop()
        after = requests.get(f"{base}/products/{args.product}", timeout=10)
        if milvus is not None:
            milvus["update"] = publish_milvus(root, env)
        return {"started": started, "finished": finished, "visible": visible, "result": result, "load": load,
                "generation": generation, "watcher": watcher, "workers": workers, "output": output,
                "after_status": after.status_code, "after_header": after.headers.get("X-Index-Generation"),
                "service_log": service_log(proc) if visible is None else "", "milvus": milvus,
                "load_end": load_avg()}
    finally:
        proc.terminate()
        proc.wait(60)


def publish_milvus(root: Path, env: dict) -> dict:
    """`python -m search.index publish --index ROOT/index --milvus ROOT/milvus.db`, in its own
    process as it ships (Milvus Lite serves a .db folder to one process, and its embedded server
    does not take a second client in the same process reliably); its report's counts."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "search.index", "publish", "--index", str(root / "index"),
                           "--milvus", str(root / "milvus.db")], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **env, "PYTHONPATH": str(REPO)}, timeout=3600, check=False)
    if done.returncode:
        raise RuntimeError(f"publish failed ({done.returncode}): {done.stderr[-1500:]}")
    published = json.loads(done.stdout[done.stdout.index("{"):])
    return {k: published.get(k) for k in ("generation", "upserted", "unchanged", "deleted")} | {
        "seconds": round(time.perf_counter() - started, 1)}


def report(run: dict, args) -> str:
    stages = run["result"]["stages"]
    started, visible = run["started"], run["visible"]
    loaded, switched = run["result"]["loaded_at"], run["result"]["switched_at"]
    scan = sum(stages.get(k, 0.0) for k in ("scan", "previous", "hash", "choose", "match"))
    write = stages.get("gather", 0.0) + stages.get("assemble", 0.0) + stages.get("write", 0.0)
    # decoding is part of the garment step; with --workers > 1 the models' time is one figure ("models")
    garment = stages.get("garment", 0.0) + stages.get("decode", 0.0) + stages.get("models", 0.0)
    rows = [("start (process, imports, models)", loaded - started),
            ("catalog scan/hash (scan, previous index, digests, classes, reuse)", scan),
            ("garment step (decode + bg pipeline)" if "models" not in stages else
             "garment step + embed (in --workers processes)", garment),
            ("embed (CLIP image tower)", stages.get("embed", 0.0)),
            ("write (previous rows gathered, assemble, new generation)", write)]
    accounted = sum(s for _, s in rows)
    rows.append(("other (between the stages)", max(0.0, switched - started - accounted)))
    end = visible if visible is not None else switched + args.swap_timeout
    rows.append(("swap (switch -> 200 on every worker)" if visible is not None else
                 f"swap: NOT VISIBLE within {args.swap_timeout:.0f} s", end - switched))
    total = end - started
    threads = args.update_threads or 1
    lines = [f"freshness: {args.products:,} products, +1 product ({args.product}); update "
             f"{'`python -m search.index build --update`' if args.cli else 'build_index(update=True)'} --workers "
             f"{args.workers}, ORT_THREADS=TORCH_THREADS={threads}; load before {run['load']}, after {run['load_end']}",
             f"  images: {run['result'].get('embedded', '?')} embedded, {run['result'].get('reused', '?')} reused, "
             f"{run['result'].get('hashed', '?')} files hashed; generation {run['generation']}"]
    for name, seconds in rows:
        lines.append(f"  {name:<66} {seconds:7.2f} s  {100 * seconds / total:5.1f} %")
    lines.append(f"  {'after the switch, during the swap: duplicate check':<66} {stages.get('duplicates', 0.0):7.2f} s")
    lines.append(f"  {'total: update start -> visible':<66} {total:7.2f} s")
    watcher = run["watcher"]
    if visible is None:
        why = []
        if not watcher.headers_seen:
            why.append("no response carried X-Index-Generation")
        if not watcher.readyz_has_pid:
            why.append("/readyz names no pid/index_generation")
        why.append(f"GET /products/<id> after the wait: {run['after_status']}")
        lines.append(f"  swap timed out: the service did not serve generation {run['generation']} within "
                     f"{args.swap_timeout:.0f} s ({'; '.join(why)}): is the hot swap (SEARCH_INDEX_POLL_S) in?")
        lines.append(f"goal (<= {args.goal:.0f} s to visible): FAIL (not visible)")
    else:
        per_worker = ", ".join(f"{pid}: +{since - switched:.2f} s" for pid, (since, _) in
                               sorted(watcher.worker_generation.items()) if pid in run["workers"])
        lines.append(f"  workers on the new generation after the switch: {per_worker or 'no per-worker view'}; "
                     f"first 200 had X-Index-Generation {watcher.first_200_generation}")
        lines.append(f"goal (<= {args.goal:.0f} s to visible): {'PASS' if total <= args.goal else 'FAIL'} ({total:.1f} s)")
    if run["milvus"]:
        base, update = run["milvus"]["base"], run["milvus"]["update"]
        lines.append(f"milvus lite publish of the base: {base['upserted']} upserted in {base['seconds']} s; "
                     f"of the update: upserted {update['upserted']}, unchanged {update['unchanged']}, "
                     f"deleted {update['deleted']} in {update['seconds']} s")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--product", default="10-gray-crew-neck-tunic-plistre-7931669",
                        help="the folder of ../shared/data/catalog that is added")
    parser.add_argument("--root", type=Path, default=Path("/tmp/freshness"))
    parser.add_argument("--keep", action="store_true", help="reuse the setup under --root when it matches")
    parser.add_argument("--weights", type=Path, default=None, help="real-cost U^2-Net models (default ROOT/weights)")
    parser.add_argument("--workers", type=int, default=1, help="the update's --workers (CLI default 1)")
    parser.add_argument("--swap-timeout", type=float, default=60.0)
    parser.add_argument("--goal", type=float, default=60.0)
    parser.add_argument("--cli", action="store_true", help="run `python -m search.index build --update` itself")
    parser.add_argument("--milvus", action="store_true", help="also publish before and after to Milvus Lite")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--update-threads", type=int, default=None,
                        help="ORT_THREADS and TORCH_THREADS of the update process (default: the settings' default, 1)")
    parser.add_argument("--setup-only", action="store_true", help="write the setup (index, catalog) and stop")
    parser.add_argument("--clean", action="store_true", help="remove --root afterwards")
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    if not (CATALOG / args.product).is_dir():
        print(f"skipped: {CATALOG / args.product} is absent")
        return 0
    args.root.mkdir(parents=True, exist_ok=True)
    weights = args.weights or args.root / "weights"
    ensure_weights(weights)
    env = {**MODELS_ENV, "U2NET_HOME": str(weights)}
    os.environ.update(env)
    try:
        setup = prepare(args.root, args.products, env, args.keep)
        if args.setup_only:
            reset(args.root, setup, args.product)
            print(json.dumps(setup))
            return 0
        if args.update_threads:
            env = {**env, "ORT_THREADS": str(args.update_threads), "TORCH_THREADS": str(args.update_threads)}
        for number in range(args.runs):
            run = one_run(args, args.root, setup, env)
            print(report(run, args), flush=True)
            if run["visible"] is None and run["service_log"]:
                say("service log (tail):\n" + run["service_log"])
            say("update output (tail):\n" + run["output"][-1500:])
    finally:
        if args.clean:
            shutil.rmtree(args.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
