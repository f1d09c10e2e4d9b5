import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A small random BERT sentence Transformer saved once per session (dropout 0.1)."""
    from tests.helpers import tiny_model

    root = tmp_path_factory.mktemp("tiny")
    tiny_model(root)
    return root / "st"


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray per test module: Ray start-up costs seconds, so modules share it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """The embedded synthetic shop, prepared (item split)."""
    from beeray.data.prepare import prepare_synthetic

    out = tmp_path_factory.mktemp("shop") / "prepared"
    prepare_synthetic(out)
    return out
