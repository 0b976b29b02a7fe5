"""One module per claim: the algorithm of each notebook, importable and testable.

Importing this package registers every claim's derived-section function with the verifier.
"""

from abi.experiments import core_nib  # noqa: F401
