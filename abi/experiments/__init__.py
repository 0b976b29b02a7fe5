"""One module per claim: the algorithm of each notebook, importable and testable.

Importing this package imports every claim module, which registers its profiles and its
derived-section function with the verifier. A claim module is any module here that defines
``CLAIM``; shared helpers (``common``, ``reporting``) define none.
"""

import importlib
import pkgutil

CLAIM_MODULES: dict[str, object] = {}

for _info in pkgutil.iter_modules(__path__):
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    if hasattr(_module, "CLAIM"):
        CLAIM_MODULES[_module.CLAIM] = _module
