"""Install the service's model weights where rembg looks for them (U2NET_HOME).

    python -m bgremoval.weights download          # via rembg's own download code (checksums verified)
    python -m bgremoval.weights copy --from DIR   # air-gapped: take DIR/<model>.onnx instead
    python -m bgremoval.weights check             # say what is installed; exit 1 if something is missing
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

from bgremoval.config import BgConfig


def _names(config: BgConfig) -> list[str]:
    return [config.models.person, config.models.cloth, config.models.product]


def download(config: BgConfig) -> None:
    from rembg import new_session

    for name in _names(config):
        # Creating the session makes rembg fetch the file with pooch and check its md5.
        new_session(name, providers=["CPUExecutionProvider"])
        print(f"{name}: installed")


def copy_from(config: BgConfig, source: str) -> None:
    from bgremoval.models import file_sha256, session_class

    for name in _names(config):
        src = os.path.join(source, f"{name}.onnx")
        if not os.path.isfile(src):
            sys.exit(f"{src} is missing")
        target_dir = session_class(name).model_dir()
        os.makedirs(target_dir, exist_ok=True)
        shutil.copyfile(src, os.path.join(target_dir, f"{name}.onnx"))
        print(f"{name}: copied from {src} (sha256 {file_sha256(src)})")


def check(config: BgConfig) -> int:
    from bgremoval.models import weights_file

    missing = 0
    for name in _names(config):
        path = weights_file(name)
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
    config = BgConfig.from_env()
    if args.command == "download":
        download(config)
    elif args.command == "copy":
        copy_from(config, args.source)
    return check(config)


if __name__ == "__main__":
    sys.exit(main())
