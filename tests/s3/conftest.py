"""A real S3-compatible server for the suite: moto's standalone server, its own process, over HTTP.

moto (``moto[server]``) answers the S3 REST API on 127.0.0.1 and honours
conditional writes (If-None-Match / If-Match, 412 on a lost race) and, with
``INITIAL_NO_AUTH_ACTION_COUNT``, checks credentials (IAM users and keys), so
the code under test talks to it exactly as to AWS: through obstore, boto3's
configuration chain and real HTTP.

The endpoint and test credentials are put in the environment when this file is
imported, during collection and so before the session's Ray starts: Ray's
local workers inherit the environment of that moment, and a worker finds the
bucket the way it would on a cluster, from its own AWS configuration. Nothing
here reaches beyond the loopback address (instance metadata is switched off).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from waiting import wait_until

__all__ = ["S3Server", "free_port", "s3_environment", "start_moto"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def s3_environment(endpoint: str, *, key: str = "dmsweep-test", secret: str = "dmsweep-test-secret") -> dict[str, str]:
    """Standard AWS variables naming a local endpoint, and no other source of configuration."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask 169.254.169.254 for a role
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


MAIN_PORT = free_port()
MAIN_ENDPOINT = f"http://127.0.0.1:{MAIN_PORT}"
for _name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_name, None)
os.environ.update(s3_environment(MAIN_ENDPOINT))


@dataclass(frozen=True)
class S3Server:
    """A running moto server and a bucket in it."""

    endpoint: str
    bucket: str
    process: subprocess.Popen[bytes]

    def client(self, **credentials: str):  # -> botocore S3 client
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=credentials.get("key", "dmsweep-test"),
                            aws_secret_access_key=credentials.get("secret", "dmsweep-test-secret"))

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def start_moto(port: int, *, auth_after: int | None = None) -> subprocess.Popen[bytes]:
    """moto's server on 127.0.0.1:``port``; with ``auth_after``, credentials are checked after that many requests."""
    env = dict(os.environ)
    if auth_after is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(auth_after)
    # Its own working directory: moto's request recorder writes a file there.
    workdir = tempfile.mkdtemp(prefix="dmsweep-moto-")
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=workdir)

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"moto exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return False
        return True

    wait_until(answers, timeout=60, what=f"moto on port {port}")
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """The suite's S3 server (any credentials accepted) with the bucket ``dmsweep-test``."""
    process = start_moto(MAIN_PORT)
    try:
        server = S3Server(endpoint=MAIN_ENDPOINT, bucket="dmsweep-test", process=process)
        server.client().create_bucket(Bucket=server.bucket)
        yield server
    finally:
        _stop(process)


@dataclass(frozen=True)
class AuthServer:
    """A moto server that checks credentials, with one IAM user allowed s3:* and a bucket."""

    endpoint: str
    bucket: str
    key: str
    secret: str


@pytest.fixture(scope="session")
def s3_auth_server() -> Iterator[AuthServer]:
    import json

    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # Three unauthenticated requests create the user, its policy and its key; then keys are checked.
    process = start_moto(port, auth_after=3)
    try:
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="dmsweep")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="dmsweep", PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="dmsweep")["AccessKey"]
        server = AuthServer(endpoint=endpoint, bucket="dmsweep-auth", key=key["AccessKeyId"],
                            secret=key["SecretAccessKey"])
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=server.key,
                     aws_secret_access_key=server.secret).create_bucket(Bucket=server.bucket)
        yield server
    finally:
        _stop(process)
