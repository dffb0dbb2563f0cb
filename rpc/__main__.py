"""``python -m rpc``: the same command line as the ``rpc`` script."""

from .cli import main

if __name__ == "__main__":
    main()
