"""Connecting to S3 (or any S3-compatible server) the way the AWS tools do, and saying what went wrong.

The client is obstore (chosen by measurement, docs/decisions.md "Object storage").
Its configuration comes from the standard AWS sources, read through boto3's
session so that everything the AWS CLI honours is honoured here too:

* the endpoint: ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, or ``endpoint_url``
  in the profile (MinIO, Ceph, R2, GCS interoperability...); none means AWS;
* the region: ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` or the profile's;
* the profile: ``AWS_PROFILE``;
* credentials: boto3's whole chain (environment, shared files, SSO, a
  credential process, web identity / IRSA, container and instance roles),
  refreshed as they expire.

Nothing of this goes into a spec, a store or a log: a store is named by its
``s3://bucket/prefix`` alone, and errors name the bucket and the cause, never a key.
"""

from __future__ import annotations

import functools
import os
from datetime import timedelta
from typing import Any

from zarr.core.buffer import Buffer
from zarr.storage import ObjectStore

from storage.errors import InputError, StoreError

__all__ = ["StoreAccessError", "SinglePutObjectStore", "s3_store", "explain_s3_error"]

#: Environment variables that change which bucket endpoint and identity a client gets.
_AWS_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN")


class StoreAccessError(InputError):
    """The store's location cannot be used: no credentials, wrong ones, no such bucket, no answer."""


def _retry_config() -> dict[str, Any]:
    # A handful of quick retries: an endpoint that does not answer is said in
    # seconds (exit 2), not after object_store's default three minutes.
    return {
        "max_retries": 4,
        "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2), "base": 2.0},
        "retry_timeout": timedelta(seconds=20),
    }


def _configured_endpoint(session: Any) -> str | None:
    """The endpoint AWS configuration names for S3, or None for AWS's own."""
    import botocore.config

    configured = session.client("s3").meta.endpoint_url
    default = session.client("s3", config=botocore.config.Config(ignore_configured_endpoint_urls=True)).meta.endpoint_url
    return configured if configured != default else None


def s3_store(bucket: str, prefix: str, *, requester_pays: bool = False) -> Any:
    """An obstore ``S3Store`` for ``prefix/`` in ``bucket``, configured from the environment (cached per process).

    Raises
    ------
    StoreAccessError
        No credentials anywhere in the AWS chain.
    """
    environment = tuple(os.environ.get(name) for name in _AWS_ENV)
    return _cached_store(bucket, prefix.strip("/"), requester_pays, environment)


@functools.lru_cache(maxsize=64)
def _cached_store(bucket: str, prefix: str, requester_pays: bool, environment: tuple[str | None, ...]) -> Any:
    # ``environment`` is part of the key only: a changed AWS configuration gets a new client.
    import boto3
    from obstore.auth.boto3 import Boto3CredentialProvider
    from obstore.store import S3Store

    session = boto3.Session()
    if session.get_credentials() is None:
        raise StoreAccessError(
            f"no AWS credentials for s3://{bucket}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or AWS_PROFILE, or run where a role provides them",
            params=("store",),
        )
    endpoint = _configured_endpoint(session)
    config: dict[str, Any] = {"region": session.region_name or "us-east-1"}
    if endpoint is not None:
        config["endpoint"] = endpoint
    if requester_pays:
        config["request_payer"] = True
    client_options: dict[str, Any] = {"connect_timeout": "5s", "timeout": "300s",
                                      "allow_http": bool(endpoint and endpoint.startswith("http://"))}
    return S3Store(bucket, prefix=prefix or None, config=config, client_options=client_options, retry_config=_retry_config(),
                   credential_provider=Boto3CredentialProvider(session))


def explain_s3_error(exc: Exception, uri: str) -> Exception:
    """The dmsweep error for an obstore failure at ``uri``: one line, no credentials in it."""
    text = str(exc)
    causes = (
        ("NoSuchBucket", "the bucket does not exist"),
        ("InvalidAccessKeyId", "the access key is not known to the server (check the AWS credentials)"),
        ("SignatureDoesNotMatch", "the secret key does not match the access key (check the AWS credentials)"),
        ("ExpiredToken", "the AWS session token has expired"),
        ("AccessDenied", "access denied (the identity lacks a permission; see deploy/aws/iam-s3-policy.json)"),
        ("error sending request", "the endpoint does not answer (check AWS_ENDPOINT_URL / the network)"),
        ("dns error", "the endpoint's host name does not resolve"),
    )
    for marker, cause in causes:
        if marker in text:
            return StoreAccessError(f"cannot use {uri}: {cause}", params=("store",))
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return StoreError(f"object store request failed at {uri}: {first[:300]}")


class SinglePutObjectStore(ObjectStore):  # type: ignore[type-arg]
    """zarr's obstore-backed store, writing every chunk as one PUT.

    zarr's own switches to a multipart upload above 5 MB (a block of 256 models
    at CIFAR shapes); one PUT keeps a chunk write a single atomic request, as the
    store's design says, and S3 takes single PUTs up to 5 GB.
    """

    async def set(self, key: str, value: Buffer) -> None:
        import obstore

        self._check_writable()
        await obstore.put_async(self.store, key, value.as_buffer_like(), use_multipart=False)
