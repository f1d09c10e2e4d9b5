"""User-facing errors: the CLI prints these as one line and exits 2.

Besides BeerayError (raised by beeray itself), two kinds of OSError are the user's to fix rather than
bugs, wherever they surface (a write of beeray's, pyarrow's, Ray's, torch's): a full disk and an
object store that refuses or cannot be reached. `user_message` turns either into the one line the
CLI prints; anything else stays a traceback (a bug to report).
"""

from __future__ import annotations

import errno
import os
import shutil


class BeerayError(Exception):
    """A problem with the user's input (file, config, data, cluster), not a bug."""


# errno and the words pyarrow and the C library use for them (pyarrow's errors often carry no errno)
DISK_FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
             errno.EFBIG: "file size limit reached"}
_DISK_WORDS = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
               "File too large": errno.EFBIG}
# pyarrow's S3 errors (AWS SDK error names, curl codes) -> what the user has to fix
STORAGE = (
    (("ACCESS_DENIED", "AccessDenied", "INVALID_ACCESS_KEY_ID", "InvalidAccessKeyId", "SIGNATURE_DOES_NOT_MATCH",
      "SignatureDoesNotMatch", "Forbidden"),
     "access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the key's rights on the bucket"),
    (("NO_SUCH_BUCKET", "NoSuchBucket", "The specified bucket does not exist"), "the bucket does not exist"),
    (("curlCode: 7", "curlCode: 6", "curlCode: 28", "Couldn't connect", "Could not resolve host",
      "Connection refused", "Timeout was reached"), "the object store does not answer"),
)
TRANSIENT = STORAGE[2][1]  # worth retrying: an endpoint that is down may come back


def disk_full(exc: BaseException) -> int | None:
    """The errno of a full disk (ENOSPC, EDQUOT, EFBIG) behind `exc`, else None."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        return exc.errno
    text = str(exc)
    return next((code for words, code in _DISK_WORDS.items() if words in text), None)


def storage_problem(exc: BaseException) -> str | None:
    """What is wrong with the object store behind `exc` (one of STORAGE's), else None."""
    text = str(exc)
    return next((what for names, what in STORAGE if any(n in text for n in names)), None)


def free_space(path: str | os.PathLike | None) -> str:
    """', N MB free there' for the file system holding `path` (its nearest existing folder), or ''."""
    if not path:
        return ""
    folder = os.path.abspath(os.fspath(path))
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        return f", {shutil.disk_usage(folder).free / 2**20:,.1f} MB free there"
    except OSError:
        return ""


def user_message(exc: BaseException, where: str | None = None) -> str | None:
    """One line for a full disk or an object-store error anywhere in `exc`'s chain (`where`: the path
    or URL being written, when the caller knows it better than the error does), else None."""
    for link in _chain(exc):
        code = disk_full(link)
        if code is not None:
            path = where or getattr(link, "filename", None)
            return f"{DISK_FULL[code]} writing {path or 'a file'}{free_space(path) if code != errno.EFBIG else ''}"
        problem = storage_problem(link)
        if problem is not None:
            detail = " ".join(str(link).split())[:200]
            return f"{where + ': ' if where else ''}{problem} ({detail})"
    return None


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        # Ray's task errors carry the task's own exception as `cause`
        exc = exc.__cause__ or getattr(exc, "cause", None) or exc.__context__
        if not isinstance(exc, BaseException):
            return
