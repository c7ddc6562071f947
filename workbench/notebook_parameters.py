"""Papermill parameters checked against the notebook's ``parameters`` cell.

papermill only prints "Passed unknown parameter" for a name the ``parameters`` cell does not assign, and the run goes
on with the default (``-p temprature 0`` would train at 0.8). Each notebook calls :func:`check_parameters` first in the
cell after ``parameters``: papermill executes its injected cell (``# Parameters`` then one assignment per name) right
after the ``parameters`` cell, so the kernel's input history holds both, and a name injected but not assigned in
``parameters`` is an error before anything runs.
"""

from __future__ import annotations

import ast

INJECTED_HEADER = "# Parameters"  # the first line of papermill's injected cell (python translator)


def assigned_names(source: str) -> list[str]:
    """Names assigned at the top level of a cell, in order (``a = 1``, ``a: int = 1``)."""
    names = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
    return names


def unknown_parameters(parameters_source: str, injected_source: str) -> list[str]:
    """Names papermill injected that the ``parameters`` cell does not assign (``PM_*`` path names, which
    ``--inject-paths`` adds, excepted)."""
    known = set(assigned_names(parameters_source))
    return [n for n in assigned_names(injected_source) if n not in known and not n.startswith("PM_")]


def check_parameters(history: list[str] | None = None) -> None:
    """Raise ``ValueError`` naming every parameter papermill passed that this notebook does not take, with the ones
    it does. ``history``: the cells executed so far, the calling cell last (default: IPython's ``In``); outside
    papermill (no injected cell just before the calling one) nothing is checked."""
    if history is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return
        shell = get_ipython()
        if shell is None:
            return
        history = list(shell.user_ns.get("In", []))
    before = [cell for cell in history[:-1] if cell.strip()]
    if len(before) < 2 or not before[-1].lstrip().startswith(INJECTED_HEADER):
        return
    parameters, injected = before[-2], before[-1]
    unknown = unknown_parameters(parameters, injected)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown}: this notebook's parameters cell does not set them, so they "
            f"would be ignored; check the spelling (-p NAME VALUE). Its parameters: "
            f"{assigned_names(parameters)}"
        )
