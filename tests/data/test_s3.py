"""Shards on S3 (a local moto server): index, one epoch of the loader, the train entry's check."""

from __future__ import annotations

import pytest

pytest.importorskip("s3fs", reason='s3 support is an extra: pip install -e ".[s3]"')
moto_server = pytest.importorskip("moto.server", reason="moto[server] runs the local S3")

from usvs_dist.config.schema import DataConfig  # noqa: E402
from usvs_dist.data.pipeline import EpochLoader  # noqa: E402
from usvs_dist.data.shards import index_sha256, load_index  # noqa: E402
from usvs_dist.dist.collectives import free_port  # noqa: E402

BUCKET = "usvs-test"


@pytest.fixture()
def s3_shards(phantom_shards, monkeypatch):
    """The phantom shards uploaded under s3://usvs-test/shards/ of a moto server on a free port."""
    import boto3
    import s3fs

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # What a user sets for any S3-compatible store (README); s3fs passes it to botocore.
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # a cached filesystem would keep another endpoint
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=BUCKET)
    for path in sorted(phantom_shards.iterdir()):
        client.upload_file(str(path), BUCKET, f"shards/{path.name}")
    yield f"s3://{BUCKET}/shards"
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def test_the_loader_reads_an_epoch_from_s3(s3_shards, phantom_shards):
    assert load_index(s3_shards) == load_index(phantom_shards)
    assert index_sha256(s3_shards) == index_sha256(phantom_shards)
    cfg = DataConfig(batch_size=2, loader_workers=0)
    remote = EpochLoader(cfg, s3_shards, rank=0, world_size=1, audio=False)
    local = EpochLoader(cfg, phantom_shards, rank=0, world_size=1, audio=False)
    assert all(s.url.startswith(f"{s3_shards}/") for s in remote.shards)
    keys = [k for batch in remote.epoch(0) for k in batch["__key__"]]
    assert keys == [k for batch in local.epoch(0) for k in batch["__key__"]]
    assert len(keys) == remote.plan(0).batches_per_rank * cfg.batch_size > 0


def test_the_train_entry_checks_s3_shards_before_ray(s3_shards, tmp_path, monkeypatch, capsys):
    from usvs_dist.config import load_config
    from usvs_dist.train.preflight import check_data

    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, [f"data.shards={s3_shards}", "data.batch_size=2"])
    assert check_data(cfg, cfg.data.shards, log_fn=lambda *_: None).shards == s3_shards
    from usvs_dist.train.__main__ import main as train_main

    assert train_main([f"data.shards=s3://{BUCKET}/nothing-here"]) == 2
    assert f"data.shards='s3://{BUCKET}/nothing-here': no index.json there" in capsys.readouterr().err
