"""The one registry of GAN families: the config union, the family list, the builders and the
family-only metrics are all derived from it.

Built in: wgan_gp, began, progan. Another package adds a family through an entry point, e.g.
in its pyproject.toml:

    [project.entry-points."ganforge.families"]
    tiny = "mypackage.tiny_family:TinyFamily"     # a trainers.families.base.Family subclass

Entry points are read once, at import, on the driver and on every Ray worker alike.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Annotated, Union

from pydantic import Field

from trainers.families.base import Family, FamilyConfig
from trainers.families.began import Began
from trainers.families.progan import Progan
from trainers.families.wgan_gp import WganGp
from trainers.prior import LatentPrior

ENTRY_POINT_GROUP = "ganforge.families"

FAMILIES: dict[str, type[Family]] = {}


def register(family: type[Family]) -> type[Family]:
    """Add a Family subclass under its `name` (a second family of the same name is a bug)."""
    assert family.name not in FAMILIES or FAMILIES[family.name] is family, family.name
    assert family.config_class.model_fields["family"].default == family.name, family.name
    FAMILIES[family.name] = family
    return family


for _family in (WganGp, Began, Progan):
    register(_family)
for _entry in entry_points(group=ENTRY_POINT_GROUP):
    register(_entry.load())


def family_config_union():
    """`TrainConfig.model`'s type: one of the registered configs, picked by `family`."""
    configs = tuple(family.config_class for family in FAMILIES.values())
    return Annotated[Union[configs], Field(discriminator="family")]  # noqa: UP007


def family_of(config: FamilyConfig) -> Family:
    """The Family object a `model:` section describes."""
    return FAMILIES[config.family](config)


def family_metric_names() -> set[str]:
    """Names of every registered family's own metrics (BEGAN's m_global, ...)."""
    return {name for family in FAMILIES.values() for name in family.metric_names}


__all__ = ["FAMILIES", "Family", "FamilyConfig", "LatentPrior", "family_of", "register"]
