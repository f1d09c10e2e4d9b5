"""cluster.yaml against Ray's own launcher schema, offline; experiments/*.yaml against TrainConfig."""

from __future__ import annotations

import copy
import socket
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster.yaml"
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
# The recipes this file owns; they must say where their data comes from and how to run them.
RECIPES = ["goodbooks", "ml20m", "amazon-books", "goodlens", "ml-small-cpu"]


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: validation must not reach AWS (or anything else)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access during config validation: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def load_cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def validate(config: dict) -> dict:
    """What `ray up` does to a config before it talks to the cloud, minus the cloud.

    `ray up` -> _bootstrap_config: prepare_config (merge the provider's defaults.yaml, fold
    setup_commands into head/worker_setup_commands, check the docker section, fill per-type
    min/max workers), then the provider's resource auto-detection (AWS API: skipped; our node types
    state their resources), then validate_config (the JSON schema ray-schema.json plus cross-field
    checks), then the provider's bootstrap (AWS API: skipped).
    """
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_validation(no_network):
    prepared = validate(load_cluster())
    assert prepared["provider"]["type"] == "aws"
    # The merged defaults filled what we left out, as `ray up` would.
    assert "upscaling_speed" in prepared and "head_setup_commands" in prepared


def test_image_matches_installed_ray():
    import ray

    image = load_cluster()["docker"]["image"]
    # Nodes and the submitting machine must run the same Ray; GPU images for the CUDA stack.
    assert image == f"rayproject/ray:{ray.__version__}-py311-gpu"


def test_dashboard_binds_to_loopback_only():
    cfg = load_cluster()
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in yaml.safe_dump(cfg)  # no other command opens it to every interface


def test_every_node_installs_beeray_from_the_mounted_repo():
    cfg = load_cluster()
    prepared = validate(cfg)
    assert cfg["file_mounts"]["~/beeray"] == "."
    for key in ("head_setup_commands", "worker_setup_commands"):  # setup_commands folded into both
        cmds = " ".join(prepared[key])
        assert "pip install -e ~/beeray" in cmds
        # The CPU-only torch wheel would leave the GPUs idle.
        assert "whl/cpu" not in cmds and "+cpu" not in cmds


def test_gpu_workers_and_a_head_that_does_not_train():
    cfg = load_cluster()
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("CPU", 0) == 0 and head["resources"].get("GPU", 0) == 0
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert workers and all(t["resources"].get("GPU", 0) >= 1 for t in workers)
    assert all(t["min_workers"] == 0 and 1 <= t["max_workers"] <= cfg["max_workers"] for t in workers)


def _break(cfg: dict, how: str) -> dict:
    cfg = copy.deepcopy(cfg)
    worker = next(n for n in cfg["available_node_types"] if n != cfg["head_node_type"])
    if how == "unknown top-level key":
        cfg["dashboard_host"] = "0.0.0.0"
    elif how == "node type without resources":
        del cfg["available_node_types"][worker]["resources"]
    elif how == "fractional resources":
        cfg["available_node_types"][worker]["resources"]["GPU"] = 0.5
    elif how == "head type not defined":
        cfg["head_node_type"] = "ray.head.missing"
    elif how == "min_workers above max_workers":
        cfg["available_node_types"][worker]["min_workers"] = cfg["max_workers"] + 1
    elif how == "setup command not a string":
        cfg["setup_commands"] = [["pip", "install"]]
    elif how == "unknown docker key":
        cfg["docker"]["gpus"] = "all"
    return cfg


@pytest.mark.parametrize("how", ["unknown top-level key", "node type without resources", "fractional resources",
                                 "head type not defined", "min_workers above max_workers",
                                 "setup command not a string", "unknown docker key"])
def test_broken_config_fails_validation(how, no_network):
    import jsonschema

    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate(_break(load_cluster(), how))


# ---- experiments ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [p for p in EXPERIMENTS if "search" not in (yaml.safe_load(p.read_text()) or {})],
                         ids=lambda p: p.name)
def test_experiment_is_a_valid_train_config(path):
    """Every training config in experiments/ (tuning configs with `search:` aside) still parses."""
    from beeray.config import train_config

    train_config(str(path))


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_documents_its_data_and_commands(name):
    from beeray.config import train_config

    path = ROOT / "experiments" / f"{name}.yaml"
    cfg = train_config(str(path))
    assert cfg.data and cfg.out, f"{path.name}: set data and out (the local default paths)"
    header = path.read_text().split("\n\n")[0]
    assert all(s in header for s in ("beeray prepare", "beeray train", "ray job submit", "https://")), name


def test_paper_recipes_match_the_paper():
    from beeray.config import train_config

    for name in ("goodbooks", "ml20m", "amazon-books", "goodlens"):
        cfg = train_config(str(ROOT / "experiments" / f"{name}.yaml"))
        # the reference trains goodlens for 10 epochs, a single dataset for 5
        epochs = 10 if name == "goodlens" else 5
        assert (cfg.model, cfg.lr, cfg.epochs, cfg.batch_size, cfg.max_seq_length, cfg.encode_batch_size,
                cfg.seed) == ("sentence-transformers/all-mpnet-base-v2", 1e-5, epochs, 1024, 384, 200, 42), name
        assert cfg.use_gpu and cfg.num_workers == 4 and cfg.parallel == "items" and cfg.max_failures > 0, name
        assert cfg.m == (12_500 if name == "amazon-books" else 10_000), name
