"""s3:// shards and an s3:// storage.path against a real S3-compatible server (moto_server).

No Ray here: the loader over real tar shards uploaded to the server, the sweep's
storage checks and its record, the missing-bucket line of a real ``smotune sweep``.
The sweep that trains on and stores to the server is in ``test_sweep_s3.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_shards import all_captions, captions_of, clip_io, config, keys_in, write_shards

from smotune import sweep
from smotune.config import load_sweep
from smotune.data.shards import SkipCounter, make_loader, shard_url
from smotune.errors import UserError

__all__ = ["clip_io"]  # the module fixture of test_shards, used here too


def _upload(s3, bucket: str, paths: list[str]) -> list[str]:
    return [s3.upload(Path(p), f"{bucket}/cc/{Path(p).name}") for p in paths]


@pytest.mark.parametrize("workers", [0, 2])
def test_s3_shards_are_read_by_the_loader(s3_env, tmp_path, clip_io, workers):
    preprocess, tokenizer = clip_io
    paths = write_shards(tmp_path, shards=4, per_shard=6)
    urls = _upload(s3_env, s3_env.bucket(f"shards-read-{workers}"), paths)
    texts = all_captions(keys_in(paths))
    for url in urls:  # the command that reads a shard names no credential
        assert s3_env.secret not in shard_url(url) and "smotune-test-key" not in shard_url(url)
    remote_spec = urls[0].replace("s-00.tar", "s-{00..03}.tar")
    for rank in range(2):
        seen = []
        for train in (paths, remote_spec):
            # a small shuffle buffer: each refill of a large one would open every shard again
            cfg = config(
                tmp_path, train, samples_per_epoch=10, shuffle_buffer=4, loader_workers=workers
            )
            loader = make_loader(
                cfg, preprocess, tokenizer, rank, 2, epoch=1, skipped=SkipCounter()
            )
            seen.append(captions_of(loader, tokenizer, texts))
        local, remote = seen
        assert len(remote) == 10  # 5 batches of 2
        assert {texts[c] for c in remote} <= set(keys_in(paths[rank::2]))
        assert remote == local  # the same seeded stream from the same bytes


def test_a_missing_s3_shard_is_one_line(s3_env, tmp_path, clip_io):
    preprocess, tokenizer = clip_io
    url = s3_env.bucket("shards-missing") + "/cc/nope-0.tar"
    cfg = config(tmp_path, [url], samples_per_epoch=4)
    loader = make_loader(cfg, preprocess, tokenizer, 0, 1, 0, SkipCounter())
    with pytest.raises(UserError, match="none of the 1 shards of rank 0 could be read"):
        list(loader)
    done = subprocess.run(
        [sys.executable, "-m", "smotune.data.objstore", url], capture_output=True, text=True
    )
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"smotune: cannot read {url}: "), done.stderr
    assert s3_env.secret not in done.stderr


def test_s3_storage_holds_the_sweep_record_and_the_probe(
    s3_env, tmp_path, sqlite_uri, minimal_sweep
):
    bucket = s3_env.bucket("sweeps-probe")
    path = minimal_sweep(
        "s3checks", f"{bucket}/runs", sqlite_uri, storage=f"sqlite:///{tmp_path}/optuna.db"
    )
    cfg = load_sweep(path)
    where = str(path)
    experiment = sweep._check_start(cfg, where, resume=False)
    assert experiment == "s3://sweeps-probe/runs/s3checks"
    store = s3_env.filesystem()
    with store.open_input_stream(f"sweeps-probe/runs/s3checks/{sweep.SWEEP_RECORD}") as f:
        assert json.loads(f.readall()) == cfg.model_dump(mode="json")

    # a resume reads the record back from the bucket and names what changed
    edited = cfg.model_copy(deep=True)
    edited.train.optim.lr = 0.5
    with pytest.raises(UserError, match=r"train.optim.lr \(0.001 -> 0.5\)"):
        sweep._check_unchanged(edited, experiment, where)
    sweep._check_unchanged(cfg, experiment, where)

    # the probe of a resume is written and removed
    sweep._write_record(cfg, experiment, where, resume=True)
    names = {i.base_name for i in store.get_file_info(_selector("sweeps-probe/runs/s3checks"))}
    assert names == {sweep.SWEEP_RECORD}

    # no Tune state in the bucket yet: --resume says so in one line
    with pytest.raises(UserError, match="no interrupted sweep to resume at s3://sweeps-probe"):
        sweep._check_start(cfg, where, resume=True)


def _selector(path: str):
    from pyarrow import fs

    return fs.FileSelector(path, recursive=True)


def test_a_missing_bucket_is_one_line_before_ray_starts(
    s3_server, tmp_path, sqlite_uri, minimal_sweep, bare_sweep
):
    path = minimal_sweep(
        "s3checks",
        "s3://no-such-bucket/runs",
        sqlite_uri,
        storage=f"sqlite:///{tmp_path}/optuna.db",
    )
    done = bare_sweep(path, **s3_server.env)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "storage.path: bucket s3://no-such-bucket does not exist; fix:" in lines[0]
    assert s3_server.secret not in done.stdout + done.stderr
    assert not (tmp_path / "ray").exists()  # no Ray session was started


def test_a_missing_bucket_on_resume_is_the_same_line(s3_env, tmp_path, sqlite_uri, minimal_sweep):
    path = minimal_sweep(
        "s3checks",
        "s3://no-such-bucket/runs",
        sqlite_uri,
        storage=f"sqlite:///{tmp_path}/optuna.db",
    )
    with pytest.raises(UserError, match="bucket s3://no-such-bucket does not exist"):
        sweep._check_start(load_sweep(path), str(path), resume=True)


@pytest.mark.parametrize("field", ["storage", "shards"])
def test_credentials_in_a_uri_are_refused_without_showing_them(
    tmp_path, sqlite_uri, field, minimal_sweep
):
    secret_uri = "s3://AKIAEXAMPLE:hunter2-secret@bucket/runs"
    path = minimal_sweep(
        "s3checks",
        secret_uri if field == "storage" else "runs",
        sqlite_uri,
        storage=f"sqlite:///{tmp_path}/optuna.db",
    )
    cfg = load_sweep(path)
    if field == "shards":
        cfg.train.data.train = [str(tmp_path / "train-0000.tar"), f"{secret_uri}/0.tar"]
    with pytest.raises(UserError) as err:
        sweep._check_start(cfg, str(path), resume=False)
    assert "names credentials in the URI" in str(err.value)
    assert "hunter2" not in str(err.value) and "\n" not in str(err.value)
