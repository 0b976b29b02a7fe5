"""Which claim notebooks may run side by side: the build's lanes.

Claim notebooks share the module store (``abi.module_store``): claim 3 calibrates claim 1's anchor
and candidates. Two notebooks that train the same module at the same time would both train it (the
store's atomic write keeps one copy; the other's minutes are lost), so a notebook whose import graph
holds another claim's experiment module runs after that claim, in its lane. Lanes share nothing else
and run at once, one process each. The rule reads the import graph, so a claim that starts reusing
another's code joins its lane without anyone editing a list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence


def experiment_module(notebook: str) -> str:
    """``03_objective_ablation`` -> ``abi/experiments/objective_ablation.py``: the code the notebook runs."""
    return f"abi/experiments/{notebook.split('_', 1)[1]}.py"


def prerequisites(name: str, earlier: Sequence[str], dependencies: Iterable[str]) -> list[str]:
    """The notebooks among ``earlier`` whose experiment module ``name`` imports (``dependencies`` are
    repository-relative paths of its import graph)."""
    imported = set(dependencies)
    return [other for other in earlier if experiment_module(other) in imported]


def lanes(names: Sequence[str], dependencies: Callable[[str], Iterable[str]]) -> list[list[str]]:
    """Group claim notebooks into lanes, keeping their order: a notebook opens a lane of its own unless it
    imports earlier claims' code; then it joins their lane (lanes it links are merged, in order)."""
    result: list[list[str]] = []
    for position, name in enumerate(names):
        needed = set(prerequisites(name, names[:position], dependencies(name)))
        joined = [lane for lane in result if needed & set(lane)]
        merged = sorted((n for lane in joined for n in lane), key=names.index)
        result = [lane for lane in result if lane not in joined]
        result.append([*merged, name])
    return sorted(result, key=lambda lane: names.index(lane[0]))
