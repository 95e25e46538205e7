"""One `smotune train` run on a three-node Ray cluster on this machine, for test_cluster.py.

    python tests/multinode_train.py TRAIN_YAML STORAGE TEMP_DIR

The head holds the trial_driver slot and no CPU; two worker nodes have one CPU each, so
the run's two workers (1 CPU each) can only run on different nodes. Every node gets its
own ports, and the cluster its own temp dir, so this runs next to other Ray instances
(test_cluster.py also gives it its own RAY_TMPDIR and HOME, so the address file that Cluster
writes, ray_current_cluster, never reaches another Ray's /tmp/ray).
It runs in a process of its own because a driver can join only one cluster. Prints one
JSON line: the run's final metrics, the node of each Ray Train worker and the node ids.
"""

from __future__ import annotations

import json
import os
import socket
import sys


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports (also used by test_cluster.py)."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


WORKER_NODES = 2  # beside the head, one CPU each
NODE_PORTS = [
    "dashboard_agent_listen_port",
    "metrics_agent_port",
    "metrics_export_port",
    "runtime_env_agent_port",
]


def _node_ports(pool: list[int]) -> dict[str, int]:
    """A node's ports, taken from ``pool`` (one ``free_ports`` call for all the nodes: ports
    of separate calls are free when asked, not bound, so two calls could give the same)."""
    return {name: pool.pop() for name in NODE_PORTS}


def main(train_yaml: str, storage: str, temp_dir: str) -> None:
    gcs_port, dashboard_port, *pool = free_ports(2 + (1 + WORKER_NODES) * len(NODE_PORTS))
    # Ray Train's PlacementGroupCleaner asks the State API without an address; with more
    # than one Ray instance on the machine only RAY_ADDRESS tells it which one is ours.
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{gcs_port}"

    import ray
    from ray._common.utils import get_ray_address_file
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    from smotune import config, ray_cluster, trial

    # Cluster writes the head's address to <RAY_TMPDIR or TMPDIR or /tmp>/ray/ray_current_cluster
    # and does not create that directory: on a machine where Ray never ran it would fail.
    os.makedirs(os.path.dirname(get_ray_address_file(None)), exist_ok=True)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "resources": {ray_cluster.TRIAL_DRIVER: 1},
            "temp_dir": temp_dir,
            "gcs_server_port": gcs_port,
            "include_dashboard": True,
            "dashboard_port": dashboard_port,
            **_node_ports(pool),
        },
    )
    try:
        workers = [
            cluster.add_node(num_cpus=1, temp_dir=temp_dir, **_node_ports(pool))
            for _ in range(WORKER_NODES)
        ]
        cluster.wait_for_nodes()
        address_file = get_ray_address_file(None)
        with open(address_file) as f:
            address_file_holds = f.read().strip()
        ray.init(address=cluster.address)
        cfg = config.load_train(train_yaml)
        final = trial.run_train(cfg, storage=storage, name="multinode")
        actors = list_actors(
            address=cluster.address,
            filters=[("class_name", "=", "RayTrainWorker")],
            detail=True,
            raise_on_missing_output=False,
        )
        print(
            json.dumps(
                {
                    "final": {k: v for k, v in final.items() if isinstance(v, int | float | str)},
                    "train_workers": [{"node_id": a.node_id, "pid": a.pid} for a in actors],
                    "head": cluster.head_node.node_id,
                    "worker_nodes": [w.node_id for w in workers],
                    "address_file": address_file,
                    "address_file_holds": address_file_holds,
                    "gcs_address": cluster.gcs_address,
                }
            ),
            flush=True,
        )
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
