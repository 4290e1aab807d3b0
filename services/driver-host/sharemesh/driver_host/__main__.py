"""`python -m sharemesh.driver_host --config FILE --backend NAME`: one backend's driver."""

from sharemesh.runtime import process

from ._app import add_arguments, build, release


def main() -> None:
    process.main(
        "driver-host",
        __doc__,
        build,
        lambda config, args: config.backend(args.backend).listen,
        add_arguments,
        release,
    )


if __name__ == "__main__":
    main()
