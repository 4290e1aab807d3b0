"""`python -m sharemesh.gateway --config FILE`: this host's gateway manager."""

from sharemesh.runtime import process

from ._app import add_arguments, build, release


def main() -> None:
    process.main(
        "gateway",
        __doc__,
        build,
        lambda config, args: config.gateway.listen,
        add_arguments,
        release,
    )


if __name__ == "__main__":
    main()
