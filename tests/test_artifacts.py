"""Files for people: written whole or not at all."""

import json

import pytest

from beeray import artifacts, files
from beeray.checkpoint import prepare_run_dir
from beeray.errors import BeerayError


def test_a_failed_write_leaves_the_old_file_and_no_debris(tmp_path):
    path = tmp_path / "metrics.json"
    files.write_json(path, {"recall@20": 0.5})
    with pytest.raises(RuntimeError):
        with files.atomic_path(path) as tmp:
            tmp.write_text('{"recall@20": 0.')  # half a file ...
            raise RuntimeError("crash")  # ... then the process dies
    assert json.loads(path.read_text()) == {"recall@20": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        files.write_json(path, {"x": Unserialisable()})
    assert json.loads(path.read_text()) == {"recall@20": 0.5}


def test_replace_dir_swaps_only_a_complete_copy(tmp_path, monkeypatch):
    src, dst = tmp_path / "checkpoint", tmp_path / "model"
    src.mkdir()
    (src / "weights").write_text("new")
    dst.mkdir()
    (dst / "weights").write_text("old")

    def broken_copy(a, b, **kw):
        (tmp_path / "half").mkdir()
        raise OSError("disk full")

    monkeypatch.setattr(files.shutil, "copytree", broken_copy)
    with pytest.raises(OSError):
        files.replace_dir(src, dst)
    assert (dst / "weights").read_text() == "old"
    monkeypatch.undo()
    files.replace_dir(src, dst)
    assert (dst / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "half") == ["checkpoint", "model"]


def test_staged_dir_publishes_on_success_only_and_keeps_a_concurrent_finished_copy(tmp_path):
    dst = tmp_path / "cache"
    with pytest.raises(RuntimeError):
        with files.staged_dir(dst) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []  # neither the destination nor debris
    with files.staged_dir(dst) as tmp:
        (tmp / "a").write_text("first")
    # A second writer whose destination a finished copy already holds leaves that copy as it is...
    with files.staged_dir(dst, keep_existing=(dst / "a").is_file) as tmp:
        (tmp / "a").write_text("second")
    assert (dst / "a").read_text() == "first"
    # ... while an unaccepted old folder is replaced.
    with files.staged_dir(dst, keep_existing=lambda: False) as tmp:
        (tmp / "a").write_text("third")
    assert (dst / "a").read_text() == "third" and [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_a_url_is_refused_not_turned_into_a_local_folder(tmp_path, monkeypatch, capsys):
    """`--out s3://bucket/run` used to write ./s3:/bucket/run without a word. Now a URL is either object
    storage that the command supports (tests/test_object_storage.py) or refused in one line, exit 2."""
    from beeray.cli import main

    monkeypatch.chdir(tmp_path)
    for argv, says in ((["compare", "--data", "s3://bucket/data"], "a URL; here beeray reads and writes local"),
                       (["evaluate", "--data", "gs://bucket/data"], "a URL; here beeray reads and writes local"),
                       (["train", "--data", "data/shop", "--out", "s3:/bucket/run"], "a URL; here"),  # one slash
                       (["embed", "--items", "x.csv", "--out", "nosuch://bucket/emb"], "not a storage URL pyarrow"),
                       (["prepare", "synthetic", "--out", "nosuch://bucket/data"], "not a storage URL pyarrow")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv
        assert says in capsys.readouterr().err.strip().splitlines()[-1], argv  # argparse: usage, then one line
    with pytest.raises(BeerayError, match="a URL"):  # a config file's out: reaches the run folder's check
        prepare_run_dir("s3:/bucket/run", state="ray/train", config_file="config.json", config={},
                        resume=False, conflicts=lambda saved: [], what="training run")
    assert not any(tmp_path.iterdir())  # nothing written
