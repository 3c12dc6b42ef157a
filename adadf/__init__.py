"""adadf: Ada-DF facial expression recognition as a Hydra-configured experiment framework."""

__version__ = "0.1.0"
