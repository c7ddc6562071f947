"""``python -m workbench.compare``: run the comparison, or ``--report`` tabulate a records folder."""

from workbench.compare.cli import main

if __name__ == "__main__":
    main()
