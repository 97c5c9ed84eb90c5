"""Faults of a real Milvus server under the search service's traffic, as timelines: the scenarios
tests/test_milvus_server.py checks (tests/milvus_server.py runs them), run once and printed.

    python bench/milvus_faults.py [--timeout 2] [--products 60] [--frozen 10] [--only drop,kill,freeze] [--json]

It starts a Milvus 2.3.5 standalone server (the `milvus` package, requirements-dev.txt) on free
loopback ports in a temporary folder, publishes a random index stamped with the tiny test model,
serves it with SEARCH_BACKEND=milvus (MILVUS_TIMEOUT=--timeout) and four client threads, then:

    drop    the products collection dropped by another client, then `search.index publish` again
    kill    kill -9 of the server (a process whose etcd session TTL is 10 s), 3 s down, restart
    freeze  SIGSTOP for --frozen seconds (6 requests sent at once in the middle of it), SIGCONT

Each line: seconds from the fault to the first 503, the 503s answered, the slowest of them, other
errors, and seconds from the restart / SIGCONT / publish to the first 200. Everything it starts
stops when it ends (the server's process group is killed at exit whatever happens).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.milvus_server import (  # noqa: E402
    MilvusServer,
    drop_scenario,
    freeze_scenario,
    kill_scenario,
    service_app,
    service_index,
    unavailable_reason,
)

SCENARIOS = ("drop", "kill", "freeze")  # this order: the kill's restart leaves a process the freeze can use
COLLECTION = "faults"


def shown(value) -> str:
    return "-" if value is None else f"{value}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=2.0, help="MILVUS_TIMEOUT of the service (seconds)")
    parser.add_argument("--products", type=int, default=60, help="products in the published index")
    parser.add_argument("--frozen", type=float, default=10.0, help="seconds the server stays stopped (SIGSTOP)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--json", action="store_true", help="print each timeline as one JSON line instead")
    args = parser.parse_args()
    wanted = [s for s in SCENARIOS if s in args.only.split(",")]
    reason = unavailable_reason()
    if reason is not None:
        print(f"cannot run a Milvus server here: {reason}", file=sys.stderr)
        return 2
    logging.getLogger("fashion").setLevel(logging.ERROR)  # a missing image per result, 503s: not news here

    from search.config import ClipSettings
    from search.embedder import ClipEmbedder
    from search.index_format import Index
    from search.indexing.publish import publish
    from search.vectors.milvus import collection_names
    from tests.conftest import TINY

    scratch = Path(tempfile.mkdtemp(prefix="milvus-faults-"))
    try:
        embedder = ClipEmbedder(ClipSettings(**TINY))
        index_dir = service_index(scratch / "index", embedder.identity, products=args.products)
        with MilvusServer(scratch / "milvus") as server:
            print(f"Milvus 2.3.5 standalone at {server.uri}, healthy in {server.started_in_s[0]} s; "
                  f"MILVUS_TIMEOUT {args.timeout:g} s, {args.products} products", file=sys.stderr)

            def republish():
                publish(index_dir, server.uri, collection=COLLECTION, progress=False)

            started = time.monotonic()
            republish()
            print(f"published in {time.monotonic() - started:.1f} s", file=sys.stderr)
            app = service_app(index_dir, server.uri, embedder, timeout=args.timeout, collection=COLLECTION)
            products = collection_names(Index.load(index_dir), COLLECTION)["products"]
            runs = {
                "drop": lambda: drop_scenario(app, server, products, republish),
                "kill": lambda: kill_scenario(app, server),
                "freeze": lambda: freeze_scenario(app, server, frozen_s=args.frozen),
            }
            if not args.json:
                print(f"{'fault':<28} {'first 503':>9} {'503s':>6} {'slowest':>8} {'other':>6} {'to 200':>7}  notes")
            for name in wanted:
                timeline = runs[name]()
                if args.json:
                    print(json.dumps(timeline))
                    continue
                notes = {"drop": f"publish {shown(timeline.get('publish_s'))} s",
                         "kill": f"server start {shown(timeline.get('start_s'))} s, then 200 after "
                                 f"{shown(timeline.get('recovered_after_healthy_s'))} s",
                         "freeze": f"{len(timeline.get('concurrent_s', []))} at once: "
                                   f"{max(timeline.get('concurrent_s') or [0]):.2f} s at most"}[name]
                notes += f"; same results after: {timeline['same_results_after']}"
                print(f"{timeline['fault']:<28} {shown(timeline['first_503_s']):>9} {timeline['answers_503']:>6} "
                      f"{timeline['slowest_503_s']:>8} {len(timeline['answers_other_errors']):>6} "
                      f"{shown(timeline['recovered_s']):>7}  {notes}")
                print(f"{'':<28} 503 detail: {(timeline['detail_503'] or '')[:160]}")
                if "readyz_down" in timeline:
                    print(f"{'':<28} /readyz while down: {timeline['readyz_down'][0]} "
                          f"{(timeline['readyz_down'][1] or '')[:140]}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
