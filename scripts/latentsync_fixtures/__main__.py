"""`python -m scripts.latentsync_fixtures --upstream DIR [--only NAME ...]`: rewrite tests/fixtures/latentsync.

DIR is a git checkout of bytedance/LatentSync at common.COMMIT. Each module below runs the upstream code
on seeded random weights and writes its fixtures; the tests then compare synclip without upstream code.
"""

from __future__ import annotations

import argparse
import importlib

from scripts.latentsync_fixtures.common import COMMIT, upstream_root

MODULES = ("audio", "face", "sampler", "sync_conf", "s3fd", "fidelity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help=f"git checkout of bytedance/LatentSync at {COMMIT}")
    parser.add_argument("--only", nargs="*", choices=MODULES, default=list(MODULES))
    args = parser.parse_args()
    root = upstream_root(args.upstream)
    for name in args.only:
        importlib.import_module(f"scripts.latentsync_fixtures.{name}").generate(root)


if __name__ == "__main__":
    main()
