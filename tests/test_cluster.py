"""cluster/: the KubeRay manifests, the cluster-launcher config and the runtime env carry
what smotune relies on (trial_driver slots on the head, GPU workers the sweeps fit,
`smotune sweep` as the entrypoint, smotune installed, storage, tracking and credentials
passed through), checked by parsing them. Then the same path on real Ray processes on
this machine: a head started with `ray start --head` in a subprocess, a sweep sent with
the real `ray job submit` client and working dir, token auth on, storage at a file://
URI; and a three-node cluster (ray.cluster_utils.Cluster, in a subprocess) on which one
`smotune train` run's two DDP workers land on different nodes.

These Ray clusters never touch the session's in-process Ray (conftest's `ray_cluster`):
their own ports, temp dir, token and process session, stopped by process id (not with
`ray stop`, which stops every Ray process on the machine).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest
import ray
import yaml
from multinode_train import free_ports
from sessions import session_pids

from smotune import config
from smotune.data import shards, synth

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
VENV_BIN = Path(sys.executable).parent
SWEEP_FILES = ["smoclip-cc3m-vitb32", "smoclip-cc12m-rn50", "rocket-cc3m"]
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|ACCESS_KEY")


def _yaml(relative: str) -> dict:
    return yaml.safe_load((CLUSTER / relative).read_text())


def _sweeps() -> list[config.SweepConfig]:
    return [
        config.load_sweep(ROOT / "search_spaces" / f"{n}.yaml", check_paths=False)
        for n in SWEEP_FILES
    ]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _ray_containers(rc: dict) -> list[dict]:
    """The Ray container (the first) of the head and of every worker group."""
    groups = [rc["spec"]["headGroupSpec"], *rc["spec"]["workerGroupSpecs"]]
    return [g["template"]["spec"]["containers"][0] for g in groups]


def _all_containers(rc: dict) -> list[dict]:
    groups = [rc["spec"]["headGroupSpec"], *rc["spec"]["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _flag(args: list[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value`` in a split command line."""
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name:
            return args[i + 1]
    return None


def _fits(sweep: config.SweepConfig, nodes: int, cpus: float, gpus: float) -> bool:
    """``search.concurrent`` trials of ``workers.num`` workers fit ``nodes`` such nodes."""
    w = sweep.train.workers
    per_node = min(int(cpus // w.cpus) if w.cpus else 10**6, int(gpus // w.gpus))
    return nodes * per_node >= sweep.search.concurrent * w.num


def _no_literal_secrets(container: dict) -> None:
    for name, entry in _env(container).items():
        if SECRET_NAME.search(name):
            assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], name


# ---------------------------------------------------------------- KubeRay


def test_raycluster_head_declares_trial_drivers_and_has_no_gpus():
    rc = _yaml("kuberay/raycluster.yaml")
    assert (rc["apiVersion"], rc["kind"]) == ("ray.io/v1", "RayCluster")
    assert rc["spec"]["rayVersion"] == ray.__version__
    head = rc["spec"]["headGroupSpec"]
    params = head["rayStartParams"]
    # KubeRay passes rayStartParams.resources to `ray start --resources` as a quoted JSON string
    resources = json.loads(json.loads(params["resources"]))
    assert resources == {"trial_driver": max(s.search.concurrent for s in _sweeps())}
    assert params["num-cpus"] == "0" and "num-gpus" not in params
    for c in head["template"]["spec"]["containers"]:
        assert "nvidia.com/gpu" not in c["resources"]["limits"], c["name"]


def test_raycluster_gpu_workers_fit_every_sweep():
    rc = _yaml("kuberay/raycluster.yaml")
    (group,) = rc["spec"]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    gpus, cpus = int(limits["nvidia.com/gpu"]), float(limits["cpu"])
    assert gpus > 0
    trial_drivers = json.loads(
        json.loads(rc["spec"]["headGroupSpec"]["rayStartParams"]["resources"])
    )
    for sweep in _sweeps():
        assert _fits(sweep, group["replicas"], cpus, gpus), sweep.name
        assert sweep.search.concurrent <= trial_drivers["trial_driver"], sweep.name


def test_raycluster_auth_and_credentials_come_from_secrets():
    rc = _yaml("kuberay/raycluster.yaml")
    for c in _ray_containers(rc):
        env = _env(c)
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "auth_token"
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)
    for c in _all_containers(rc):
        _no_literal_secrets(c)
    head_env = _env(_ray_containers(rc)[0])
    for name in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        ref = head_env[name]["valueFrom"]["secretKeyRef"]
        assert ref["optional"] is True, name


def test_raycluster_mounts_what_the_sweeps_read_and_serves_their_tracking_uri():
    rc = _yaml("kuberay/raycluster.yaml")
    head_spec = rc["spec"]["headGroupSpec"]["template"]["spec"]
    ray_head, mlflow = head_spec["containers"]
    # the sweep file's ConfigMap on the head, where the RayJob's entrypoint reads it
    volumes = {v["name"]: v for v in head_spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in ray_head["volumeMounts"]}
    assert "configMap" in volumes[mounts["/etc/smotune"]]
    # the zero-shot set on every Ray container (rank 0 may be on any worker)
    for c in _ray_containers(rc):
        assert "/data" in {m["mountPath"] for m in c["volumeMounts"]}
    for sweep in _sweeps():
        assert sweep.train.data.zeroshot.startswith("/data/")
    # the MLflow sidecar serves the sweeps' tracking.uri inside the head pod
    args = mlflow["command"]
    assert args[:2] == ["mlflow", "server"]
    served = f"http://{_flag(args, '--host')}:{_flag(args, '--port')}"
    assert {s.tracking.uri for s in _sweeps()} == {served}
    assert _flag(args, "--backend-store-uri").startswith("sqlite:////mlflow/")
    assert "/mlflow" in {m["mountPath"] for m in mlflow["volumeMounts"]}
    assert _flag(args, "--artifacts-destination").startswith("s3://")


def test_rayjob_runs_smotune_sweep_on_that_cluster():
    rc = _yaml("kuberay/raycluster.yaml")
    rj = _yaml("kuberay/rayjob.yaml")
    assert (rj["apiVersion"], rj["kind"]) == ("ray.io/v1", "RayJob")
    assert rj["spec"]["clusterSelector"] == {"ray.io/cluster": rc["metadata"]["name"]}
    entry = shlex.split(rj["spec"]["entrypoint"])
    assert entry[:2] == ["smotune", "sweep"] and len(entry) == 3
    mount = next(
        m["mountPath"]
        for m in _ray_containers(rc)[0]["volumeMounts"]
        if entry[2].startswith(m["mountPath"] + "/")
    )
    assert mount == "/etc/smotune"
    runtime_env = yaml.safe_load(rj["spec"]["runtimeEnvYAML"])
    assert runtime_env["env_vars"] == _yaml("runtime_env.yaml")["env_vars"]
    ray.runtime_env.RuntimeEnv(**runtime_env)
    (submitter,) = rj["spec"]["submitterPodTemplate"]["spec"]["containers"]
    env = _env(submitter)
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
    _no_literal_secrets(submitter)
    # one image everywhere: the one cluster/Dockerfile builds
    images = {c["image"] for c in _all_containers(rc)} | {submitter["image"]}
    assert len(images) == 1
    tag = re.search(r"docker build .*-t (\S+) \.", (CLUSTER / "Dockerfile").read_text())
    assert tag and images == {tag.group(1)}


def _kuberay_validate():
    """cluster/kuberay/validate.py, imported from its file (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("kuberay_validate", KUBERAY / "validate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kuberay_manifests_pass_kuberays_fields_and_kubernetes_own_pod_schemas():
    """Both manifests pass the hand-written KubeRay schema and, strict, Kubernetes' schema
    of every pod template and of metadata; every pod template is among those checked."""
    check = _kuberay_validate()
    schema = json.loads((KUBERAY / "schema.json").read_text())
    assert "KubeRay v1.7.0's API reference" in schema["$comment"]
    assert "docs/reference/api.md at tag v1.7.0" in schema["$comment"]
    assert "openAPIV3Schema" not in (KUBERAY / "schema.json").read_text()  # not the CRD
    assert check.KUBERNETES_VERSION == "1.29"
    for name in ("raycluster.yaml", "rayjob.yaml"):
        assert check.check_file(KUBERAY / name) == [], name
    rc, rj = _yaml("kuberay/raycluster.yaml"), _yaml("kuberay/rayjob.yaml")
    assert [check._path(at) for at, _ in check.pod_templates(rc)] == [
        "spec.headGroupSpec.template",
        "spec.workerGroupSpecs[0].template",
    ]
    assert [check._path(at) for at, _ in check.pod_templates(rj)] == ["spec.submitterPodTemplate"]


def _rename(node: dict, old: str, new: str) -> None:
    node[new] = node.pop(old)


def _head(d: dict) -> dict:
    return d["spec"]["headGroupSpec"]


def _group(d: dict) -> dict:
    return d["spec"]["workerGroupSpecs"][0]


MANIFEST_MISTAKES = [
    (
        "raycluster",
        lambda d: _rename(_head(d), "rayStartParams", "rayStartParam"),
        "spec.headGroupSpec: Additional properties are not allowed ('rayStartParam' was",
    ),
    (
        "raycluster",
        lambda d: _rename(d["spec"], "workerGroupSpecs", "workerGroupSpec"),
        "spec: Additional properties are not allowed ('workerGroupSpec' was",
    ),
    (
        "raycluster",
        lambda d: _rename(_group(d), "replicas", "replica"),
        "spec.workerGroupSpecs[0]: Additional properties are not allowed ('replica' was",
    ),
    (
        "raycluster",
        lambda d: _group(d).update(replicas="2"),
        "spec.workerGroupSpecs[0].replicas: '2' is not of type 'integer'",
    ),
    (
        "raycluster",
        lambda d: _group(d).update(minReplicas="two"),
        "spec.workerGroupSpecs[0].minReplicas: 'two' is not of type 'integer'",
    ),
    (
        "raycluster",
        lambda d: _head(d)["rayStartParams"].update({"num-cpus": 0}),
        "spec.headGroupSpec.rayStartParams.num-cpus: 0 is not of type 'string'",
    ),
    (
        "raycluster",
        lambda d: d["spec"].update(rayVersion=2.6),
        "spec.rayVersion: 2.6 is not of type 'string'",
    ),
    (
        "raycluster",
        lambda d: _rename(_head(d)["template"]["spec"]["containers"][0], "resources", "resource"),
        "spec.headGroupSpec.template.spec.containers[0]: Additional properties are not allowed "
        "('resource' was",
    ),
    (
        "raycluster",
        lambda d: _group(d)["template"]["spec"]["containers"][0].update(image=["smotune:0.1.0"]),
        "spec.workerGroupSpecs[0].template.spec.containers[0].image: ['smotune:0.1.0'] is not "
        "of type 'string'",
    ),
    (
        "raycluster",
        lambda d: _rename(_group(d)["template"]["spec"], "tolerations", "toleration"),
        "spec.workerGroupSpecs[0].template.spec: Additional properties are not allowed "
        "('toleration' was",
    ),
    (
        "raycluster",
        lambda d: _rename(d["metadata"], "name", "nmae"),
        "metadata: Additional properties are not allowed ('nmae' was",
    ),
    (
        "rayjob",
        lambda d: d["spec"].update(submissionMode="K8sMode"),
        "spec.submissionMode: 'K8sMode' is not one of",
    ),
    (
        "rayjob",
        lambda d: _rename(d["spec"], "runtimeEnvYAML", "runtimeEnv"),
        "spec: Additional properties are not allowed ('runtimeEnv' was",
    ),
    (
        "rayjob",
        lambda d: d["spec"]["submitterPodTemplate"]["spec"].update(restartPolicy=["Never"]),
        "spec.submitterPodTemplate.spec.restartPolicy: ['Never'] is not of type 'string'",
    ),
    (
        "rayjob",
        lambda d: d.update(apiVersion="ray.io/v1alpha1"),
        "apiVersion: 'ray.io/v1' was expected",
    ),
]


@pytest.mark.parametrize(
    "manifest, edit, expected", MANIFEST_MISTAKES, ids=[m[2][:60] for m in MANIFEST_MISTAKES]
)
def test_a_misspelled_field_or_a_wrong_type_in_a_manifest_is_named(manifest, edit, expected):
    check = _kuberay_validate()
    doc = copy.deepcopy(_yaml(f"kuberay/{manifest}.yaml"))
    edit(doc)
    found = check.problems(doc)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_kuberay_validate_script_names_the_file_and_field(tmp_path):
    """The script the cluster README runs before `kubectl apply`: exit 0 on the manifests,
    exit 1 and one line naming file and field on a broken copy."""
    script = KUBERAY / "validate.py"
    files = [str(KUBERAY / "raycluster.yaml"), str(KUBERAY / "rayjob.yaml")]
    ok = subprocess.run([sys.executable, str(script), *files], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("ok: ")
    broken = tmp_path / "raycluster.yaml"
    text = (KUBERAY / "raycluster.yaml").read_text()
    broken.write_text(
        text.replace("    rayStartParams:\n      num-cpus", "    rayStartParam:\n      num-cpus")
    )
    bad = subprocess.run([sys.executable, str(script), str(broken)], capture_output=True, text=True)
    assert bad.returncode == 1
    (line,) = bad.stdout.splitlines()
    assert line.startswith(f"{broken}: spec.headGroupSpec: ") and "'rayStartParam'" in line


def test_dockerfile_installs_smotune_on_the_matching_ray_image():
    lines = (CLUSTER / "Dockerfile").read_text().splitlines()
    base = next(line.split()[1] for line in lines if line.startswith("FROM "))
    assert base == f"rayproject/ray:{ray.__version__}-py311-gpu"
    copied = " ".join(line for line in lines if line.startswith("COPY "))
    assert "pyproject.toml" in copied and re.search(r"\bsmotune /home/ray/smotune/smotune", copied)
    run = next(shlex.split(line[4:]) for line in lines if line.startswith("RUN pip install"))
    assert "/home/ray/smotune" in run
    # s3:// shards stream through smotune itself (pyarrow, which Ray brings): no aws CLI needed;
    # boto3 stays for the MLflow server's S3 artifact store
    assert "-m smotune.data.objstore" in shards.shard_url("s3://b/x.tar")
    assert "boto3" in run and "awscli" not in run


# ---------------------------------------------------------------- cluster launcher


def test_launcher_config_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(_yaml("aws-gpu.yaml"))))


def test_launcher_head_starts_with_trial_drivers_and_token_auth():
    cfg = _yaml("aws-gpu.yaml")
    head_type = cfg["available_node_types"][cfg["head_node_type"]]
    starts = [c for c in cfg["head_start_ray_commands"] if "ray start --head" in c]
    assert len(starts) == 1
    args = shlex.split(starts[0].split(";", 1)[1])
    assert "RAY_AUTH_MODE=token" in args
    resources = json.loads(_flag(args, "--resources"))
    assert resources == {"trial_driver": max(s.search.concurrent for s in _sweeps())}
    # the autoscaler's view of the head agrees with what ray start declares
    assert head_type["resources"] == {"CPU": 0, **resources}
    assert _flag(args, "--num-cpus") == "0"
    (worker_start,) = [c for c in cfg["worker_start_ray_commands"] if "ray start" in c]
    worker_args = shlex.split(worker_start.split(";", 1)[1])
    assert "RAY_AUTH_MODE=token" in worker_args
    assert _flag(worker_args, "--address") == "$RAY_HEAD_IP:6379"
    # every node gets the client's token file; the client then needs only RAY_AUTH_MODE=token
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_launcher_gpu_workers_fit_every_sweep_and_install_smotune():
    cfg = _yaml("aws-gpu.yaml")
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    (gpu,) = workers.values()
    assert gpu["resources"]["GPU"] > 0 and gpu["min_workers"] == gpu["max_workers"]
    for sweep in _sweeps():
        assert _fits(sweep, gpu["min_workers"], gpu["resources"]["CPU"], gpu["resources"]["GPU"])
    # this checkout goes to every node and is pip-installed there
    assert cfg["file_mounts"]["~/smotune"] == "."
    assert ".gitignore" in cfg["rsync_filter"]
    assert any(
        shlex.split(c)[:2] == ["pip", "install"] and "~/smotune" in c for c in cfg["setup_commands"]
    )
    assert cfg["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    # S3 (shards, storage.path) from the instance profile `ray up` creates, on workers too
    assert gpu["node_config"]["IamInstanceProfile"] == {"Name": "ray-autoscaler-v1"}


def test_launcher_head_serves_the_sweeps_tracking_uri():
    cfg = _yaml("aws-gpu.yaml")
    (command,) = [c for c in cfg["head_start_ray_commands"] if "mlflow server" in c]
    args = shlex.split(command[command.index("mlflow server") :])
    served = f"http://{_flag(args, '--host')}:{_flag(args, '--port')}"
    assert {s.tracking.uri for s in _sweeps()} == {served}
    for sweep in _sweeps():
        assert urlparse(sweep.storage.path).scheme == "s3"


# ---------------------------------------------------------------- runtime env and README


def test_runtime_env_is_what_ray_job_submit_accepts():
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args

    path = CLUSTER / "runtime_env.yaml"
    # exactly what `ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml` builds
    env = parse_runtime_env_args(runtime_env=str(path), working_dir=".")
    ray.runtime_env.RuntimeEnv(**env)
    assert set(env) == {"working_dir", "excludes", "env_vars"}
    assert all(isinstance(v, str) for v in env["env_vars"].values())
    assert not [k for k in env["env_vars"] if SECRET_NAME.search(k)]
    assert env["env_vars"]["RAY_TRAIN_V2_ENABLED"] == "1"


def test_readme_walks_through_submit_watch_stop_and_names_real_files():
    text = (CLUSTER / "README.md").read_text()
    for needle in (
        "ray job submit --address",
        "--working-dir .",
        "--runtime-env cluster/runtime_env.yaml",
        "-- smotune sweep search_spaces/",
        "ray job logs -f",
        "ray job stop",
        "RAY_AUTH_MODE=token",
        "RAY_AUTH_TOKEN",
        "MLFLOW_TRACKING_TOKEN",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "storage.path",
        "tracking.uri",
        "file://",
    ):
        assert needle in text, needle
    for name in set(re.findall(r"search_spaces/[\w.-]+\.yaml", text)):
        assert (ROOT / name).is_file(), name
    for name in set(re.findall(r"cluster/[\w./-]+\.(?:yaml|py)", text)):
        assert (ROOT / name).is_file(), name


# ---------------------------------------------------------------- real Ray processes


def _free_port_range(taken: set[int], size: int = 100) -> tuple[int, int]:
    """``size`` consecutive free ports (for a node's worker processes), none of ``taken``
    (ports already given to the node's other components: they are free, not yet bound)."""
    for start in range(30000 + secrets.randbelow(200) * 100, 60000, 100):
        if any(start <= port < start + size for port in taken):
            continue
        socks = []
        try:
            for port in range(start, start + size):
                s = socket.socket()
                socks.append(s)
                s.bind(("", port))
            return start, start + size - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free port range")


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without Ray's settings, the venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def _stop_session(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """Stop a process started with start_new_session=True and everything in its session."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = session_pids(proc.pid)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                continue
        deadline = time.time() + 10
        while pids and time.time() < deadline:
            time.sleep(0.2)
            pids = session_pids(proc.pid)
        if not pids:
            return


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers (401 without a token): the server is up
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout:.0f} s\n{log.read_text()[-3000:]}")


def _job_sweep(work: Path, tmp: Path, name: str, file: str = "sweep.yaml", at: str = "") -> Path:
    """A demo-sized sweep (2 trials, 2 epochs) whose data sit in the job's working dir (read
    from there, or from ``at``: the data's absolute folder)."""
    if not (work / "data" / "synth").is_dir():
        synth.generate(work / "data" / "synth", train_samples=512, shards=4, eval_per_class=2)
    data = {
        "name": name,
        "train": {
            "model": {"arch": "tiny-vit"},
            "data": {
                "train": f"{at or 'data/synth'}/train-{{0000..0003}}.tar",
                "zeroshot": f"{at or 'data/synth'}/zeroshot",
                "samples_per_epoch": 128,
                "loader_workers": 0,
            },
            "optim": {"lr": 1e-3, "warmup_steps": 2, "batch_size": 64},
            "epochs": 2,
            "workers": {"num": 1, "cpus": 1},  # the job path is tested, not DDP
        },
        "space": {"loss.label_smoothing": {"uniform": [0.0, 0.3]}},
        "search": {"algo": "random", "samples": 2, "concurrent": 1, "seed": 0},
        "schedule": {"asha": {"grace": 1, "reduction": 2}},
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "experiment": name},
        "storage": {"path": f"file://{tmp}/runs"},
    }
    path = work / file
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.ray
def test_ray_job_submit_runs_a_sweep_on_a_ray_start_head(tmp_path):
    name = "jobsweep"
    work = tmp_path / "work"
    work.mkdir()
    _job_sweep(work, tmp_path, name)
    token, canary = secrets.token_hex(32), secrets.token_hex(16)
    ports = dict(
        zip(
            [
                "port",
                "dashboard-port",
                "ray-client-server-port",
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "metrics-export-port",
                "runtime-env-agent-port",
                "node-manager-port",
                "object-manager-port",
            ],
            free_ports(9),
            strict=True,
        )
    )
    low, high = _free_port_range(set(ports.values()))
    temp_dir = tempfile.mkdtemp(prefix="smo-ray-", dir="/tmp")  # short: socket paths
    head_cmd = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        *(f"--{flag}={port}" for flag, port in ports.items()),
        f"--min-worker-port={low}",
        f"--max-worker-port={high}",
        "--num-cpus=2",
        '--resources={"trial_driver": 1}',
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    # The head's environment is the job's: the venv's smotune on PATH, the token for the
    # driver's ray.init, and an MLflow credential that must never reach MLflow. RAY_ADDRESS
    # lets Ray Train's PlacementGroupCleaner (an actor that calls the State API without an
    # address) find this cluster while other Ray instances run on the machine; without it
    # it dies with "Found multiple active Ray instances", the finished trial's placement
    # group is never removed and the next trial waits for CPUs forever.
    head_env = _clean_env(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        RAY_ADDRESS=f"127.0.0.1:{ports['port']}",
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        RAY_JOB_STOP_WAIT_TIME_S="60",  # as cluster/README.md sets it: `ray job stop` below
        MLFLOW_TRACKING_TOKEN=canary,
    )
    client_env = _clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    ray_bin = str(VENV_BIN / "ray")
    head_log = tmp_path / "head.log"
    started, passed = time.perf_counter(), False
    with head_log.open("w") as log:
        head = subprocess.Popen(
            head_cmd, env=head_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_http(f"{address}/api/version", head, head_log)
        up = time.perf_counter()

        # without the cluster's token the job API refuses
        refused = subprocess.run(
            [ray_bin, "job", "list", "--address", address],
            env=_clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode != 0
        assert re.search(r"[Aa]uthentication|401|[Uu]nauthorized", refused.stdout + refused.stderr)

        submission = f"smotune-{secrets.token_hex(4)}"
        submit = subprocess.run(
            [
                ray_bin,
                "job",
                "submit",
                "--address",
                address,
                "--submission-id",
                submission,
                "--working-dir",
                str(work),
                "--runtime-env",
                str(CLUSTER / "runtime_env.yaml"),
                "--",
                "smotune",
                "sweep",
                "sweep.yaml",
            ],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        done = time.perf_counter()
        out = submit.stdout + submit.stderr
        assert submit.returncode == 0, out[-5000:] + head_log.read_text()[-2000:]
        status = subprocess.run(
            [ray_bin, "job", "status", "--address", address, submission],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert re.search(rf"Job '{submission}' succeeded", status.stdout + status.stderr)
        logs = subprocess.run(
            [ray_bin, "job", "logs", "--address", address, submission],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        assert "zeroshot_top1" in logs and "best.yaml" in logs
        assert token not in out + logs and canary not in out + logs

        # the command `smotune best --format cmd` prints, run exactly as printed from the
        # sweep's folder, which git-ignores best.yaml and data/ as this repository does
        for ignore in (".gitignore", ".rayignore"):
            shutil.copy(ROOT / ignore, work / ignore)
        best = subprocess.run(
            [str(VENV_BIN / "smotune"), "best", "--experiment", name, "--tracking-uri"]
            + [f"sqlite:///{tmp_path}/mlflow.db", "--format", "cmd", "--address", address],
            cwd=work,
            env=client_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert best.returncode == 0, best.stderr
        printed = best.stdout.strip().splitlines()[-1]
        switches = "RAY_AUTH_MODE=token RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1 "
        assert printed.startswith(switches), printed
        trained = subprocess.run(
            ["bash", "-c", printed],
            cwd=work,
            env=_clean_env(RAY_AUTH_TOKEN=token),  # RAY_AUTH_MODE is the line's own
            capture_output=True,
            text=True,
            timeout=400,
        )
        said = trained.stdout + trained.stderr
        assert trained.returncode == 0 and re.search(r"Job '\S+' succeeded", said), said[-4000:]
        assert "final: epoch=2" in said  # smotune train's last line, from the job's logs
        assert list((work / "runs").glob("best-*/checkpoint_*/model.pt"))  # --storage as printed
        # what the job got: best.yaml, not the git-ignored data or the venv
        uploads = Path(temp_dir) / "session_latest" / "runtime_resources" / "working_dir_files"
        (shipped,) = [p.parent for p in uploads.glob("*/.rayignore")]  # the sweep's had none
        assert (shipped / "best.yaml").is_file() and (work / "data").is_dir()
        assert not (shipped / "data").exists() and not (shipped / "runs").exists()

        # `ray job stop` at the worst moment: as a trial's worker group starts. The sweep
        # takes the SIGTERM as Ctrl-C: it ends its runs and leaves no placement group
        _job_sweep(work, tmp_path, "jobstop", "stop.yaml", str(work / "data" / "synth"))
        stopped_id = f"smotune-stop-{secrets.token_hex(4)}"
        job = [ray_bin, "job"]
        where = ["--address", address]
        subprocess.run(
            [*job, "submit", *where, "--no-wait", "--submission-id", stopped_id]
            + ["--working-dir", str(work), "--runtime-env", str(CLUSTER / "runtime_env.yaml")]
            + ["--", "smotune", "sweep", "stop.yaml"],
            env=client_env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        deadline = time.monotonic() + 300

        def job_logs() -> str:
            return subprocess.run(
                [*job, "logs", *where, stopped_id],
                env=client_env,
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout

        while not re.search(r"^\[search\] trial \S+ started ", said := job_logs(), re.M):
            assert time.monotonic() < deadline and "\nsmotune: " not in said, said[-3000:]
            time.sleep(0.3)
        subprocess.run(
            [*job, "stop", *where, stopped_id],
            env=client_env,
            check=True,
            timeout=120,
            capture_output=True,
        )
        status = subprocess.run(
            [*job, "status", *where, stopped_id],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert f"Job '{stopped_id}' was stopped" in status.stdout, status.stdout + status.stderr
        said = job_logs()
        assert "the sweep ended early (interrupted)" in said, said[-3000:]
        groups: list[dict] = []
        for _ in range(20):  # Ray removes a group asynchronously
            listed = subprocess.run(
                [ray_bin, "list", "placement-groups", *where, "--detail", "--format", "json"],
                env=client_env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            groups = [g for g in json.loads(listed.stdout) if g["state"] != "REMOVED"]
            if not groups:
                break
            time.sleep(0.5)
        assert not groups, groups
        stop_runs = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
        stop_exp = stop_runs.get_experiment_by_name("jobstop")
        left = stop_runs.search_runs([stop_exp.experiment_id])
        assert left and not [r for r in left if r.info.status == "RUNNING"]
        passed = True
    finally:
        _stop_session(head)
        ray_logs = Path(temp_dir) / "session_latest" / "logs"
        if not passed and ray_logs.is_dir():  # keep Ray's logs of a failed run
            shutil.copytree(ray_logs, tmp_path / "ray-logs", symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(temp_dir, ignore_errors=True)
    print(
        f"\nray start --head: {up - started:.1f} s; ray job submit (2 trials): "
        f"{done - up:.1f} s; stop: {time.perf_counter() - done:.1f} s"
    )

    # the sweep's runs in MLflow: one parent, a nested child per trial, no secret logged
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("kind") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    assert all(r.info.status == "FINISHED" for r in runs)
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.data.tags["status"] in ("completed", "early_stopped")
    for r in runs:
        logged = json.dumps([r.data.params, r.data.tags])
        assert canary not in logged and token not in logged

    # storage at a file:// URI: Tune's experiment and each trial's checkpoints are there
    experiment = f"file://{tmp_path}/runs/{name}"
    from ray import tune

    assert tune.Tuner.can_restore(experiment)
    trials = (tmp_path / "runs" / name / "train").glob("train-*/checkpoint_*")
    checkpoints = [c for c in trials if c.is_dir()]
    assert len(checkpoints) == 2 and all((c / "model.pt").is_file() for c in checkpoints)
    for child in children:
        tagged = child.data.tags["checkpoint"]
        assert Path(urlparse(tagged).path if "://" in tagged else tagged).is_dir(), tagged
    # and smotune sees that sweep there: a second start is refused, pointing at --resume
    again = subprocess.run(
        [str(VENV_BIN / "smotune"), "sweep", "sweep.yaml"],
        cwd=work,
        env=client_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2 and "--resume" in again.stderr, again.stderr


@pytest.mark.ray
def test_one_runs_two_workers_train_with_ddp_on_two_nodes(tmp_path):
    """ray.cluster_utils.Cluster: a head (trial_driver, 0 CPU) and two 1-CPU worker nodes."""
    synth_data = tmp_path / "data"
    synth.generate(synth_data, train_samples=512, shards=4, eval_per_class=2)
    train = tmp_path / "train.yaml"
    train.write_text(
        yaml.safe_dump(
            {
                "model": {"arch": "tiny-vit"},
                "data": {
                    "train": str(synth_data / "train-{0000..0003}.tar"),
                    "zeroshot": str(synth_data / "zeroshot"),
                    "samples_per_epoch": 128,
                    "loader_workers": 0,
                },
                "optim": {"lr": 1e-3, "warmup_steps": 2, "batch_size": 64},
                "epochs": 1,
                "workers": {"num": 2, "cpus": 1},
            }
        )
    )
    temp_dir = tempfile.mkdtemp(prefix="smo-ray-", dir="/tmp")
    # A fresh, empty HOME and Ray temp root, as on a machine where Ray never ran: nothing an
    # earlier Ray left (/tmp/ray, ~/.ray) helps or hurts, and Cluster's ray_current_cluster
    # goes to RAY_TMPDIR/ray, never to the /tmp/ray that other Ray instances here share.
    home, ray_tmp = tmp_path / "home", tmp_path / "ray-tmpdir"
    home.mkdir()
    ray_tmp.mkdir()
    env = _clean_env(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_TMPDIR=str(ray_tmp),
        HOME=str(home),
    )
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests" / "multinode_train.py"),
            str(train),
            f"file://{tmp_path}/runs",
            temp_dir,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        _stop_session(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert proc.returncode == 0, out[-3000:] + err[-5000:]
    report = json.loads(out.strip().splitlines()[-1])
    nodes = [w["node_id"] for w in report["train_workers"]]
    print(
        f"\nthree-node cluster + one 2-worker train run: {time.perf_counter() - started:.1f} s; "
        f"Train workers on nodes {', '.join(n[:8] for n in nodes)} "
        f"(head {report['head'][:8]})"
    )

    # Cluster wrote its address into the fresh Ray temp root (the dir multinode_train.py made)
    assert report["address_file"] == str(ray_tmp / "ray" / "ray_current_cluster")
    assert report["address_file_holds"] == report["gcs_address"]
    # the two DDP workers ran on the two worker nodes, one each, none on the head
    assert len(nodes) == 2 and set(nodes) == set(report["worker_nodes"])
    # one Train worker group of two ranks, the model wrapped in DistributedDataParallel
    # (Ray Train numbers nodes by IP address: on one machine both ranks show node_rank=0)
    assert "Started training worker group of size 2" in err and "world_rank=1" in err
    assert "Wrapping provided model in DistributedDataParallel" in err
    # and the run trained through DDP's collectives to a reported epoch and checkpoint
    final = report["final"]
    assert final["epoch"] == 1 and final["step"] == 2
    assert 0 < final["train_loss"] < 20
    assert (Path(final["checkpoint"]) / "model.pt").is_file()
    assert Path(final["checkpoint"]).is_relative_to(tmp_path / "runs" / "multinode")
