"""cluster.yaml is a valid Ray cluster-launcher config, checked by Ray's own validation."""

from __future__ import annotations

from pathlib import Path

import yaml

CLUSTER_YAML = Path(__file__).parent.parent / "cluster.yaml"


def test_cluster_yaml_passes_ray_validation():
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    config = yaml.safe_load(CLUSTER_YAML.read_text())
    validate_config(fillout_defaults(config))
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["resources"]["GPU"] >= 1 and workers["min_workers"] == 0
    assert "GPU" not in config["available_node_types"]["head"]["resources"]
    assert any("latentsweep[gpu,cluster]" in command for command in config["setup_commands"])
    assert all("IamInstanceProfile" in t["node_config"] for t in config["available_node_types"].values())


def test_ray_validation_catches_a_broken_config():
    import jsonschema
    import pytest
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    config = yaml.safe_load(CLUSTER_YAML.read_text())
    config["available_node_types"]["gpu_worker"]["max_workers"] = "many"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(fillout_defaults(config))
