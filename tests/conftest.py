"""Shared fixtures: one local Ray cluster for the whole session, synthetic data made once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray (2 CPUs, a `trial_driver` resource for trial drivers) for all tests."""
    import ray

    from smotune.ray_cluster import start_local_ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if not ray.is_initialized():
        start_local_ray(
            num_cpus=2,
            resources={"trial_driver": 2, "smotune_test_slot": 1000},  # the latter for
            # test_ray_cluster's placement groups, which Ray's accounting can lose
            include_dashboard=True,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small synthetic data set (train shards + zero-shot set), generated once per session."""
    from smotune.data import synth

    out = tmp_path_factory.mktemp("synth")
    synth.generate(out, train_samples=3072, shards=4, eval_per_class=8, seed=0)
    return out


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory) -> Path:
    """An empty MLflow sqlite database, made once: MLflow's migrations of a new one take seconds."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments(max_results=1)
    return path


@pytest.fixture
def minimal_sweep(tmp_path):
    """Writes a sweep file over an empty shard and zero-shot dir: enough for the checks a
    sweep makes before Ray starts. ``minimal_sweep(name, storage, uri, **search)``."""
    import yaml

    def write(name: str, storage_path: str, uri: str, **search) -> Path:
        (tmp_path / "zs").mkdir(exist_ok=True)
        (tmp_path / "train-0000.tar").write_bytes(b"")
        data = {
            "name": name,
            "train": {
                "data": {
                    "train": str(tmp_path / "train-0000.tar"),
                    "zeroshot": str(tmp_path / "zs"),
                }
            },
            "space": {"loss.label_smoothing": {"uniform": [0.0, 0.2]}},
            "search": search,
            "tracking": {"uri": uri},
            "storage": {"path": storage_path},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return write


@pytest.fixture
def bare_sweep(tmp_path):
    """Runs ``smotune sweep PATH`` as a new user's shell would, in a bare environment (plus
    ``env``) whose HOME and RAY_TMPDIR are in ``tmp_path``: a Ray start would leave tmp_path/ray."""
    import subprocess
    import sys

    def run(path: Path, **env: str) -> subprocess.CompletedProcess:
        bare = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RAY_TMPDIR": str(tmp_path / "ray")}
        return subprocess.run(
            [sys.executable, "-m", "smotune", "sweep", str(path)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env={**bare, **env},
        )

    return run


@pytest.fixture
def sqlite_uri(migrated_db, tmp_path) -> str:
    """A fresh MLflow sqlite store in ``tmp_path`` (a copy of the migrated empty one)."""
    shutil.copy(migrated_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


class S3Server:
    """A real S3-compatible server (moto's server mode) on 127.0.0.1 and the env that reaches it."""

    def __init__(self, endpoint: str, secret: str):
        self.endpoint = endpoint
        self.secret = secret
        self.env = {
            "AWS_ACCESS_KEY_ID": "smotune-test-key",
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def filesystem(self):
        """A pyarrow S3 filesystem on this server that may create buckets (for test set-up)."""
        from pyarrow import fs

        return fs.S3FileSystem(
            access_key=self.env["AWS_ACCESS_KEY_ID"],
            secret_key=self.secret,
            endpoint_override=self.endpoint,
            region="us-east-1",
            allow_bucket_creation=True,
        )

    def bucket(self, name: str) -> str:
        self.filesystem().create_dir(name)
        return f"s3://{name}"

    def upload(self, local: Path, url: str) -> str:
        path = url.removeprefix("s3://")
        with self.filesystem().open_output_stream(path) as out:
            out.write(Path(local).read_bytes())
        return url


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A ``moto_server`` subprocess on a free 127.0.0.1 port, stopped at the end of the session."""
    import secrets
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    server = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
            break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, "moto_server did not start"
            time.sleep(0.2)
    yield S3Server(endpoint, "smotune-test-secret-" + secrets.token_hex(8))
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> S3Server:
    """``s3_server`` with its AWS_* variables set in this test's environment (and only there)."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (sqlite backend, proxied artifacts); its URI."""
    from mlflow_server import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start(timeout=90)
    yield server.uri
    server.stop()
