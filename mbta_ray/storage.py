"""Where a root lives: a local folder or an object-store URI (``gs://``, ``s3://``, ``file://``).

pyarrow.fs opens the URI, so its credentials and options are pyarrow's: the usual environment
(``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``) or query parameters such as
``s3://bucket/mbta?endpoint_override=http://127.0.0.1:9000&region=us-east-1`` for an S3-compatible
server. The registry and ``data fetch`` open their roots here; a mounted volume is a local folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from mbta_ray.errors import ConfigError, DataError, MbtaRayError


def is_uri(root: str | Path) -> bool:
    """True for ``scheme://...`` (anything pyarrow.fs resolves), False for a local path."""
    return "://" in str(root)


def shown(root: str | Path) -> str:
    """``root`` as messages show it: a URI without its query (options, maybe keys) and without a
    ``user:secret@`` part, which pyarrow also takes keys from."""
    if not is_uri(root):
        return str(root)
    text = str(root).split("?", 1)[0]
    scheme, rest = text.split("://", 1)
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host.rpartition('@')[2]}{slash}{path}"


def hide(message: str, root: str | Path) -> str:
    """``message`` with every spelling of ``root`` in it replaced by ``shown(root)``."""
    text = str(root)
    return message.replace(text, shown(text)) if text != shown(text) else message


@dataclass(frozen=True)
class Root:
    """A folder on some filesystem: ``fs`` and the ``base`` path in it (no trailing slash)."""

    fs: pafs.FileSystem
    base: str
    uri: str

    @property
    def name(self) -> str:
        """The URI without its query, for messages: a query may hold options or keys."""
        return shown(self.uri)

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @contextlib.contextmanager
    def reporting(self, doing: str, error: type[MbtaRayError] = DataError) -> Iterator[None]:
        """Turn an I/O failure (an unreachable endpoint, denied access, a full disk) into ``error``
        naming the root and what was being done, without the URI's query or keys."""
        try:
            yield
        except OSError as exc:
            raise error(f"{self.name}: {doing} failed ({hide(str(exc), self.uri)})") from None

    def path(self, *parts: str) -> str:
        """The path of ``parts`` (fixed names or checked ones, never raw user input) under the root."""
        return "/".join([self.base, *parts])

    def size(self, path: str) -> int | None:
        """The file's size in bytes, or None when there is no such file."""
        info = self.fs.get_file_info(path)
        return info.size if info.type == pafs.FileType.File else None

    def read_bytes(self, path: str) -> bytes | None:
        """The file's bytes, or None when there is no such file."""
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write_bytes(self, path: str, payload: bytes) -> None:
        """Replace the file in one step: temp file + rename locally, one object PUT on object stores
        (all or nothing), so a reader never sees half of it."""
        if not self.local:
            with self.fs.open_output_stream(path) as f:
                f.write(payload)
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def upload(self, local: Path, path: str) -> None:
        """Copy a local file to ``path`` under the root (one object write on object stores)."""
        with open(local, "rb") as src, self.fs.open_output_stream(path) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)

    def download(self, path: str, local: Path) -> None:
        """Copy ``path`` to a local file (through a temp file: an interrupted copy leaves none)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with self.fs.open_input_stream(path) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)


def open_root(root: str | Path, filesystem: pafs.FileSystem | None = None, what: str = "root") -> Root:
    """Resolve ``root``: a local folder (made absolute) or a URI pyarrow.fs opens; with
    ``filesystem``, ``root`` is a path in it (e.g. an fsspec filesystem in ``pafs.PyFileSystem``).
    A URI pyarrow cannot open is a ``ConfigError`` naming ``what`` and the URI."""
    text = str(root)
    if filesystem is not None:
        return Root(filesystem, text.rstrip("/"), text)
    if not is_uri(text):
        return Root(pafs.LocalFileSystem(), os.path.abspath(text), text)
    try:
        fs, base = pafs.FileSystem.from_uri(text)
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid / ArrowIOError
        raise ConfigError(f"{what} {shown(text)!r}: cannot open it ({hide(str(exc), text)})") from None
    return Root(fs, base.rstrip("/"), text)
