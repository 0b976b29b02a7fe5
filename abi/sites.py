"""Where an ABI correction is added to a frozen backbone: the names, without importing any model code.

* ``"after_final_norm"`` (the release's, the default): to the state the LM head reads, after the final norm;
* ``"before_final_norm"``: to the last block's output, before the final norm (this project's first site,
  kept as an arm of claim 1).

:mod:`abi.backbones.interface` implements them; result files record the site in ``parameters``.
"""

from __future__ import annotations

CORRECTION_SITES = ("after_final_norm", "before_final_norm")
DEFAULT_CORRECTION_SITE = "after_final_norm"


def check_correction_site(site: str) -> str:
    """Refuse an unknown correction site, naming the valid ones."""
    if site not in CORRECTION_SITES:
        raise ValueError(
            f"unknown correction site {site!r}; valid sites: {', '.join(CORRECTION_SITES)} "
            f"(the release's is {DEFAULT_CORRECTION_SITE!r})."
        )
    return site
