"""Files for people: written whole or not at all."""

import json

import pytest

from beeray import artifacts


def test_a_failed_write_leaves_the_old_file_and_no_debris(tmp_path):
    path = tmp_path / "metrics.json"
    artifacts.write_json(path, {"recall@20": 0.5})
    with pytest.raises(RuntimeError):
        with artifacts.atomic_path(path) as tmp:
            tmp.write_text('{"recall@20": 0.')  # half a file ...
            raise RuntimeError("crash")  # ... then the process dies
    assert json.loads(path.read_text()) == {"recall@20": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        artifacts.write_json(path, {"x": Unserialisable()})
    assert json.loads(path.read_text()) == {"recall@20": 0.5}


def test_replace_dir_swaps_only_a_complete_copy(tmp_path, monkeypatch):
    src, dst = tmp_path / "checkpoint", tmp_path / "model"
    src.mkdir()
    (src / "weights").write_text("new")
    dst.mkdir()
    (dst / "weights").write_text("old")

    def broken_copy(a, b):
        (tmp_path / "half").mkdir()
        raise OSError("disk full")

    monkeypatch.setattr(artifacts.shutil, "copytree", broken_copy)
    with pytest.raises(OSError):
        artifacts.replace_dir(src, dst)
    assert (dst / "weights").read_text() == "old"
    monkeypatch.undo()
    artifacts.replace_dir(src, dst)
    assert (dst / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "half") == ["checkpoint", "model"]
