"""`beeray serve`: a trained model as an HTTP service on Ray Serve, recommending from a catalogue that
grows while it serves (docs/serve.md).

Two deployments:
- `Writer`, one replica: the encoder and the only writer of the catalogue (beeray/catalog.py). Texts
  are encoded in batches across concurrent requests (`serve.batch`), and a write is on disk before
  it is acknowledged: a restart, or a replaced replica, loses nothing acknowledged.
- `Api`, the FastAPI ingress, N replicas: each holds a read copy of the catalogue and, before every
  read, asks the writer for the catalogue's version and applies the segments it lacks, so a write
  acknowledged through one replica is in the next read on any replica.

Every bad request gets a 4xx with {"error": "one line"}, and nothing is half-written.
"""

import json
import logging
from typing import Any

import numpy as np
# Evaluated annotations (no `from __future__ import annotations` here): Serve's class-based views hand
# FastAPI the routes' signatures, and FastAPI must see Request itself to pass the request in.
from starlette.requests import Request

from beeray.catalog import Catalog
from beeray.errors import BeerayError

log = logging.getLogger(__name__)

MAX_ITEMS = 256  # items (or texts) per request, --max-batch
MAX_BODY = 8 << 20  # bytes of a request body
MAX_K = 1000


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- requests (no Ray: tested as they are)

def parse_body(raw: bytes, max_body: int) -> Any:
    if len(raw) > max_body:
        raise ApiError(413, f"the request body is {len(raw):,} bytes; the limit is {max_body:,}")
    try:
        return json.loads(raw or b"null")
    except ValueError as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc})") from None


def _field(body: Any, name: str, kind: type | tuple, default: Any = ...) -> Any:
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(body).__name__}")
    if name not in body:
        if default is ...:
            raise ApiError(400, f"missing field {name!r}")
        return default
    value = body[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ApiError(400, f"field {name!r} must be {names}, got {type(value).__name__}")
    return value


def _item_id(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
        raise ApiError(400, f"{where}: an id must be a non-empty string or an integer, got {value!r}")
    return str(value)


def parse_items(body: Any, max_items: int) -> tuple[list[str], list[str]]:
    """POST /v1/items: {"items": [{"id": ..., "text": ...}, ...]} -> ids, texts."""
    items = _field(body, "items", list)
    if not items:
        raise ApiError(400, "'items' is empty")
    if len(items) > max_items:
        raise ApiError(413, f"{len(items)} items in one request; the limit is {max_items} (--max-batch)")
    ids, texts = [], []
    for j, item in enumerate(items):
        if not isinstance(item, dict):
            raise ApiError(400, f"items[{j}] must be an object with 'id' and 'text'")
        ids.append(_item_id(item.get("id"), f"items[{j}]"))
        text = item.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, f"items[{j}] ({ids[-1]!r}): 'text' must be a non-empty string")
        texts.append(text)
    if len(set(ids)) != len(ids):
        raise ApiError(400, "an id is given twice in one request")
    return ids, texts


def parse_recommend(body: Any) -> dict:
    """POST /v1/recommend -> history, k, exclude_history, only_new."""
    history = [_item_id(h, "history") for h in _field(body, "history", list)]
    if not history:
        raise ApiError(400, "'history' is empty: give at least one item id")
    k = _field(body, "k", int, 10)
    if not 0 < k <= MAX_K:
        raise ApiError(400, f"'k' must be between 1 and {MAX_K}, got {k}")
    return {"history": history, "k": k, "exclude_history": _field(body, "exclude_history", bool, True),
            "only_new": _field(body, "only_new", bool, False)}


def parse_texts(body: Any, max_items: int) -> list[str]:
    texts = _field(body, "texts", list)
    if len(texts) > max_items:
        raise ApiError(413, f"{len(texts)} texts in one request; the limit is {max_items} (--max-batch)")
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ApiError(400, "'texts' must be a non-empty list of non-empty strings")
    return texts


# ---------------------------------------------------------------- the catalogue a service starts from

def prepare_catalog(model: str, catalog_dir: str, items: str | None = None, embeddings: str | None = None,
                    re_embed: bool = False, batch_size: int = 64) -> Catalog:
    """Open (or create) the catalogue in `catalog_dir` for `model`; an empty one is filled from `items`
    (encoded now) or `embeddings` (a `beeray embed` folder of this model). Another model's catalogue is
    refused unless `re_embed`, which encodes its texts again with this model."""
    from pathlib import Path

    from beeray.models import embedding_dim, load_model, model_fingerprint

    fingerprint = model_fingerprint(model)
    encoder = load_model(model)
    dim = embedding_dim(encoder)
    manifest = Path(catalog_dir) / "catalog.json"
    if re_embed and manifest.is_file():
        old = json.loads(manifest.read_text())
        if old.get("model_fingerprint") != fingerprint:
            return _re_embed(Catalog.open(catalog_dir, old["model"], old["model_fingerprint"], old["dim"]),
                             model, fingerprint, encoder, dim, batch_size)
    catalog = Catalog.open(catalog_dir, model, fingerprint, dim)
    if len(catalog) or catalog.version:
        return catalog
    if embeddings:
        from beeray.embedding import load_embeddings

        ids, vectors = load_embeddings(embeddings, model=model)
        texts = _texts(items, ids) if items else [""] * len(ids)
    elif items:
        from beeray.data.items import read_item_texts
        from beeray.evaluator import encode_items

        read = read_item_texts(items, bad_rows="skip")
        ids, texts = list(read.ids), list(read.texts)
        vectors = encode_items(encoder, texts, batch_size=batch_size, show_progress=False)
    else:
        return catalog  # an empty catalogue, filled through POST /v1/items
    catalog.put(list(ids), texts, vectors, new=False)
    return catalog


def _texts(items: str, ids) -> list[str]:
    from beeray.data.items import read_item_texts

    read = read_item_texts(items, bad_rows="skip")
    by_id = dict(zip(read.ids, read.texts))
    return [by_id.get(str(i), "") for i in ids]


def _re_embed(old: Catalog, model: str, fingerprint: str, encoder, dim: int, batch_size: int) -> Catalog:
    """The catalogue's texts encoded with `model`, built beside it and swapped in whole."""
    import shutil

    from beeray import files
    from beeray.evaluator import encode_items

    vectors = encode_items(encoder, old.texts, batch_size=batch_size, show_progress=False)
    fresh = old.root.with_name(old.root.name + ".re-embed")
    shutil.rmtree(fresh, ignore_errors=True)
    catalog = Catalog.open(fresh, model, fingerprint, dim)
    if len(old):
        catalog.put(old.ids, old.texts, vectors, new=False)
    files.swap_dir(fresh, old.root)
    return Catalog.open(old.root, model, fingerprint, dim)


# ---------------------------------------------------------------- the deployments

def build_app(model: str, catalog_dir: str, *, replicas: int = 1, use_gpu: bool = False, max_items: int = MAX_ITEMS,
              max_body: int = MAX_BODY, batch_size: int = 64):
    """The Serve application (Writer + Api) over a catalogue `prepare_catalog` made."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from ray import serve

    # The catalogue's own record of its model (prepare_catalog checked it against `model`): the model
    # folder is not hashed a second time.
    with open(f"{catalog_dir}/catalog.json") as fh:
        manifest = json.load(fh)
    fingerprint, dim = manifest["model_fingerprint"], manifest["dim"]

    @serve.deployment(name="writer", num_replicas=1, max_ongoing_requests=256,
                      ray_actor_options={"num_cpus": 1, "num_gpus": 1 if use_gpu else 0})
    class Writer:
        def __init__(self) -> None:
            from beeray.models import embedding_dim, load_model

            self.encoder = load_model(model, device="cuda" if use_gpu else "cpu")
            self.catalog = Catalog.open(catalog_dir, model, fingerprint, embedding_dim(self.encoder))

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
        async def encode(self, requests: list[list[str]]) -> list[np.ndarray]:
            """One forward pass for the texts of every request waiting (a burst costs one batch)."""
            from beeray.evaluator import encode_items

            flat = [t for texts in requests for t in texts]
            vectors = encode_items(self.encoder, flat, batch_size=batch_size, show_progress=False)
            bounds = np.cumsum([0, *(len(t) for t in requests)])
            return [vectors[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

        async def add(self, ids: list[str], texts: list[str]) -> dict:
            vectors = await self.encode(texts)
            version = self.catalog.put(ids, texts, vectors)  # on disk before the answer
            return {"ids": ids, "version": version, "size": len(self.catalog)}

        def delete(self, item_id: str) -> dict:
            if item_id not in self.catalog.row:
                return {"error": f"no item with id {item_id!r}"}
            return {"id": item_id, "version": self.catalog.delete([item_id]), "size": len(self.catalog)}

        def version(self) -> int:
            return self.catalog.version

        async def embed(self, texts: list[str]) -> list[list[float]]:
            return (await self.encode(texts)).tolist()

    app = FastAPI(title="beeray serve")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(status_code=exc.status, content={"error": str(exc)})

    @serve.deployment(name="api", num_replicas=replicas, ray_actor_options={"num_cpus": 0.25})
    @serve.ingress(app)
    class Api:
        def __init__(self, writer) -> None:
            self.writer = writer
            self.dim = dim
            self.catalog = Catalog.open(catalog_dir, model, fingerprint, dim)

        async def _body(self, request: Request) -> Any:
            declared = int(request.headers.get("content-length") or 0)
            if declared > max_body:
                raise ApiError(413, f"the request body is {declared:,} bytes; the limit is {max_body:,}")
            return parse_body(await request.body(), max_body)

        async def _fresh(self) -> None:
            if await self.writer.version.remote() > self.catalog.version:
                self.catalog.refresh()

        @app.get("/healthz")
        async def healthz(self) -> dict:
            return {"ok": True}

        @app.get("/v1/info")
        async def info(self) -> dict:
            await self._fresh()
            return {"model": model, "model_fingerprint": fingerprint, "dim": self.dim,
                    "size": len(self.catalog), "version": self.catalog.version}

        @app.post("/v1/items")
        async def add_items(self, request: Request) -> dict:
            ids, texts = parse_items(await self._body(request), max_items)
            return await self.writer.add.remote(ids, texts)

        @app.delete("/v1/items/{item_id}")
        async def delete_item(self, item_id: str) -> dict:
            done = await self.writer.delete.remote(item_id)
            if "error" in done:
                raise ApiError(404, done["error"])
            return done

        @app.post("/v1/embed")
        async def embed(self, request: Request) -> dict:
            texts = parse_texts(await self._body(request), max_items)
            vectors = await self.writer.embed.remote(texts)
            return {"vectors": vectors, "dim": self.dim}

        @app.post("/v1/recommend")
        async def recommend(self, request: Request) -> dict:
            query = parse_recommend(await self._body(request))
            await self._fresh()
            try:
                recs = self.catalog.recommend(**query)
            except BeerayError as exc:
                raise ApiError(404 if "no item with id" in str(exc) else 400, str(exc)) from None
            return {"items": [{"id": r.item_id, "score": r.score, "text": self.catalog.texts[r.row]} for r in recs],
                    "version": self.catalog.version}

    return Api.bind(Writer.bind())


def start(model: str, catalog_dir: str, *, items: str | None = None, embeddings: str | None = None,
          host: str = "127.0.0.1", port: int = 8000, replicas: int = 1, use_gpu: bool = False,
          max_items: int = MAX_ITEMS, max_body: int = MAX_BODY, address: str | None = None,
          re_embed: bool = False) -> str:
    """Prepare the catalogue, start Ray (or join `address`) and the service; returns its URL."""
    from ray import serve

    from beeray.cluster import init_ray

    catalog = prepare_catalog(model, catalog_dir, items, embeddings, re_embed)
    log.info(f"beeray serve: catalogue {catalog_dir}: {len(catalog):,} items, version {catalog.version}")
    init_ray(address)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(model, str(catalog.root), replicas=replicas, use_gpu=use_gpu, max_items=max_items,
                        max_body=max_body), name="beeray", route_prefix="/")
    return f"http://{host}:{port}"


APP_ARGS = {"model", "catalog", "items", "embeddings", "replicas", "use_gpu", "max_batch", "max_body_mb", "re_embed"}


def app(args: dict):
    """Ray Serve's application builder (`import_path: beeray.serve:app`, a RayService's serveConfigV2 or
    `serve run beeray.serve:app model=... catalog=...`): the catalogue prepared, then the application."""
    unknown = sorted(set(args) - APP_ARGS)
    if unknown:
        raise BeerayError(f"beeray.serve:app: unknown argument(s) {', '.join(unknown)}; known: {', '.join(sorted(APP_ARGS))}")
    if not args.get("catalog"):
        raise BeerayError("beeray.serve:app: `catalog` (the catalogue's folder) is required")
    model = str(args.get("model") or "all-MiniLM-L6-v2")
    catalog = prepare_catalog(model, str(args["catalog"]), args.get("items"), args.get("embeddings"),
                              _flag(args, "re_embed"))
    return build_app(model, str(catalog.root), replicas=int(args.get("replicas", 1)), use_gpu=_flag(args, "use_gpu"),
                     max_items=int(args.get("max_batch", MAX_ITEMS)),
                     max_body=int(float(args.get("max_body_mb", MAX_BODY / 2**20)) * 2**20))


def _flag(args: dict, name: str) -> bool:
    """A boolean argument, from YAML (true) or `serve run`'s command line ("true")."""
    return str(args.get(name, False)).lower() in ("1", "true", "yes")
