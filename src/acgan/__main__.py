"""Entry point for `python -m acgan`."""

from acgan.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
