"""``python -m proxy``: the idemproxy command line."""

from proxy.cli import main

if __name__ == "__main__":
    main()
