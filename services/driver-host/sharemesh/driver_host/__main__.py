"""`python -m sharemesh.driver_host --config FILE --backend NAME`: one backend's driver."""

from sharemesh.runtime import process

from ._app import add_arguments, build


def main() -> None:
    process.main(
        "driver-host",
        __doc__,
        build,
        lambda config, args: config.backend(args.backend).listen,
        add_arguments,
    )


if __name__ == "__main__":
    main()
