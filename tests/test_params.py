"""params.yaml sections, dvc.yaml stages and typed configs stay in sync."""

from __future__ import annotations

import yaml

from pipelines.dataset.config import BuildDatasetConfig
from tests.conftest import REPO


def test_build_dataset_section_mirrors_the_config_class():
    section = yaml.safe_load((REPO / "params.yaml").read_text())["build_dataset"]
    assert set(section) == set(BuildDatasetConfig.model_fields)
    BuildDatasetConfig(**section)  # and validates


def test_build_dataset_stage_reads_exactly_its_section():
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["build_dataset"]
    assert stage["params"] == ["build_dataset"]
    assert stage["cmd"] == "ganforge data build --params params.yaml"
    assert stage["outs"] == ["${build_dataset.out}"]
