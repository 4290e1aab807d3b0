"""`python -m sharemesh.api --config FILE`: the public API (stateless; run N of them)."""

from sharemesh.runtime import process

from ._app import build


def main() -> None:
    process.main("api", __doc__, build, lambda config, args: config.api.listen)


if __name__ == "__main__":
    main()
