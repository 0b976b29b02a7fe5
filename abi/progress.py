"""Progress bars: widgets in JupyterLab, text in the stored notebooks and the terminal.

``tqdm.auto`` draws an ipywidgets bar in any Jupyter kernel. Under papermill the kernel's output is
stored in the executed notebook (and streamed to the build's terminal), where a widget is only view
state that renders nowhere. The pipeline therefore starts its kernels with ``ABI_PROGRESS=text``;
everywhere else (JupyterLab, a script, a terminal) ``tqdm.auto`` chooses.
"""

from __future__ import annotations

import os

PROGRESS_ENV = "ABI_PROGRESS"

if os.environ.get(PROGRESS_ENV) == "text":
    from tqdm.std import tqdm
else:
    from tqdm.auto import tqdm

__all__ = ["PROGRESS_ENV", "tqdm"]
