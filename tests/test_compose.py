"""compose.yaml is not run here (no Docker engine); check that it says what we promise."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_runs_redis_with_aof_and_scalable_consumers() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = {
        name: service for name, service in compose["services"].items() if "profiles" not in service
    }
    assert set(services) == {"redis", "consumer", "minio", "minio-bucket"}
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[0] == "redis-server"
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert redis_cmd[redis_cmd.index("--appendfsync") + 1] == "everysec"
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    consumer = services["consumer"]
    assert consumer["build"] == "."
    assert consumer["command"][:2] == ["tracetags", "serve"]
    url = consumer["command"][consumer["command"].index("--redis-url") + 1]
    assert url == "redis://redis:6379/0"
    assert consumer["depends_on"]["redis"]["condition"] == "service_healthy"
    assert consumer["deploy"]["replicas"] >= 1


def test_compose_archives_the_log_to_minio() -> None:
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    env = services["consumer"]["environment"]
    assert env["TRACETAGS_ARCHIVE_URL"].startswith("s3://tracetags/")
    assert env["TRACETAGS_ARCHIVE_S3_ENDPOINT"] == "http://minio:9000"
    assert services["minio"]["command"][:2] == ["server", "/data"]
    assert "mc mb --ignore-existing local/tracetags" in services["minio-bucket"]["command"][0]
    depends = services["consumer"]["depends_on"]["minio-bucket"]
    assert depends["condition"] == "service_completed_successfully"


def test_dockerfile_installs_the_package_and_runs_serve() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir ." in dockerfile
    assert 'CMD ["tracetags", "serve"]' in dockerfile


def test_the_cluster_profile_runs_consumers_on_3_primaries_with_a_replica_each() -> None:
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    profiled = {
        name for name, service in services.items() if "cluster" in service.get("profiles", [])
    }
    nodes = {f"redis-node-{n}" for n in range(1, 7)}
    assert profiled == nodes | {"redis-cluster-init", "consumer-cluster"}
    for name in nodes:
        command = services[name]["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert command[command.index("--appendonly") + 1] == "yes"
    init = services["redis-cluster-init"]["command"][0]
    assert "--cluster create" in init and "--cluster-replicas 1" in init
    assert set(services["redis-cluster-init"]["depends_on"]) == nodes
    consumer = services["consumer-cluster"]
    url = consumer["command"][consumer["command"].index("--redis-url") + 1]
    assert url == "redis+cluster://redis-node-1:7000"
    assert consumer["depends_on"]["redis-cluster-init"]["condition"] == (
        "service_completed_successfully"
    )
