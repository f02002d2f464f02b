"""Where artifacts live: a local path or a URI that pyarrow knows (s3://, gs://, hdfs://, ...).

Every place that reads or writes a run, a checkpoint or training data goes through these helpers, so
that a cloud bucket works wherever a folder does. Credentials and endpoints come from the standard
environment, as pyarrow and boto3 read it: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_SESSION_TOKEN`, `AWS_ENDPOINT_URL` (MinIO, moto, other S3-compatible stores), `AWS_REGION`;
`GOOGLE_APPLICATION_CREDENTIALS` for gs://.

Remote artifacts are used through a local cache (`FIZZBOT_CACHE`, default `~/.cache/fizzbot`):
downloads go to a hidden partial folder and are renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

# The variables that locate and open a bucket, and the cache: forwarded to Ray processes (workers,
# replicas) that may have started before they were set.
STORAGE_ENV_VARS = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "GOOGLE_APPLICATION_CREDENTIALS", "FIZZBOT_CACHE",
)


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def cache_root() -> Path:
    return Path(os.environ.get("FIZZBOT_CACHE") or Path.home() / ".cache" / "fizzbot")


def storage_env() -> dict[str, str]:
    """The storage variables set in this process (for Ray workers and replicas)."""
    return {name: os.environ[name] for name in STORAGE_ENV_VARS if os.environ.get(name)}


def filesystem(path: str | Path):
    """(pyarrow filesystem, path on it) for a local path or a URI.

    S3 is built from the environment explicitly (endpoint, region, keys) so that the filesystem object
    carries them when pickled to other Ray processes, which may have started without those variables.
    """
    import pyarrow.fs as pafs

    text = str(path)
    if not is_uri(text):
        return pafs.LocalFileSystem(), str(Path(text).resolve())
    if text.startswith("s3://"):
        env = os.environ
        kwargs = {}
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if endpoint:
            kwargs["endpoint_override"] = endpoint
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            kwargs.update(access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"])
            if env.get("AWS_SESSION_TOKEN"):
                kwargs["session_token"] = env["AWS_SESSION_TOKEN"]
        return pafs.S3FileSystem(**kwargs), text[len("s3://"):].rstrip("/")
    return pafs.FileSystem.from_uri(text)


def join(base: str | Path, *parts: str) -> str | Path:
    """`base/part/...`: a Path for a local base, a string for a URI."""
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return Path(base).joinpath(*parts)


def name_of(path: str | Path) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def exists(path: str | Path) -> bool:
    import pyarrow.fs as pafs

    fs, where = filesystem(path)
    return fs.get_file_info(where).type != pafs.FileType.NotFound


def is_file(path: str | Path) -> bool:
    import pyarrow.fs as pafs

    fs, where = filesystem(path)
    return fs.get_file_info(where).type == pafs.FileType.File


def is_dir(path: str | Path) -> bool:
    import pyarrow.fs as pafs

    fs, where = filesystem(path)
    return fs.get_file_info(where).type == pafs.FileType.Directory


def list_dirs(path: str | Path) -> list[str]:
    """Names of the folders directly under `path` (none when it does not exist)."""
    import pyarrow.fs as pafs

    fs, where = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(where, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def remove_dir(path: str | Path) -> None:
    """Delete the folder `path` and everything in it (local or in a bucket)."""
    fs, where = filesystem(path)
    fs.delete_dir(where)


def file_sizes(path: str | Path) -> dict[str, int]:
    """Every file under the folder `path`, by path relative to it, with its size in bytes."""
    import pyarrow.fs as pafs

    fs, where = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(where, recursive=True, allow_not_found=True))
    prefix = where.rstrip("/") + "/"
    return {i.path[len(prefix):]: i.size for i in infos if i.type == pafs.FileType.File}


def read_bytes(path: str | Path) -> bytes:
    fs, where = filesystem(path)
    with fs.open_input_stream(where) as stream:
        return stream.read()


def read_text(path: str | Path) -> str:
    return read_bytes(path).decode("utf-8")


def write_text(path: str | Path, text: str) -> None:
    """Write a small file (atomically on a local disk; an object store's put is atomic already)."""
    if not is_uri(path):
        from fizzbot.artifacts.io import atomic_write_text

        atomic_write_text(path, text)
        return
    fs, where = filesystem(path)
    with fs.open_output_stream(where) as stream:
        stream.write(text.encode("utf-8"))


def upload_dir(local: Path, destination: str | Path) -> None:
    """Copy a local folder's files to `destination` (a URI or a local folder), merging."""
    import pyarrow.fs as pafs

    fs, where = filesystem(destination)
    fs.create_dir(where, recursive=True)
    pafs.copy_files(str(local), where, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def download(source: str | Path, destination: Path, *, files: list[str] | None = None) -> Path:
    """Copy a remote folder (or only `files` of it) into the local folder `destination`, atomically:
    it appears complete or not at all."""
    import pyarrow.fs as pafs

    from fizzbot.artifacts.io import atomic_directory

    fs, where = filesystem(source)
    with atomic_directory(destination) as staging:
        if files is None:
            pafs.copy_files(where, str(staging), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        else:
            for name in files:
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                pafs.copy_files(f"{where}/{name}", str(target), source_filesystem=fs,
                                destination_filesystem=pafs.LocalFileSystem())
    return destination


def cache_dir(kind: str, uri: str) -> Path:
    """A local folder for a copy of `uri`: readable name, and a hash so that two URIs never share one."""
    digest = hashlib.blake2b(uri.encode(), digest_size=6).hexdigest()
    return cache_root() / kind / f"{name_of(uri)}-{digest}"


@contextlib.contextmanager
def file_lock(target: Path):
    """An exclusive lock (between processes of this machine) on making `target`."""
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
