"""Training methods (the ``method`` config group): Ada-DF and the baselines it is compared with."""
from adadf.methods.base import Batch, DualOutputs, HeadOutputs, Method, Outputs, Reducer

__all__ = ["Batch", "DualOutputs", "HeadOutputs", "Method", "Outputs", "Reducer"]
