"""modalign: reinforcement learning from human feedback for multimodal models.

Imports are lazy on purpose: `modalign --help` must not pay for torch.
"""

__version__ = "0.1.0"
