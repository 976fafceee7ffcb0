from .config import LorettaRepConfig
from .layer import LorettaRepLayer
from .model import LorettaRepModel

__all__ = ["LorettaRepConfig", "LorettaRepLayer", "LorettaRepModel"]
