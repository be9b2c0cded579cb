"""Re-export of climp.config_mixin for modules not yet moved to that name."""
from climp.config_mixin import FromDict

__all__ = ["FromDict"]
