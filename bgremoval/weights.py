"""Install the service's model weights where rembg looks for them (U2NET_HOME).

    python -m bgremoval.weights download          # via rembg's own download code (checksums verified)
    python -m bgremoval.weights copy --from DIR   # air-gapped: take DIR/<model>.onnx instead
    python -m bgremoval.weights check             # say what is installed; exit 1 if something is missing
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys

from bgremoval.config import BgConfig
from shared.digests import file_sha256
from shared.settings import exit_on_bad_settings


class MissingWeights(RuntimeError):
    pass


def session_class(name: str):
    """rembg's session class for `name`: where its weights live, and how rembg downloads them
    (checksum-verified)."""
    from rembg.sessions import sessions

    try:
        return sessions[name]
    except KeyError:
        raise ValueError(f"rembg has no model called {name!r}") from None


@contextlib.contextmanager
def rembg_home(weights_dir: str | None):
    """rembg finds (and downloads) weights only under the U2NET_HOME variable: while it looks,
    point that at the setting (BgConfig.weights_dir, itself read from U2NET_HOME); None leaves
    rembg's own choice."""
    if weights_dir is None or os.environ.get("U2NET_HOME") == weights_dir:
        yield
        return
    previous = os.environ.get("U2NET_HOME")
    os.environ["U2NET_HOME"] = weights_dir
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("U2NET_HOME", None)
        else:
            os.environ["U2NET_HOME"] = previous


def weights_home(weights_dir: str | None) -> str:
    """Where rembg looks, in words, for messages."""
    return weights_dir or "rembg's default home ($REMBG_HOME, else $XDG_DATA_HOME/rembg, else ~/.rembg)"


def weights_file(name: str, weights_dir: str | None = None) -> str | None:
    """Where rembg would load `name` from, or None if it is not on disk."""
    with rembg_home(weights_dir):
        return session_class(name).resolve_existing(f"{name}.onnx")


def fetched_weights_file(name: str, weights_dir: str | None = None) -> str:
    """`name`'s weights, downloaded by rembg first when they are not on disk (BG_ALLOW_DOWNLOAD)."""
    with rembg_home(weights_dir):
        return weights_file(name) or str(session_class(name).download_models())


def _names(config: BgConfig) -> list[str]:
    return [config.models.person, config.models.cloth, config.models.product]


def download(config: BgConfig) -> None:
    from rembg import new_session

    for name in _names(config):
        # Creating the session makes rembg fetch the file with pooch and check its md5.
        with rembg_home(config.weights_dir):
            new_session(name, providers=["CPUExecutionProvider"])
        print(f"{name}: installed")


def copy_from(config: BgConfig, source: str) -> None:
    for name in _names(config):
        src = os.path.join(source, f"{name}.onnx")
        if not os.path.isfile(src):
            sys.exit(f"{src} is missing")
        with rembg_home(config.weights_dir):
            target_dir = session_class(name).model_dir()
        os.makedirs(target_dir, exist_ok=True)
        shutil.copyfile(src, os.path.join(target_dir, f"{name}.onnx"))
        print(f"{name}: copied from {src} (sha256 {file_sha256(src)})")


def check(config: BgConfig) -> int:
    missing = 0
    for name in _names(config):
        path = weights_file(name, config.weights_dir)
        print(f"{name}: {path or 'MISSING'}")
        missing += path is None
    return 1 if missing else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("download")
    copy = sub.add_parser("copy")
    copy.add_argument("--from", dest="source", required=True)
    sub.add_parser("check")
    args = parser.parse_args(argv)
    config = exit_on_bad_settings(BgConfig.from_env)
    if args.command == "download":
        download(config)
    elif args.command == "copy":
        copy_from(config, args.source)
    return check(config)


if __name__ == "__main__":
    sys.exit(main())
