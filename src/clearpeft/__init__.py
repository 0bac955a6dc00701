"""clearpeft: parameter-efficient fine-tuning on noisy labels with CleaR (Clean Routing)."""

__version__ = "0.1.0"
