"""params.yaml sections, dvc.yaml stages and typed configs stay in sync."""

from __future__ import annotations

import pytest
import yaml

from pipelines.dataset.config import BuildDatasetConfig
from tests.conftest import REPO
from trainers.metrics import RealStatisticsConfig

STAGES = {  # stage = params section -> config class, command
    "build_dataset": (BuildDatasetConfig, "ganforge data build --params params.yaml"),
    "real_statistics": (RealStatisticsConfig, "ganforge data stats --params params.yaml"),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_section_mirrors_the_config_class(stage):
    section = yaml.safe_load((REPO / "params.yaml").read_text())[stage]
    config_class, _ = STAGES[stage]
    assert set(section) == set(config_class.model_fields)
    config_class(**section)  # and validates


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_reads_exactly_its_section(stage):
    found = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    assert found["params"] == [stage]
    assert found["cmd"] == STAGES[stage][1]


def test_statistics_are_computed_from_the_built_dataset():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert stages["build_dataset"]["outs"] == ["${build_dataset.out}"]
    assert "${build_dataset.out}" in stages["real_statistics"]["deps"]
    assert stages["real_statistics"]["outs"] == ["${real_statistics.data}.stats"]
