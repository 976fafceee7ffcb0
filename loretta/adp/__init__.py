from .config import LorettaAdpConfig
from .layer import LorettaAdpLayer
from .model import LorettaAdpModel

__all__ = ["LorettaAdpConfig", "LorettaAdpLayer", "LorettaAdpModel"]
