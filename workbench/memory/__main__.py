"""``python -m workbench.memory recipes/*.yaml``: the estimated peak memory and GPU-hours of recipe files."""

from workbench.memory.recipes import main

if __name__ == "__main__":
    main()
