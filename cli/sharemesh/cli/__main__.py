"""The `sharemesh` command: noun-verb subcommands, like `openstack share` and `gcloud`."""

from __future__ import annotations

import argparse
import sys
from importlib import metadata

from . import (
    _admin,
    _base,
    _catalog,
    _certs,
    _completion,
    _errors,
    _networks,
    _operations,
    _settings,
    _shares,
    _snapshots,
    _up,
)

EPILOG = f"""\
credentials: --endpoint, else SHAREMESH_ENDPOINT, SHAREMESH_TOKEN and SHAREMESH_PROJECT,
else {_settings.config_path()} (TOML: endpoint, token, project, ca_file).

exit codes:
{_errors.EXIT_CODES}"""


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="sharemesh",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument(
        "--version", action="version", version=f"sharemesh {metadata.version('sharemesh')}"
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _up.add_parser(commands)
    common = _shares.common_options()
    share = _shares.add_parsers(commands, common)
    _snapshots.add_parsers(commands, share, common)
    _networks.add_parsers(commands, common)
    _catalog.add_parsers(commands, common)
    _operations.add_parsers(commands, common)
    _admin.add_parsers(commands, common)
    _certs.add_parsers(commands)
    _completion.add_parser(commands, top)
    return top


def main(argv: list[str] | None = None) -> int:
    _base.quiet_closed_pipe()
    args = parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
