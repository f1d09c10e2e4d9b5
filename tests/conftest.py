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

    from beeray.cluster import init_ray

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


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3 API on 127.0.0.1 (benchmarks/local_s3.py: moto's server on a free loopback port, stopped
    by its process id), with the standard AWS variables pointing at it, as a user's environment would
    for any S3-compatible store; BEERAY_CACHE and BEERAY_STAGING keep fetched and staged folders in the
    test's temporary folder. Yields `bucket(name) -> "s3://name"`, which creates the bucket."""
    from benchmarks.local_s3 import local_s3

    root = tmp_path_factory.mktemp("s3-local")
    with local_s3({"BEERAY_CACHE": str(root / "cache"), "BEERAY_STAGING": str(root / "staging")}) as bucket:
        yield bucket
