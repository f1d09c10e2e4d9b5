"""k8s/rayjob.yaml against the RayJob CRD schema of KubeRay v1.7.0, offline, and against beeray.

The schema is the `v1` openAPIV3Schema of ray-operator/config/crd/bases/ray.io_rayjobs.yaml at
KubeRay tag v1.7.0 (commit 59d663aeec13760646da3db9c1cf8cfe883e30b7), status removed, stored as
k8s/rayjob-crd-v1.7.0.schema.json.gz. Kubernetes prunes fields a structural schema does not
know, silently; here an unknown field is an error, so a typo cannot pass.
"""

from __future__ import annotations

import copy
import gzip
import json
import shlex
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "k8s" / "rayjob.yaml"  # a shared volume (ReadWriteMany PVC) at /data
MANIFEST_S3 = ROOT / "k8s" / "rayjob-s3.yaml"  # object storage: no volume, credentials from a Secret
SCHEMA = ROOT / "k8s" / "rayjob-crd-v1.7.0.schema.json.gz"


def strict(schema):
    """The CRD schema as JSON Schema, with unknown fields refused (Kubernetes would prune them)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)  # an int or a string (quantities: "8", 48Gi), whatever `anyOf` allows
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def validator():
    schema = strict(json.loads(gzip.decompress(SCHEMA.read_bytes())))
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(params=[MANIFEST, MANIFEST_S3], ids=["volume", "s3"])
def manifest(request):
    return yaml.safe_load(request.param.read_text())


def errors(validator, doc) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_rayjob_manifest_is_valid_against_kuberay_schema(validator, manifest):
    assert errors(validator, manifest) == []
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"


def test_the_validation_catches_typos_and_wrong_types(validator, manifest):
    typo = copy.deepcopy(manifest)
    typo["spec"]["shutdownAfterJobFinish"] = typo["spec"].pop("shutdownAfterJobFinishes")
    assert any("shutdownAfterJobFinish" in e for e in errors(validator, typo))
    wrong = copy.deepcopy(manifest)
    wrong["spec"]["ttlSecondsAfterFinished"] = "3600"
    assert any("ttlSecondsAfterFinished" in e for e in errors(validator, wrong))
    deep = copy.deepcopy(manifest)
    deep["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resource"] = {}
    assert any("resource" in e for e in errors(validator, deep))


def test_rayjob_runs_beeray_as_documented(manifest):
    """The fields beeray relies on, and an entrypoint that beeray's own parser accepts."""
    from beeray.cli import build_parser
    from beeray.commands.train import config_from_args

    spec = manifest["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert any(p.startswith("beeray") for p in runtime_env["pip"])
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no training on the head
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            assert container["image"].startswith("rayproject/ray:2.60.0")
            if "envFrom" in container:  # object storage: every Ray process gets the bucket's credentials
                assert container["envFrom"] == [{"secretRef": {"name": "beeray-s3"}}]
            else:
                assert {"mountPath": "/data", "name": "data"} in container["volumeMounts"]
    (gpu,) = cluster["workerGroupSpecs"]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["beeray", "train"]
    args = build_parser().parse_args(argv[1:])
    cfg = config_from_args(args)  # reads experiments/goodbooks.yaml from the repository
    assert cfg.use_gpu and cfg.num_workers <= gpu["maxReplicas"]
    if cfg.out.startswith("s3://"):  # the run, its MLflow store and the prepared data in the bucket
        assert cfg.data.startswith("s3://") and cfg.tracking_uri is None
        assert "AWS_DEFAULT_REGION" in runtime_env["env_vars"]
    else:  # on the shared volume
        assert cfg.out.startswith("/data/") and cfg.data.startswith("/data/")
        assert cfg.tracking_uri == "sqlite:////data/runs/mlflow.db"
    # A resubmitted job (KubeRay's retries, or the RayJob applied again) continues the run in --out.
    assert args.resume == "auto" and spec["backoffLimit"] >= 1


RAYSERVICE = ROOT / "k8s" / "rayservice.yaml"
RAYSERVICE_SCHEMA = ROOT / "k8s" / "rayservice-crd-v1.7.0.schema.json.gz"  # same source, ray.io_rayservices.yaml


def test_rayservice_manifest_is_valid_and_serves_beeray_as_documented(monkeypatch):
    schema = strict(json.loads(gzip.decompress(RAYSERVICE_SCHEMA.read_bytes())))
    validator = jsonschema.Draft7Validator(schema)
    doc = yaml.safe_load(RAYSERVICE.read_text())
    assert errors(validator, doc) == [] and doc["kind"] == "RayService"
    typo = copy.deepcopy(doc)
    typo["spec"]["serveConfig"] = typo["spec"].pop("serveConfigV2")
    assert any("serveConfig" in e for e in errors(validator, typo))
    serve = yaml.safe_load(doc["spec"]["serveConfigV2"])
    (application,) = serve["applications"]
    assert application["import_path"] == "beeray.serve:app" and serve["http_options"]["port"] == 8000
    # The builder takes exactly these arguments: prepare_catalog and build_app get them as written.
    import beeray.serve

    seen = {}

    def prepare_catalog(*args):
        seen["catalog"] = args
        return SimpleNamespace(root=args[1])

    def build_app(model, root, **kw):
        seen["app"] = (model, root, kw)

    monkeypatch.setattr(beeray.serve, "prepare_catalog", prepare_catalog)
    monkeypatch.setattr(beeray.serve, "build_app", build_app)
    beeray.serve.app(application["args"])
    assert seen["catalog"][:3] == ("/data/runs/goodbooks/model", "/data/catalogs/goodbooks", "/data/prepared/goodbooks")
    assert seen["app"][2]["replicas"] == 2 and seen["app"][2]["max_items"] == 256
    with pytest.raises(Exception, match="unknown argument"):
        beeray.serve.app({**application["args"], "replica": 3})
    cluster = doc["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0"
