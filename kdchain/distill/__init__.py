"""Distillation: loss terms (losses), the training engine (engine.fit), the teacher side and its output cache
(teacher), the teacher's stored views under augmentation (views: the FKD recipe), evaluation (evaluate), device,
precision and memory format (device), atomic files and the resume state (state), data-parallel training over
several processes (distributed)."""

from kdchain.distill.device import autocast, free_cores, pick_device, use_bf16
from kdchain.distill.distributed import RankFailed
from kdchain.distill.engine import Diverged, EpochReport, FitResult, fit
from kdchain.distill.evaluate import evaluate, predict, predict_split
from kdchain.distill.losses import DistillLoss
from kdchain.distill.state import StateUnreadable, atomic_save, load_train_state
from kdchain.distill.teacher import Teachers

__all__ = ["autocast", "free_cores", "pick_device", "use_bf16", "Diverged", "EpochReport", "FitResult", "fit",
           "evaluate", "predict", "predict_split", "DistillLoss", "StateUnreadable", "atomic_save",
           "load_train_state", "Teachers", "RankFailed"]
