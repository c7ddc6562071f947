"""Pure loss functions, one per paper equation, grouped by paper.

Every submodule exposes ``LOSSES: dict[str, callable]``; this package merges them into one registry so a
trainer picks a loss by name (``LOSSES["ppd"]``) instead of an if/elif chain.
"""

from importlib import import_module

_SUBMODULES = ("pad", "adpa", "plad", "baselines")

LOSSES: dict = {}
for _name in _SUBMODULES:
    try:
        _module = import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as error:  # a paper's module not written yet
        if error.name != f"{__name__}.{_name}":
            raise
        continue
    _clash = set(LOSSES) & set(getattr(_module, "LOSSES", {}))
    if _clash:
        raise RuntimeError(f"loss names registered twice: {sorted(_clash)}")
    LOSSES.update(getattr(_module, "LOSSES", {}))


def get_loss(name: str):
    """Look a loss up by its registry name, with an error that lists the valid names."""
    try:
        return LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; registered losses: {sorted(LOSSES)}") from None
