"""Typed config schemas, their registration with Hydra, and validation."""
from adadf.config.schema import FusionConfig, LDPass, TrainerConfig
from adadf.config.store import register_schemas
from adadf.config.validate import instantiate_node, typed_group, validate_config

__all__ = ["FusionConfig", "LDPass", "TrainerConfig", "instantiate_node", "register_schemas", "typed_group",
           "validate_config"]
