"""``python -m bayeslmm``: the command line of :mod:`bayeslmm.cli`."""

from bayeslmm.io.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
