"""tritonctl: publish, serve and shift models on NVIDIA Triton Inference Server."""

from manager.errors import ManagerError

__all__ = ["ManagerError"]
