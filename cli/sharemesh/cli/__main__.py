"""The `sharemesh` command: noun-verb subcommands, like `openstack share` and `gcloud`."""

from __future__ import annotations

import argparse
import sys

from . import _networks, _shares, _snapshots, _up


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="sharemesh", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    _up.add_parser(commands)
    common = _shares.common_options()
    share = _shares.add_parsers(commands, common)
    _snapshots.add_parsers(commands, share, common)
    _networks.add_parsers(commands, common)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
