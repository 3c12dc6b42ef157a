"""Typed config schemas and validation (the only place that reads a DictConfig)."""
from adadf.config.schema import FusionConfig, LDPass, TrainerConfig
from adadf.config.validate import instantiate_node, typed, validate_config

__all__ = ["FusionConfig", "LDPass", "TrainerConfig", "instantiate_node", "typed", "validate_config"]
