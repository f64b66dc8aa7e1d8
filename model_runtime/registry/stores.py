"""Where registry objects live: a local folder or S3 (and anything speaking its API: MinIO, moto).

Both stores offer the same few operations on keys ("name/versions/v1/manifest.json"). A write of a
small object is atomic in both (a rename locally, a single PUT on S3), which is what aliases rely on,
and can be made conditional on the object being unchanged since it was read (a lock file and a
comparison locally, If-Match / If-None-Match on S3), so that two writers cannot lose each other's write.
Nothing depends on listing being up to date: a version exists once its manifest can be read.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

from model_runtime.errors import OperatorError

# Files above this go up in parts (S3 refuses single PUTs over 5 GB; parts also retry individually).
MULTIPART_THRESHOLD = 64 * 1024 * 1024
T = TypeVar("T")


class StoreError(OperatorError, RuntimeError):
    """A store that cannot be reached or refused an operation; the message names the key."""


class _ConditionFailed(Exception):
    """S3 refused a conditional write: the object changed since it was read."""


class Store(Protocol):
    url: str

    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; KeyError when it does not exist."""
        ...

    def write_bytes(self, key: str, data: bytes) -> None:
        """Replace the object atomically: a reader sees the old bytes or the new, never a mix."""
        ...

    def read_tagged(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and a tag of this very content, for write_if; KeyError when absent."""
        ...

    def write_if(self, key: str, data: bytes, tag: str | None) -> bool:
        """Replace the object atomically only if it is still the one read_tagged tagged `tag` (None: only
        if it does not exist); False, and nothing written, when another writer got there first."""
        ...

    def upload(self, key: str, source: Path) -> None: ...

    def download(self, key: str, dest: Path) -> None:
        """Write the object to dest; KeyError when it does not exist."""
        ...

    def exists(self, key: str) -> bool: ...

    def children(self, prefix: str) -> list[str]:
        """Names directly under prefix ("a/b/" -> the c of every "a/b/c/..." and "a/b/c")."""
        ...

    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> None: ...

    def fetch_url(self, key: str, seconds: int) -> str:
        """A URL a host without credentials can fetch the object from (file:// or presigned https)."""
        ...


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StoreError(f"{key}: outside the store")
        return path

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def read_tagged(self, key: str) -> tuple[bytes, str]:
        data = self.read_bytes(key)
        return data, hashlib.sha256(data).hexdigest()

    def write_if(self, key: str, data: bytes, tag: str | None) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked(path):
            try:
                current: str | None = self.read_tagged(key)[1]
            except KeyError:
                current = None
            if current != tag:
                return False
            self.write_bytes(key, data)
        return True

    @staticmethod
    @contextlib.contextmanager
    def _locked(path: Path) -> Iterator[None]:
        """An exclusive lock on path's hidden lock file, between threads and processes alike (each
        holder opens the file itself: flock locks belong to one open file)."""
        fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def upload(self, key: str, source: Path) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial")
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)

    def download(self, key: str, dest: Path) -> None:
        try:
            shutil.copyfile(self._path(key), dest)
        except FileNotFoundError:
            raise KeyError(key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def children(self, prefix: str) -> list[str]:
        folder = self._path(prefix)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def fetch_url(self, key: str, seconds: int) -> str:
        return self._path(key).as_uri()

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)


class S3Store:
    """s3://bucket/prefix. Credentials and endpoint come the usual boto3 way (environment, profile,
    instance role; AWS_ENDPOINT_URL for MinIO or moto)."""

    def __init__(self, url: str) -> None:
        # boto3 is the `s3` extra's, not the runtime's: imported only when an S3 store is opened.
        try:
            import boto3
            from boto3.s3.transfer import TransferConfig
        except ModuleNotFoundError as missing:
            raise StoreError(
                f"{url}: the S3 store needs {missing.name}, which is not installed: "
                "pip install 'model-runtime[s3]'"
            ) from None

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise StoreError(f"{url}: no bucket")
        self.url = url
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = boto3.client("s3")
        self.transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _folder(self, prefix: str) -> str:
        """The listing prefix of a "folder": "" at the root, else ending in one slash."""
        base = self._key(prefix.strip("/")) if prefix.strip("/") else self.prefix
        return f"{base}/" if base else ""

    def _call(self, what: str, key: str, operation: Callable[..., T], *args: object, **kwargs: object) -> T:
        from botocore.exceptions import BotoCoreError, ClientError  # boto3's own; present once it loaded

        try:
            return operation(*args, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise KeyError(key) from None
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise _ConditionFailed(key) from None
            raise StoreError(f"s3://{self.bucket}/{self._key(key)}: {what} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"s3://{self.bucket}/{self._key(key)}: {what} failed: {exc}") from exc

    def read_bytes(self, key: str) -> bytes:
        reply = self._call("read", key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return reply["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> None:
        self._call("write", key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def read_tagged(self, key: str) -> tuple[bytes, str]:
        reply = self._call("read", key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return reply["Body"].read(), reply["ETag"]

    def write_if(self, key: str, data: bytes, tag: str | None) -> bool:
        # S3's conditional writes: If-Match the ETag read, or If-None-Match * to create only.
        condition = {"IfMatch": tag} if tag is not None else {"IfNoneMatch": "*"}
        try:
            self._call(
                "write", key, self.client.put_object,
                Bucket=self.bucket, Key=self._key(key), Body=data, **condition,
            )  # fmt: skip
        except (_ConditionFailed, KeyError):  # changed, or deleted, since it was read
            return False
        return True

    def upload(self, key: str, source: Path) -> None:
        self._call(
            "upload",
            key,
            self.client.upload_file,
            str(source),
            self.bucket,
            self._key(key),
            Config=self.transfer,
        )

    def download(self, key: str, dest: Path) -> None:
        self._call(
            "download",
            key,
            self.client.download_file,
            self.bucket,
            self._key(key),
            str(dest),
            Config=self.transfer,
        )

    def exists(self, key: str) -> bool:
        try:
            self._call("check", key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except KeyError:
            return False
        return True

    def children(self, prefix: str) -> list[str]:
        full = self._folder(prefix)
        names: set[str] = set()
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call("list", prefix, paginator.paginate, Bucket=self.bucket, Prefix=full, Delimiter="/")
        for page in pages:
            names.update(p["Prefix"][len(full) :].rstrip("/") for p in page.get("CommonPrefixes", []))
            names.update(o["Key"][len(full) :] for o in page.get("Contents", []))
        return sorted(n for n in names if n and not n.startswith("."))

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def fetch_url(self, key: str, seconds: int) -> str:
        params = {"Bucket": self.bucket, "Key": self._key(key)}
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=seconds)

    def delete_prefix(self, prefix: str) -> None:
        full = self._folder(prefix)
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self._call(
                    "delete", prefix, self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": keys}
                )


def open_store(url: str) -> Store:
    if url.startswith("s3://"):
        return S3Store(url)
    if "://" in url and not url.startswith("file://"):
        raise StoreError(f"{url}: a registry is a folder or s3://bucket/prefix")
    return LocalStore(Path(url.removeprefix("file://")).expanduser())
