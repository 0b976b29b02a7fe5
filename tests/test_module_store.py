"""The trained-module store: a stage runs once per identity, start state and code; a damaged entry is
retrained, never half-loaded."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from abi import module_store
from abi.import_graph import RepoIndex
from abi.paths import REPO_ROOT


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ABI_CACHE_DIR", str(tmp_path))
    return tmp_path / "modules"


def _start(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(4, 3)


def _stage(module: nn.Module, calls: list[int]):
    """A 'training stage': moves every weight and counts its calls."""

    def train() -> dict:
        calls.append(1)
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.add_(0.5)
        return {"losses": [1.0, 0.25], "best_step": 1}

    return train


def test_a_stage_runs_once_then_is_read_back(store: Path) -> None:
    calls: list[int] = []
    first = _start()
    log = module_store.trained("domain", "demo", first, {"data": "a"}, "code", _stage(first, calls))
    second = _start()
    again = module_store.trained("domain", "demo", second, {"data": "a"}, "code", _stage(second, calls))
    assert calls == [1]
    assert (log["from_cache"], again["from_cache"]) == (False, True)
    assert {k: v for k, v in again.items() if k not in ("from_cache", "stage_s")} == {
        "losses": [1.0, 0.25],
        "best_step": 1,
    }
    assert again["stage_s"] == log["stage_s"] >= 0, "the training time is kept with the module"
    assert module_store.state_digest(first) == module_store.state_digest(second)
    # The entry is tensors and a JSON string: readable without unpickling arbitrary objects.
    (entry,) = store.glob("domain-demo-*.pt")
    assert set(torch.load(entry, weights_only=True)) == {"state_dict", "log"}


@pytest.mark.parametrize(
    "change",
    [
        {"identity": {"data": "b"}},  # other data or hyper-parameters
        {"seed": 1},  # another start (seed, shape, or an earlier stage's weights)
        {"code": "edited"},  # the stage's code changed
    ],
)
def test_any_change_in_what_determines_a_stage_trains_it_again(store: Path, change: dict) -> None:
    calls: list[int] = []
    first = _start()
    module_store.trained("domain", "demo", first, {"data": "a"}, "code", _stage(first, calls))
    other = _start(change.get("seed", 0))
    module_store.trained(
        "domain", "demo", other, change.get("identity", {"data": "a"}), change.get("code", "code"), _stage(other, calls)
    )
    assert calls == [1, 1]


def test_a_damaged_entry_is_trained_again_and_replaced(store: Path, capsys: pytest.CaptureFixture) -> None:
    calls: list[int] = []
    first = _start()
    module_store.trained("calibration", "demo", first, {}, "code", _stage(first, calls))
    (entry,) = store.glob("calibration-demo-*.pt")
    entry.write_bytes(entry.read_bytes()[:50])  # a truncated write from a killed run
    second = _start()
    log = module_store.trained("calibration", "demo", second, {}, "code", _stage(second, calls))
    assert calls == [1, 1] and log["from_cache"] is False
    assert "unreadable" in capsys.readouterr().out
    assert module_store.state_digest(first) == module_store.state_digest(second)
    third = _start()
    assert module_store.trained("calibration", "demo", third, {}, "code", _stage(third, calls))["from_cache"]
    assert not list(store.glob(".*.tmp")), "no temporary file is left behind"


def test_a_failed_stage_leaves_no_entry(store: Path) -> None:
    def fail() -> dict:
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError):
        module_store.trained("domain", "demo", _start(), {}, "code", fail)
    assert not store.exists() or not list(store.iterdir())


def test_the_code_digest_follows_imports_not_the_whole_library() -> None:
    stages = module_store.code_digest("abi.experiments.module_stages")
    assert stages == module_store.code_digest("abi.experiments.module_stages")
    assert stages != module_store.code_digest("abi.module_store")
    # Claim 1's orchestration, its reports and figures are outside the stages' import graph.
    index = RepoIndex(REPO_ROOT)
    graph = index.closure([ast.parse("import abi.experiments.module_stages")])
    assert "abi.train" in graph and "abi.module_store" in graph
    assert not {"abi.experiments.core_nib", "abi.reports.core_nib", "abi.plotting.core_nib"} & graph
