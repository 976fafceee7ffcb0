from .config import LorettaAdpConfig
from .layer import LorettaAdpBlock, LorettaAdpLayer
from .model import LorettaAdpModel

__all__ = ["LorettaAdpConfig", "LorettaAdpBlock", "LorettaAdpLayer", "LorettaAdpModel"]
