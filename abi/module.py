"""The ABI module: a small network that reads tap hidden states and returns a correction.

Read top to bottom::

    taps [.., K, d] --(per-tap LayerNorm)--> concat [.., K*d] --proj_in--> LN --> h
    h = h + alpha * domain(h)            domain = Linear(b, 4b) -> GELU -> Linear(4b, b) -> LN
    correction = proj_out(h)             [.., d], added to the backbone's final hidden state

``proj_in`` and ``proj_out`` are the interface to a backbone (recalibrated when a module moves
to another model); ``domain`` and ``alpha`` are the domain knowledge. Bias-free projections and
the two LayerNorms follow the release, so the paper configuration (6 taps, d=1024, bottleneck 4096)
has exactly 163,627,009 parameters.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ModuleConfig:
    """Shape of an ABI module; plain values so notebooks can override them."""

    d_model: int
    n_taps: int
    bottleneck: int
    expansion: int = 4
    per_tap_norm: bool = True

    def __post_init__(self) -> None:
        for field_name in ("d_model", "n_taps", "bottleneck", "expansion"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModuleConfig.{field_name} must be a positive integer, got {value!r}.")

    def to_dict(self) -> dict:
        return asdict(self)


class DomainMLP(nn.Module):
    """The domain network: a skip-free two-layer MLP with an output LayerNorm (gated by alpha)."""

    def __init__(self, width: int, expansion: int):
        super().__init__()
        self.up = nn.Linear(width, width * expansion)
        self.down = nn.Linear(width * expansion, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, h: Tensor) -> Tensor:
        return self.norm(self.down(nn.functional.gelu(self.up(h))))


class ABIModule(nn.Module):
    """Taps in, correction out. Holds no reference to a backbone, so it can move between models."""

    def __init__(self, config: ModuleConfig, seed: int = 0):
        super().__init__()
        self.config = config
        self.seed = seed
        d, k, b = config.d_model, config.n_taps, config.bottleneck
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.tap_norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(k)) if config.per_tap_norm else None
            self.proj_in = nn.Linear(k * d, b, bias=False)
            self.abi_norm = nn.LayerNorm(b)
            self.domain = DomainMLP(b, config.expansion)
            self.alpha = nn.Parameter(torch.ones(1))
            self.proj_out = nn.Linear(b, d, bias=False)
            nn.init.xavier_uniform_(self.proj_in.weight)
            nn.init.xavier_uniform_(self.proj_out.weight)

    def bottleneck(self, taps: Tensor) -> Tensor:
        """Module-space representation h (before the domain MLP); pooled for Procrustes."""
        if taps.shape[-2:] != (self.config.n_taps, self.config.d_model):
            raise ValueError(
                f"expected taps of shape [..., {self.config.n_taps}, {self.config.d_model}], got {list(taps.shape)}; "
                "the module was built for another tap count or model width."
            )
        if self.tap_norms is not None:
            taps = torch.stack([norm(taps[..., i, :]) for i, norm in enumerate(self.tap_norms)], dim=-2)
        return self.abi_norm(self.proj_in(taps.flatten(-2)))

    def forward(self, taps: Tensor) -> Tensor:
        """The correction added to the final hidden state, shape ``taps.shape[:-2] + (d_model,)``."""
        h = self.bottleneck(taps)
        h = h + self.alpha * self.domain(h)
        return self.proj_out(h)

    def interface_parameters(self) -> list[nn.Parameter]:
        """Parameters that tie the module to one backbone (recalibrated in a migration)."""
        return [*self.proj_in.parameters(), *self.proj_out.parameters()]

    def domain_parameters(self) -> list[nn.Parameter]:
        """Parameters that carry the domain (frozen in a migration)."""
        return [*self.domain.parameters(), self.alpha]


def count_parameters(module: nn.Module) -> int:
    """Number of parameters, the figure the release reports (163,627,009 for its candidate)."""
    return sum(p.numel() for p in module.parameters())


def parameter_hash(parameters: list[nn.Parameter] | nn.Module) -> str:
    """SHA-256 over parameter values; asserts that frozen parts really stayed frozen."""
    params = list(parameters.parameters()) if isinstance(parameters, nn.Module) else parameters
    digest = hashlib.sha256()
    for p in params:
        digest.update(p.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()
