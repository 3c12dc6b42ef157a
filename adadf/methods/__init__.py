"""Training methods (the ``method`` config group): Ada-DF and the baselines it is compared with."""
from adadf.methods.base import Method, Outputs, Reducer

__all__ = ["Method", "Outputs", "Reducer"]
