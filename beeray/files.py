"""Where beeray's files go: written so that a crash never leaves half a file or half a folder.

The bottom of the package's I/O (it imports nothing of beeray but its errors): every writer above it
(reports, model folders, prepared data, embeddings, checkpoints' copies) goes through these. A file
is written to a temporary sibling and renamed into place (a rename within one folder is atomic on
POSIX file systems); a folder is built beside its destination and then swapped in.

Object storage (s3://, gs://, ...: any URL pyarrow's filesystems open) has objects, not files: one
appears whole when its upload completes, and there is no folder rename. A command whose output is a
URL writes its files to a local staging folder (`output_dir`), Ray keeps its state in the bucket
(`ray_storage`), and `publish` uploads the folder with a marker, `_COMPLETE.json`, written last;
`fetch_dir` (behind every reader that accepts a URL) refuses a folder without one. `Folder` is the
one type for a place, local or remote: everything above this module asks it, not the URL's form, what
is there. One object-store client is built per store, bucket and credentials, per process.
"""

from __future__ import annotations

import logging
import contextlib
import csv
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from beeray.errors import BeerayError, disk_full, storage_problem, user_message

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import pandas as pd


URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
SCHEMES = frozenset({"s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"})  # pyarrow.fs.FileSystem.from_uri's
MARKER = "_COMPLETE.json"  # written last into an uploaded folder: the folder is finished (see publish)
_REQUIRED = object()  # Folder.read_text without a default: a missing file raises


def is_url(value: str | Path) -> bool:
    return bool(URL.match(str(value)))


def names_place(name: str | Path) -> bool:
    """Whether `name` is a place (a URL, or a local path that exists) rather than, say, a hub model's name."""
    return bool(name) and (is_url(name) or Path(name).expanduser().exists())


def absolute(value: str) -> str:
    """A local path made absolute (against this process's working directory); a URL as given."""
    return value if is_url(value) else str(Path(value).expanduser().resolve())


def local_path(value: str | Path, what: str = "--out") -> Path:
    """`value` as a local (or mounted) path; a URL (s3://, gs://, ...) is refused in one line, where
    pathlib would silently turn "s3://bucket/run" into a local folder "s3:/bucket/run"."""
    text = str(value)
    if is_url(text) or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", text):
        raise BeerayError(f"{what} {text}: a URL; here beeray reads and writes local or mounted folders only "
                          "(object storage: --out of train, tune and embed, --data of train and tune, --model; "
                          "docs/cluster.md, section 5)")
    return Path(text)


# ---------------------------------------------------------------- object storage

BUCKET_SCHEMES = frozenset({"s3", "gs", "gcs"})  # URLs of the form scheme://bucket/key: a client per bucket


def _store_env() -> tuple:
    """What an object-store client is built from besides its URL: a new endpoint or key, new client."""
    return tuple(os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID",
                                             "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                                             "AWS_REGION", "GOOGLE_APPLICATION_CREDENTIALS"))


@functools.lru_cache(maxsize=64)
def _bucket_fs(scheme: str, bucket: str, env: tuple):
    from pyarrow import fs as pafs

    return pafs.FileSystem.from_uri(f"{scheme}://{bucket}")[0]


def remote_fs(uri: str, what: str = "--out"):
    """(pyarrow filesystem, path inside it) of an object-storage URI: s3:// (any S3-compatible store:
    credentials, region and endpoint from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION,
    AWS_ENDPOINT_URL), gs://, hdfs://, or anything else pyarrow's filesystems understand."""
    uri = str(uri).rstrip("/")
    scheme, _, rest = uri.partition("://")
    bucket, _, inside = rest.partition("/")
    try:
        if scheme.lower() in BUCKET_SCHEMES:  # one client per store, bucket and credentials, per process
            return _bucket_fs(scheme.lower(), bucket, _store_env()), f"{bucket}/{inside}".rstrip("/")
        from pyarrow import fs as pafs

        return pafs.FileSystem.from_uri(uri)
    except BeerayError:
        raise
    except Exception as exc:  # ArrowInvalid (unknown scheme), OSError (no such host...): one line either way
        if storage_problem(exc):
            raise BeerayError(storage_error(uri, exc, what)) from None
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BeerayError(f"{what} {uri}: not a storage URL pyarrow can open ({detail})") from None


def storage_error(uri: str, exc: BaseException, what: str = "--out") -> str:
    """One line for pyarrow's error `exc` on the store of `uri`: what is wrong, with the key, bucket
    or endpoint the user has to check (names only, never the secret)."""
    problem = storage_problem(exc) or "object storage error"
    bucket = str(uri).split("://", 1)[-1].split("/", 1)[0]
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or "the default endpoint"
    if problem.startswith("access denied"):
        context = f"key {os.environ.get('AWS_ACCESS_KEY_ID') or '(none set)'}, bucket {bucket}"
    elif problem.startswith("the bucket"):
        context = f"bucket {bucket} at {endpoint}"
    else:
        context = f"endpoint {endpoint}"
    detail = " ".join(str(exc).split())
    return f"{what} {uri}: {problem} ({context}; {detail[:160]})"


def preflight(uri: str, what: str = "--out") -> None:
    """Write, read back and delete one small object under `uri`, so that a wrong key, a missing bucket
    or an unreachable endpoint fails here, in one line, before anything is staged or trained."""
    filesystem, root = remote_fs(uri, what)
    probe = f"{root}/.beeray-preflight-{uuid.uuid4().hex[:12]}"
    try:
        with filesystem.open_output_stream(probe) as fh:
            fh.write(b"beeray")
        with filesystem.open_input_stream(probe) as fh:
            back = fh.read()
        filesystem.delete_file(probe)
    except OSError as exc:
        raise BeerayError(storage_error(uri, exc, what)) from None
    if back != b"beeray":
        raise BeerayError(f"{what} {uri}: an object written there read back different bytes")


def staging_dir(uri: str) -> Path:
    """The local folder where a run whose output is the URL `uri` writes its files before `publish`
    uploads them (one per URL; under $BEERAY_STAGING, else the system's temporary folder)."""
    root = os.environ.get("BEERAY_STAGING") or Path(tempfile.gettempdir()) / "beeray-staging"
    return Path(root) / hashlib.sha256(uri.encode()).hexdigest()[:16]


def output_dir(out: str | Path) -> Path:
    """Where a command writes the files of output `out`: the folder itself, or for a URL its staging folder."""
    return staging_dir(str(out)) if is_url(out) else local_path(out).expanduser().resolve()


def ray_storage(out: str | Path, sub: str = "ray") -> tuple[str, object]:
    """Ray's `RunConfig(storage_path, storage_filesystem)` for the Ray state kept under `out`/`sub`:
    a local folder, or a prefix in object storage that every node of a cluster reaches."""
    if is_url(out):
        filesystem, root = remote_fs(str(out))
        return f"{root}/{sub}", filesystem
    return str(local_path(out).expanduser().resolve() / sub), None


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            h.update(block)
    return h.hexdigest()


def publish(local: Path, uri: str, *, uploaded: dict | None = None, upload: Callable | None = None) -> dict:
    """Upload the folder `local` to `uri` so that a reader never takes a half-written copy for a
    finished one. Object stores have no folder rename, so a marker does its work: the old MARKERs of
    the folders being written are deleted first, every file is uploaded (an object appears whole or not
    at all), and the MARKER, listing each file's size and SHA-256, is written last; `fetch_dir` refuses
    a folder without one and checks each file against it.

    `uploaded`: {relative path: entry} of files already there (an earlier `publish` of a sub-folder),
    skipped when unchanged; `upload(src, dst_path)`: how one file is copied (tests inject a crash).
    Returns the marker."""
    place = Folder(uri)
    filesystem, root = place.fs, place.root
    local = Path(local)
    paths = sorted(p for p in local.rglob("*") if p.is_file())
    folders = {"", *(p.parent.relative_to(local).as_posix() for p in paths)}
    for folder in sorted(folders):
        rel = MARKER if folder in ("", ".") else f"{folder}/{MARKER}"
        if place.exists(rel):
            place.delete(rel)

    def copy(src: Path, dst: str) -> None:
        with open(src, "rb") as fh, filesystem.open_output_stream(dst) as out:
            shutil.copyfileobj(fh, out, 8 << 20)

    listing = {}
    for path in paths:
        rel = path.relative_to(local).as_posix()
        if path.name == MARKER or any(part.startswith(".") for part in rel.split("/")):
            continue  # temporaries of an atomic write, hidden files
        entry = {"bytes": path.stat().st_size, "sha256": digest(path)}
        if (uploaded or {}).get(rel) != entry:
            (upload or copy)(path, f"{root}/{rel}")
        listing[rel] = entry
    marker = {"complete": True, "files": listing, "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "id": uuid.uuid4().hex}
    place.write_text(MARKER, json.dumps(marker, indent=1) + "\n")
    return marker


def fetch_dir(uri: str, what: str = "--model") -> Path:
    """A local copy of the finished folder at `uri` (a published run, or a folder inside one, e.g.
    s3://bucket/run/model), downloaded once per node into ~/.cache/beeray/remote and reused while the
    run's marker is unchanged. A folder whose run has no MARKER (unfinished, or being uploaded) is refused."""
    uri = uri.rstrip("/")
    scheme, _, rest = uri.partition("://")
    parts = rest.split("/")
    for depth in range(len(parts), 0, -1):  # the marker of `uri` itself, else of a folder above it
        base = f"{scheme}://{'/'.join(parts[:depth])}"
        text = Folder(base, what).read_text(MARKER, default=None)
        if text is not None:
            break
    else:
        raise BeerayError(f"{what} {uri}: no finished beeray output there (no {MARKER}: the run did not finish, "
                          "or it is still being uploaded)")
    marker = json.loads(text)
    prefix = "/".join(parts[depth:])
    wanted = {rel: entry for rel, entry in marker["files"].items()
              if not prefix or rel.startswith(prefix + "/")}
    if not wanted:
        raise BeerayError(f"{what} {uri}: the finished output at {base} holds no files under {prefix}")
    dst = Path(os.environ.get("BEERAY_CACHE", Path.home() / ".cache" / "beeray")) / "remote" / \
        hashlib.sha256(f"{uri}\0{marker['id']}".encode()).hexdigest()[:16]
    if (dst / MARKER).is_file():
        return dst
    filesystem, root = remote_fs(base)
    with staged_dir(dst, keep_existing=lambda: (dst / MARKER).is_file()) as tmp:
        for rel, entry in wanted.items():
            target = tmp / rel[len(prefix):].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            with filesystem.open_input_stream(f"{root}/{rel}") as fh, open(target, "wb") as out:
                shutil.copyfileobj(fh, out, 8 << 20)
            if digest(target) != entry["sha256"]:  # overwritten since the marker was written
                raise BeerayError(f"{what} {uri}: {base}/{rel} differs from its {MARKER} (being rewritten?); "
                                  "try again once its run has finished")
        (tmp / MARKER).write_text(text)
    return dst


class Folder:
    """A place that holds files, local or in object storage (s3://, gs://, ...): beeray's one notion of
    where a file lives. A file written through it appears whole or not at all either way: by an atomic
    rename on a local disk, by one upload of a finished local file in object storage (an object appears
    when its upload completes). A folder is *complete* when its MARKER is there (`publish` writes it
    last for an uploaded run, `mark_complete` for a folder written in place, e.g. `beeray embed`'s)."""

    def __init__(self, where: str | Path, what: str = "--out"):
        self.url = is_url(where)
        if self.url:
            self.fs, self.root = remote_fs(str(where), what)
            self.name = str(where).rstrip("/")
        else:
            self.fs, self.root = None, local_path(where, what).expanduser().resolve()
            self.name = str(self.root)

    def __str__(self) -> str:
        return self.name

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}".rstrip("/")

    def _kind(self, rel: str):
        from pyarrow import fs as pafs

        return self.fs.get_file_info(self._path(rel)).type, pafs.FileType

    def exists(self, rel: str = "") -> bool:
        """Whether anything (a file or a folder) is at `rel`."""
        if self.url:
            kind, types_ = self._kind(rel)
            return kind != types_.NotFound
        return (self.root / rel).exists()

    def is_file(self, rel: str) -> bool:
        if self.url:
            kind, types_ = self._kind(rel)
            return kind == types_.File
        return (self.root / rel).is_file()

    def is_complete(self) -> bool:
        """Whether the folder's writer finished it (its MARKER is there)."""
        return self.is_file(MARKER)

    def mark_complete(self, record: dict) -> None:
        """Written last by a command that fills the folder in place: from here on it is complete."""
        self.write_text(MARKER, json.dumps({"complete": True, **record}, indent=1, default=float) + "\n")

    def read_text(self, rel: str, default=_REQUIRED) -> str:
        """The text of file `rel`; `default` when there is none (without one, a missing file raises)."""
        if default is not _REQUIRED and not self.is_file(rel):
            return default
        if self.url:
            with self.fs.open_input_stream(self._path(rel)) as fh:
                return fh.read().decode("utf-8")
        return (self.root / rel).read_text(encoding="utf-8")

    def write_text(self, rel: str, text: str) -> None:
        self.write_with(rel, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def write_with(self, rel: str, writer: Callable[[Path], None]) -> None:
        """`writer(tmp)` writes a local temporary file, which then becomes `rel` in one piece."""
        if not self.url:
            with atomic_path(self.root / rel) as tmp:
                writer(tmp)
            return
        with tempfile.TemporaryDirectory(prefix="beeray-upload-") as folder:
            tmp = Path(folder) / Path(rel).name
            writer(tmp)
            with open(tmp, "rb") as fh, self.fs.open_output_stream(self._path(rel)) as out:
                shutil.copyfileobj(fh, out, 8 << 20)

    def open(self, rel: str):
        """A readable, seekable file (what pyarrow.parquet reads)."""
        return self.fs.open_input_file(self._path(rel)) if self.url else open(self.root / rel, "rb")

    def names(self, sub: str) -> list[str]:
        """The names of the files in the sub-folder `sub` (none when it does not exist)."""
        if self.url:
            from pyarrow import fs as pafs

            infos = self.fs.get_file_info(pafs.FileSelector(self._path(sub), allow_not_found=True))
            return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)
        folder = self.root / sub
        return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []

    def delete(self, rel: str) -> None:
        """Remove file `rel`; nothing to do when there is none (local disk and object storage alike)."""
        if self.url:
            try:
                self.fs.delete_file(self._path(rel))
            except FileNotFoundError:
                pass
        else:
            (self.root / rel).unlink(missing_ok=True)

    def local(self) -> Path:
        """Where a command writes this folder's files: the folder itself, or for a URL its staging
        folder (`publish` uploads it)."""
        return staging_dir(self.name) if self.url else self.root

    def readable(self, what: str = "--model") -> Path:
        """A local folder to read: this one, or the finished object-storage output fetched (`fetch_dir`)."""
        return fetch_dir(self.name, what) if self.url else self.root

    def publish(self, local: Path, **kwargs) -> dict | None:
        """Upload `local` here, MARKER last (`publish`); a local folder is written in place: nothing to do."""
        return publish(local, self.name, **kwargs) if self.url else None

    def preflight(self, what: str = "--out") -> None:
        """A wrong key, bucket or endpoint fails here in one line (`preflight`); a local folder has none."""
        if self.url:
            preflight(self.name, what)


def readable_dir(value: str | Path, what: str) -> Path:
    """A folder to read: local as given, or a finished object-storage output fetched (`fetch_dir`)."""
    return fetch_dir(str(value), what) if is_url(value) else Path(value).expanduser()


def read_parquet(path: str | Path, columns: list[str] | None = None, hint: str = ""):
    """pyarrow.parquet.read_table, with a truncated or corrupt file (or a missing column) refused in
    one line naming it, instead of pyarrow's "Parquet magic bytes not found" with no file named."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except FileNotFoundError:
        raise BeerayError(f"{path}: not found{'; ' + hint if hint else ''}") from None
    except (pa.ArrowException, OSError) as exc:
        if storage_problem(exc) or _is_disk_full(exc):
            raise
        detail = " ".join(str(exc).split())[:200]
        raise BeerayError(f"{path}: not a readable Parquet file, truncated or corrupt ({detail})"
                          f"{'; ' + hint if hint else ''}") from None


def parquet_schema(path: str | Path, hint: str = ""):
    """pyarrow.parquet.read_schema, with a torn file refused as read_parquet does."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise BeerayError(f"{path}: not a readable Parquet file, truncated or corrupt ({detail})"
                          f"{'; ' + hint if hint else ''}") from None


def _is_disk_full(exc: BaseException) -> bool:
    return disk_full(exc) is not None


@contextlib.contextmanager
def _naming(path: Path):
    """A full disk while `path` is written: one line naming `path` (pyarrow's and torch's errors often
    name no file) and the space left there."""
    try:
        yield
    except OSError as exc:
        if not _is_disk_full(exc):
            raise
        raise BeerayError(user_message(exc, str(path))) from exc


# ---------------------------------------------------------------- one run per output folder

LOCK = ".beeray.lock"  # in a local OUT: flock'ed by the run writing it, holding its pid and host
REMOTE_LOCK = "_LOCK.json"  # in an object-storage OUT: the holder, its heartbeat refreshed while it runs
HEARTBEAT_S = 15.0
# A remote lock whose heartbeat is older belongs to a run that died: short enough that a resubmitted
# job (a KubeRay RayJob retry, on another host, minutes later) takes it over.
STALE_S = 4 * HEARTBEAT_S


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "heartbeat": time.time(),
            "token": uuid.uuid4().hex}


def _describe(holder: dict) -> str:
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@contextlib.contextmanager
def run_lock(out: str | Path, what: str = "run"):
    """Hold the output `out` exclusively while a command writes it: a second command given the same
    --out is refused in one line naming the holder, before it writes anything.

    Local: an flock on OUT/.beeray.lock (released by the kernel when the holder exits, however it
    exits: a lock left by a dead process is simply taken over). Object storage has no conditional
    writes that pyarrow exposes: the lock is OUT/_LOCK.json, written, read back to detect a
    simultaneous taker, and refreshed every 15 s; one not refreshed for a minute (its run died)
    or left by a dead process of this host is taken over. Two hosts starting within the same second can
    still both win (docs/cluster.md). A URL is also locked on this host through its staging folder.
    On failure, the staging folder of a URL is removed (its run state is in the store)."""
    if not is_url(out):
        folder = local_path(out).expanduser().resolve()
        folder.mkdir(parents=True, exist_ok=True)
        with _flock(folder / LOCK, str(folder), what):
            yield
        return
    staging = staging_dir(str(out))
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _flock(staging.parent / f"{staging.name}.lock", str(out), what), _remote_lock(str(out), what):
            yield
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def _flock(path: Path, where: str, what: str):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BeerayError(f"{where} is in use by another beeray {what} ({_describe(_read_holder(path))}): "
                              "wait for it to finish, or choose another --out") from None
        before = _read_holder(path)
        if before.get("pid") and before.get("pid") != os.getpid():
            log.info(f"beeray: {where}: taking over the lock left by {_describe(before)} (no longer running)")
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_holder()) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def waiting_lock(path: str | Path):
    """An flock on `path` that waits for its holder (short critical sections that several runs share,
    e.g. creating one SQLite MLflow store: two runs creating its tables at once break it)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_holder(path: Path) -> dict:
    try:
        holder = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


@contextlib.contextmanager
def _remote_lock(uri: str, what: str):
    place = Folder(uri)
    text = place.read_text(REMOTE_LOCK, default=None)
    if text is not None:
        try:
            other = json.loads(text)
        except ValueError:
            other = {}
        same_host_dead = other.get("host") == socket.gethostname() and not _alive(other.get("pid"))
        if not same_host_dead and time.time() - float(other.get("heartbeat") or 0) < STALE_S:
            raise BeerayError(f"{uri} is in use by another beeray {what} ({_describe(other)}): wait for it to "
                              f"finish, or if it died, delete {uri}/{REMOTE_LOCK}")
        log.info(f"beeray: {uri}: taking over the lock left by {_describe(other)} (no longer running)")
    mine = _holder()
    place.write_text(REMOTE_LOCK, json.dumps(mine) + "\n")
    time.sleep(0.5)  # a run that wrote at the same moment shows up in the read-back
    back = place.read_text(REMOTE_LOCK, default=None)
    if back is None or json.loads(back).get("token") != mine["token"]:
        raise BeerayError(f"{uri}: another beeray {what} took it at the same moment; choose another --out")
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                place.write_text(REMOTE_LOCK, json.dumps({**mine, "heartbeat": time.time()}) + "\n")
            except OSError:
                pass  # the store is away for now; the run's own writes report it

    thread = threading.Thread(target=beat, name="beeray-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        try:
            place.delete(REMOTE_LOCK)
        except OSError:
            pass  # unreachable now: the lock goes stale by itself


# ---------------------------------------------------------------- atomic writes

@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with _naming(path):
            yield Path(tmp)
        # mkstemp's file is private (0600); the finished one gets what open() would give it (0644 under
        # the usual umask 022), so that other users of a shared cluster can read the outputs
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only read it by
    setting it, which for an instant would loosen the mode of files other threads create)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


def write_csv(path: str | Path, rows: "list[dict] | pd.DataFrame") -> None:
    """A CSV from records (columns in first-seen order) or a DataFrame."""
    with atomic_path(path) as tmp:
        if hasattr(rows, "to_csv"):  # a DataFrame (pandas is not imported at this layer)
            rows.to_csv(tmp, index=False)
            return
        columns = list(dict.fromkeys(k for row in rows for k in row))
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


def save_figure(fig, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)


@contextlib.contextmanager
def staged_dir(dst: str | Path, keep_existing: Callable[[], bool] | None = None):
    """Yield an empty folder beside `dst`; when the block succeeds it becomes `dst`, else it is removed.

    An old `dst` is replaced (`swap_dir`), except one that `keep_existing()` accepts: a finished copy
    that a concurrent writer put there first stays, so processes building the same folder at once
    (Ray workers on one node) all end with one complete copy.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # mode 0777 & ~umask, as any folder
    try:
        with _naming(dst):
            yield tmp
        if keep_existing is None or not keep_existing():
            try:
                swap_dir(tmp, dst)
            except OSError:
                if keep_existing is None or not keep_existing():  # not a concurrent writer's copy
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src: str | Path, dst: str | Path) -> None:
    """Copy folder `src` to `dst`, replacing what was there only once the copy is complete."""
    with staged_dir(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)


def swap_dir(new: Path, dst: Path) -> None:
    """Move the finished folder `new` to `dst` (same parent), replacing an old `dst` if present."""
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dst, old)
        os.replace(new, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, dst)
