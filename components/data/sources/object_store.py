"""S3 and S3-compatible stores (MinIO) through boto3.

`s3://bucket/key` is one object; `s3://bucket/prefix/` (or a key that is no object but has
objects under `key/`) is every Parquet/CSV part under it, read as one table. The endpoint comes
from `AWS_ENDPOINT_URL` (boto3 reads it), credentials from boto3's chain (environment, profile,
web identity, instance or pod role).

The fingerprint is the sorted list of (ETag, size) of the parts, from one LIST (or HEAD) call:
an ETag changes whenever an object's bytes do, and re-uploading the same bytes in one part
keeps it, so the fingerprint follows the data and not the upload. (A multipart upload's ETag
depends on its part size too: the same bytes uploaded with another part size read as a change,
which costs a re-run, never a missed change.)
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import parse_qs, urlsplit

import pandas as pd

from components.data.sources import concat_parts, is_table_file, read_table_bytes, stem
from components.errors import DataSourceError

# What boto3 calls each place it found credentials, in words a user can act on.
_CREDENTIAL_SOURCES = {
    "env": "the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
    "shared-credentials-file": "the shared credentials file (~/.aws/credentials)",
    "config-file": "the AWS config file (~/.aws/config)",
    "assume-role": "an assumed role (AWS config file)",
    "assume-role-with-web-identity": "a web identity token (AWS_WEB_IDENTITY_TOKEN_FILE, e.g. IRSA)",
    "container-role": "the container credentials endpoint (ECS / EKS pod identity)",
    "iam-role": "the instance metadata service (instance role)",
    "sso": "AWS SSO (AWS config file)",
    "custom-process": "a credential_process (AWS config file)",
}
_PARALLEL_READS = 8


@dataclass(frozen=True)
class S3Object:
    key: str
    etag: str
    size: int
    version_id: str | None = None


@dataclass(frozen=True)
class S3Source:
    bucket: str
    key: str
    version_id: str | None = None

    @classmethod
    def from_url(cls, text: str) -> S3Source:
        parts = urlsplit(text)
        if not parts.netloc:
            raise DataSourceError(f"{text}: no bucket; write s3://BUCKET/KEY or s3://BUCKET/PREFIX/")
        version = parse_qs(parts.query).get("versionId", [None])[0]
        return cls(parts.netloc, parts.path.lstrip("/"), version)

    @property
    def url(self) -> str:
        suffix = f"?versionId={self.version_id}" if self.version_id else ""
        return f"s3://{self.bucket}/{self.key}{suffix}"

    @property
    def name(self) -> str:
        return stem(self.key) if self.key else self.bucket

    @cached_property
    def _session(self):
        import boto3

        return boto3.session.Session()

    @cached_property
    def _client(self):
        from botocore.config import Config

        config = Config(
            retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60
        )
        return self._session.client("s3", config=config)

    def objects(self) -> list[S3Object]:
        """The parts this URL names, from what the store lists (no object is downloaded)."""
        with self._errors():
            if self.key and not self.key.endswith("/"):
                single = self._head(self.key)
                if single is not None:
                    return [single]
                if self.version_id:
                    raise DataSourceError(f"{self.url}: no such key or version")
            prefix = self.key if not self.key or self.key.endswith("/") else self.key + "/"
            listed = self._list(prefix)
        if not listed:
            if self.key and not self.key.endswith("/"):
                raise DataSourceError(f"s3://{self.bucket}/{self.key}: no such key")
            raise DataSourceError(f"s3://{self.bucket}/{prefix}: empty prefix: no objects under it")
        tables = [o for o in listed if is_table_file(o.key)]
        if not tables:
            shown = ", ".join(o.key.rsplit("/", 1)[-1] for o in listed[:3])
            raise DataSourceError(
                f"s3://{self.bucket}/{prefix}: no Parquet or CSV objects under it (found {shown})"
            )
        return tables

    def fingerprint(self) -> str:
        described = sorted(f"{o.etag}:{o.size}" for o in self.objects())
        return "s3:" + hashlib.sha256("\n".join(described).encode()).hexdigest()

    def read(self) -> pd.DataFrame:
        parts = self.objects()
        with self._errors(), ThreadPoolExecutor(min(_PARALLEL_READS, len(parts))) as pool:
            frames = list(pool.map(self._read_object, parts))
        return concat_parts(frames, self.url)

    def _read_object(self, obj: S3Object) -> pd.DataFrame:
        extra = {"VersionId": obj.version_id} if obj.version_id else {}
        body = self._client.get_object(Bucket=self.bucket, Key=obj.key, **extra)["Body"].read()
        return read_table_bytes(body, f"s3://{self.bucket}/{obj.key}")

    def _head(self, key: str) -> S3Object | None:
        from botocore.exceptions import ClientError

        extra = {"VersionId": self.version_id} if self.version_id else {}
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=key, **extra)
        except ClientError as exc:
            # HEAD answers carry no body: a missing bucket and a missing key are both 404, and
            # LIST (next) tells them apart.
            code = exc.response.get("Error", {}).get("Code")
            if code in {"404", "NoSuchKey", "NotFound"}:
                return None
            if code == "403":  # for the reason (unknown key, bad secret, policy), ask a GET
                self._client.get_object(Bucket=self.bucket, Key=key, Range="bytes=0-0", **extra)
            raise
        return S3Object(key, head["ETag"].strip('"'), head["ContentLength"], head.get("VersionId"))

    def _list(self, prefix: str) -> list[S3Object]:
        paginator = self._client.get_paginator("list_objects_v2")
        found = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            found += [
                S3Object(o["Key"], o["ETag"].strip('"'), o["Size"])
                for o in page.get("Contents", [])
                if not o["Key"].endswith("/")  # "folder" placeholder objects
            ]
        return found

    def _errors(self) -> _S3Errors:
        return _S3Errors(self)


class _S3Errors:
    """Turns boto3's exceptions into one line naming the bucket, key, endpoint or credential
    source, never a credential."""

    def __init__(self, source: S3Source):
        self.source = source

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        if exc is None or isinstance(exc, DataSourceError):
            return False
        where = self.source.url
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            raise DataSourceError(
                f"{where}: no S3 credentials found (looked in the environment, ~/.aws, web "
                "identity and instance roles); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ) from None
        if isinstance(exc, ConnectionError):
            raise DataSourceError(
                f"{where}: cannot reach the S3 endpoint {_endpoint(self.source)}"
            ) from None
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code, message = error.get("Code", ""), error.get("Message", "")
            if code == "NoSuchBucket":
                raise DataSourceError(f"s3://{self.source.bucket}: no such bucket") from None
            if code in {"NoSuchKey", "NoSuchVersion", "404"}:
                raise DataSourceError(f"{where}: no such key") from None
            credentials = _credential_source(self.source)
            if code == "InvalidAccessKeyId":
                raise DataSourceError(
                    f"{where}: access denied: the access key from {credentials} is not known "
                    f"to {_endpoint(self.source)}"
                ) from None
            if code == "SignatureDoesNotMatch":
                raise DataSourceError(
                    f"{where}: access denied: the secret key from {credentials} does not match "
                    "its access key"
                ) from None
            if code in {"AccessDenied", "403", "AllAccessDisabled", "InvalidToken", "ExpiredToken"}:
                raise DataSourceError(
                    f"{where}: access denied ({code}) for the credentials from {credentials}"
                ) from None
            raise DataSourceError(f"{where}: {code or 'error'}: {message}".rstrip(": ")) from None
        return False


def _endpoint(source: S3Source) -> str:
    endpoint = source._client.meta.endpoint_url
    origin = "from AWS_ENDPOINT_URL" if os.environ.get("AWS_ENDPOINT_URL") else "AWS default"
    return f"{endpoint} ({origin})"


def _credential_source(source: S3Source) -> str:
    credentials = source._session.get_credentials()
    method = getattr(credentials, "method", None)
    return _CREDENTIAL_SOURCES.get(method, method or "an unknown source")
