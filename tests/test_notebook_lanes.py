"""The build's lanes: claims that share trained modules run one after the other, the rest side by side,
and a failed lane is reported without stopping the others."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from abi import pipeline
from abi.import_graph import RepoIndex
from abi.notebook_lanes import lanes, prerequisites
from abi.paths import REPO_ROOT

GRAPH = {
    "01_core": ["abi/experiments/core.py", "abi/module_store.py"],
    "02_cross": ["abi/experiments/cross.py", "abi/module_store.py"],
    "03_ablation": ["abi/experiments/ablation.py", "abi/experiments/core.py"],
    "04_update": ["abi/experiments/update.py"],
}


def test_a_claim_importing_another_claims_code_joins_its_lane():
    assert prerequisites("03_ablation", ["01_core", "02_cross"], GRAPH["03_ablation"]) == ["01_core"]
    assert lanes(list(GRAPH), GRAPH.__getitem__) == [["01_core", "03_ablation"], ["02_cross"], ["04_update"]]


def test_a_claim_reusing_two_lanes_merges_them_in_order():
    graph = {**GRAPH, "04_update": ["abi/experiments/cross.py", "abi/experiments/ablation.py"]}
    assert lanes(list(graph), graph.__getitem__) == [["01_core", "02_cross", "03_ablation", "04_update"]]


def test_shared_library_code_alone_does_not_serialise_claims():
    graph = {name: ["abi/module_store.py", f"abi/experiments/{name.split('_', 1)[1]}.py"] for name in GRAPH}
    assert lanes(list(graph), graph.__getitem__) == [[name] for name in graph]


def test_the_papers_lanes_put_claim_3_after_claim_1():
    claims = [name for name in pipeline.notebook_names() if not pipeline.is_report(name)]
    index = RepoIndex(REPO_ROOT)
    grouped = lanes(claims, lambda name: index.dependencies(pipeline.NOTEBOOK_DIR / f"{name}.ipynb"))
    assert grouped == [["01_core_nib", "03_objective_ablation"], ["02_cross_architecture"], ["04_backbone_invariance"]]


# A stand-in for `python -m abi.cli run-notebooks ... --notebooks A B`: it stamps each notebook of its lane
# in the scratch layout, and a notebook named "*_bad" fails its lane.
FAKE_CLI = """#!{python}
import json, sys
from pathlib import Path
args = sys.argv[1:]
scratch = Path(args[args.index("--scratch") + 1])
names = args[args.index("--notebooks") + 1:]
assert args[args.index("--threads") + 1] == "1" and args[args.index("--jobs") + 1] == "1"
for name in names:
    print("running", name, flush=True)
    if name.endswith("_bad"):
        print("boom in", name, flush=True)
        sys.exit(3)
    stamp = scratch / "src" / "book" / "executed" / f".{{name}}.inputs.json"
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({{"inputs": "x", "wall_s": 2.5}}))
"""


@pytest.fixture
def fake_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "fake-python"
    script.write_text(FAKE_CLI.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(script))
    return tmp_path / "scratch"


def test_lanes_run_as_processes_and_report_what_they_executed(fake_cli: Path, capsys: pytest.CaptureFixture):
    layout = pipeline.BuildLayout.for_profile("smoke", fake_cli)
    records = pipeline._run_lanes(layout, False, [["01_a", "03_c"], ["02_b"]], jobs=2, threads=1)
    assert records == [
        {"notebook": "01_a", "executed": True, "wall_s": 2.5},
        {"notebook": "03_c", "executed": True, "wall_s": 2.5},
        {"notebook": "02_b", "executed": True, "wall_s": 2.5},
    ]
    out = capsys.readouterr().out
    assert "lane 1 | running 01_a" in out and "lane 2 | running 02_b" in out


def test_a_failed_lane_names_itself_and_the_others_finish(fake_cli: Path):
    layout = pipeline.BuildLayout.for_profile("smoke", fake_cli)
    expected = r"(?s)lane 01_bad -> 03_c exited with 3:.*boom in 01_bad.*report notebooks were not run"
    with pytest.raises(SystemExit, match=expected):
        pipeline._run_lanes(layout, False, [["01_bad", "03_c"], ["02_b"]], jobs=2, threads=1)
    stamps = sorted(p.name for p in layout.executed_dir.glob(".*.inputs.json"))
    assert stamps == [".02_b.inputs.json"]


def test_bad_jobs_or_threads_are_refused_before_anything_runs(tmp_path: Path):
    layout = pipeline.BuildLayout.for_profile("smoke", tmp_path)
    with pytest.raises(SystemExit, match="--jobs must be at least 1"):
        pipeline.run_notebooks(layout, jobs=0)
    assert not layout.executed_dir.exists()


def test_kernels_get_the_thread_count():
    assert pipeline._kernel_env(1)["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in pipeline._kernel_env(0)
    assert pipeline._kernel_env(0)["ABI_TORCH_THREADS"] == "0"  # the kernel's start_run leaves torch's default
    assert json.dumps(pipeline._kernel_env())  # plain strings only


def test_current_claims_are_skipped_without_a_lane(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Only the claims that will run are put in lanes; one pending claim runs in this process."""
    ran: list[tuple[str, ...]] = []
    monkeypatch.setattr(pipeline, "is_current", lambda layout, name: name != "02_cross_architecture")
    monkeypatch.setattr(pipeline, "_run_lanes", lambda *args: pytest.fail("no lanes for one pending claim"))

    def in_order(layout, force, names, threads):
        ran.append(names)
        return [{"notebook": name, "executed": True, "wall_s": 1.0} for name in names]

    monkeypatch.setattr(pipeline, "_run_in_order", in_order)
    layout = pipeline.BuildLayout.for_profile("smoke", tmp_path)
    records = pipeline.run_notebooks(layout, jobs=2)
    claims = [name for name in pipeline.notebook_names() if not pipeline.is_report(name)]
    assert ran[0] == ("02_cross_architecture",)
    assert [r["notebook"] for r in records[: len(claims)]] == claims
    assert [r["executed"] for r in records[: len(claims)]] == [name == "02_cross_architecture" for name in claims]
