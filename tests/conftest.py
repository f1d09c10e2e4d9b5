import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A small random BERT sentence Transformer saved once per session (dropout 0.1)."""
    from tests.helpers import tiny_model

    root = tmp_path_factory.mktemp("tiny")
    tiny_model(root)
    return root / "st"


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray per test module (start-up costs seconds), started the way `beeray` starts it:
    dashboard on localhost, which Ray Train's state queries and placement-group cleanup need."""
    import ray

    from beeray.trainer import init_ray

    init_ray(None, num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """The embedded synthetic shop, prepared (item split)."""
    from beeray.data.prepare import prepare_synthetic

    out = tmp_path_factory.mktemp("shop") / "prepared"
    prepare_synthetic(out)
    return out
