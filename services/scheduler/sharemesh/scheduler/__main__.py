"""`python -m sharemesh.scheduler --config FILE`: placement, active/standby (run two or more)."""

from sharemesh.runtime import process

from ._app import build


def main() -> None:
    process.main("scheduler", __doc__, build, lambda config, args: config.scheduler.listen)


if __name__ == "__main__":
    main()
