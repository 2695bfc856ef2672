"""Training: the LightningModule, EMA and callbacks (the data module lives in grndiff.data), and
the small flows over vectors (:func:`train_vector_flow`, :class:`LatentNBFlow`)."""
from .callbacks import LossHistory, ScoreStopping
from .checkpoint import AtomicCheckpointIO, safe_load
from .ema import EMA
from .flow_module import BACKBONES, FlowModule, build_backbone, register_backbone
from .latent_flow import LatentNBFlow, train_vector_flow

__all__ = ["AtomicCheckpointIO", "safe_load", "BACKBONES", "EMA", "FlowModule", "LossHistory", "ScoreStopping",
           "build_backbone", "register_backbone", "LatentNBFlow", "train_vector_flow"]
