"""Training: the LightningModule, EMA and callbacks (the data module lives in grndiff.data)."""
from .callbacks import LossHistory
from .checkpoint import AtomicCheckpointIO, safe_load
from .ema import EMA
from .flow_module import BACKBONES, FlowModule, build_backbone, register_backbone

__all__ = ["AtomicCheckpointIO", "safe_load", "BACKBONES", "EMA", "FlowModule", "LossHistory", "build_backbone",
           "register_backbone"]
