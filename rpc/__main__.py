"""``python -m rpc``: the same command line as the ``rpc`` script."""

from .cli.main import main

if __name__ == "__main__":
    main()
