"""beeray: beeFormer training of sentence-Transformer text encoders on interaction data, on Ray.

The Python API (beeray/api.py, docs/api.md) mirrors the `beeray` commands:

    import beeray

    data = beeray.prepare("synthetic", "data/shop")
    run = beeray.train(data=data.root, out="runs/shop", epochs=2)
    beeray.evaluate(data.root, models=[run.model_path], split="test")   # a pandas DataFrame

Importing beeray is light: each function loads torch, Ray and the rest when it is first called.
"""

from beeray.version import __version__  # noqa: E402

from beeray.errors import BeerayError  # noqa: E402

_API = ("prepare", "train", "tune", "evaluate", "compare", "embed", "recommend", "TrainResult", "TuneResult",
        "Comparison")

__all__ = [*_API, "BeerayError", "__version__"]


def __getattr__(name: str):
    if name in _API:
        from beeray import api

        return getattr(api, name)
    raise AttributeError(f"module 'beeray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
