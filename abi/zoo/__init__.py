"""Models this project trains itself because no package ships them (see ``t5_mini``).

Each recipe is seeded and logged, and its checkpoint is committed under ``abi/zoo/checkpoints``
so the paper runs without retraining; ``make`` targets retrain and compare.
"""

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
