"""A GGUF shipped as raw chunks in several packages is joined once, checked by sha256, refused when wrong."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from abi.backbones.chunks import join_chunks
from abi.backbones.registry import REGISTRY, BackboneUnavailableError, GGUFChunk

PARTS = [b"GGUF first slice ", b"second slice ", b"last"]


@pytest.fixture
def packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[GGUFChunk, ...]:
    """Three installed fake data packages, each holding one slice under data/."""
    site = tmp_path / "site"
    for number, data in enumerate(PARTS, start=1):
        folder = site / f"fake_chunk_part{number}" / "data"
        folder.mkdir(parents=True)
        (folder.parent / "__init__.py").write_text("")
        (folder / f"part{number:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    return tuple(
        GGUFChunk(f"fake-chunk-part{n}==1.0", f"fake_chunk_part{n}", f"data/part{n:02d}.bin") for n in (1, 2, 3)
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_chunks_are_joined_in_order_once(packages, tmp_path: Path) -> None:
    target = tmp_path / "cache" / "model.gguf"
    assert join_chunks(packages, _sha(b"".join(PARTS)), target).read_bytes() == b"".join(PARTS)
    stamp = target.stat().st_mtime_ns
    join_chunks(packages, _sha(b"".join(PARTS)), target)
    assert target.stat().st_mtime_ns == stamp, "a joined file with the right hash is reused, not rewritten"


def test_a_wrong_hash_is_refused_naming_the_packages_and_leaves_nothing(packages, tmp_path: Path) -> None:
    target = tmp_path / "cache" / "model.gguf"
    expected = _sha(b"another model")
    with pytest.raises(BackboneUnavailableError, match=expected) as error:
        join_chunks(packages, expected, target)
    assert "fake-chunk-part1==1.0" in str(error.value) and "--force-reinstall" in str(error.value)
    assert list(target.parent.iterdir()) in ([], [target.with_name(target.name + ".lock")])


def test_a_missing_package_is_named_before_anything_is_written(packages, tmp_path: Path) -> None:
    missing = (*packages, GGUFChunk("fake-chunk-part4==1.0", "fake_chunk_part4", "data/part04.bin"))
    target = tmp_path / "cache" / "model.gguf"
    with pytest.raises(BackboneUnavailableError, match="fake-chunk-part4==1.0"):
        join_chunks(missing, _sha(b"".join(PARTS)), target)
    assert not target.parent.exists()


def test_the_qwen_coder_spec_lists_its_six_chunks_in_order() -> None:
    spec = REGISTRY["qwen2.5-coder-0.5b"]
    assert [chunk.path for chunk in spec.chunks] == [f"data/part{i:02d}.bin" for i in range(1, 7)]
    assert all(chunk.package.endswith("==0.9.0") for chunk in spec.chunks)
    assert len(spec.gguf_sha256) == 64 and spec.family == "qwen2"
