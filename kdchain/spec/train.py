"""How one generation trains: optimizer, schedule, precision, the teacher-output cache and stored views."""

from typing import Literal

from pydantic import Field, field_validator, model_serializer

from kdchain.spec.base import Strict


class DistributedSpec(Strict):
    """Data-parallel training of one generation under torch.distributed (elastic launch, as torchrun does)."""

    nproc: int = Field(1, ge=1, description="processes (ranks) per node; 1 = one process, no torch.distributed. "
                       "Each rank trains batch_size / nproc images of every batch (the per-rank batch), so the "
                       "effective batch, the steps per epoch and the learning-rate schedule are those of one process")
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="collective backend: auto = nccl when training on CUDA (one GPU per rank, "
        "cuda:LOCAL_RANK), gloo on the CPU; nccl needs CUDA")
    nnodes: int = Field(1, ge=1, description="nodes taking part; more than 1 needs rdzv_endpoint, the same config "
                        "on every node and a workdir they all share")
    rdzv_endpoint: str | None = Field(None, description="host:port of the c10d rendezvous (e.g. the first node); "
                                      "null = a free port on this machine (one node)")
    rdzv_timeout: int = Field(60, ge=1, description="seconds to wait for every rank to join the rendezvous (and "
                              "to reach its endpoint) before the generation fails")


class TrainSpec(Strict):
    epochs: int = Field(10, ge=1, description="passes over the training split")
    optimizer: Literal["adamw", "adam", "sgd"] = Field("adamw", description="optimizer")
    lr: float = Field(3e-3, gt=0.0, description="peak learning rate")
    weight_decay: float = Field(5e-4, ge=0.0, description="weight decay")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="momentum (sgd only)")
    batch_size: int = Field(64, ge=1, description="training batch size")
    schedule: Literal["cosine", "constant", "onecycle"] = Field("cosine", description="learning-rate schedule")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads; default: the cores not already busy")
    compile: bool = Field(False, description="torch.compile the student's forward (pays a compile once, then faster)")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="forward-pass precision: auto = bf16 autocast where the hardware computes bf16 natively "
        "(CUDA; CPUs with AVX512-BF16 or AMX), fp32 elsewhere; bf16 = always autocast; fp32 = never")
    cache: Literal["auto", "on", "disk", "off"] = Field(
        "auto", description="teacher outputs computed once and reused every epoch when the student sees "
        "un-augmented data: auto = in memory within cache_memory_mb, past it in float16 memory-mapped files in the "
        "generation's workdir (removed when it finishes) if they fit the disk; on = in memory, also past the "
        "budget; disk = always on disk; off = the teacher runs live")
    cache_memory_mb: float = Field(512.0, gt=0.0, description="memory budget of the teacher-output cache (auto)")
    teacher_views: int = Field(
        0, ge=0, le=100, description="FKD (Shen & Xing, ECCV 2022) where the data set augments: the teacher's outputs "
        "for this many seeded augmented views of every training image are computed once, before training, and "
        "stored beside the teacher's checkpoint, where every student of that teacher (search trials, later chain "
        "runs) reads them; each epoch trains on one stored view per image, drawn at random, and no teacher forward "
        "runs during training. 0 = the teacher runs live on every augmented batch")

    retrain_epochs: int | None = Field(None, ge=1, description="epochs a warm retrain (`retrain: {mode: warm}`) "
                                       "trains this generation; null = retrain.epochs_share of `epochs`")
    distributed: DistributedSpec = Field(default_factory=DistributedSpec,
                                         description="data-parallel training over several processes (torch.distributed)")

    @model_serializer(mode="wrap")
    def _defaults_left_out(self, handler):
        # one process and no stored views, the defaults, are left out of the dump: generation keys and chain runs
        # stay as they were before these settings existed
        data = handler(self)
        if isinstance(data, dict):
            if self.distributed == DistributedSpec():
                data.pop("distributed", None)
            if self.teacher_views == 0:
                data.pop("teacher_views", None)
            if self.retrain_epochs is None:
                data.pop("retrain_epochs", None)
        return data

    @field_validator("cache", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):
        # YAML 1.1 reads a bare `cache: on` / `off` as true / false; the user meant the words
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
