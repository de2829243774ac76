"""cfcl: pixel-level counterfactual contrastive learning for medical image segmentation.

A reference replication of Lafargue-Hauret et al., ISBI 2026 (arXiv 2603.17110).
"""
from cfcl.config import get_profile

__all__ = ["get_profile"]
__version__ = "0.1.0"
