"""How one generation trains: optimizer, schedule, precision, the teacher-output cache."""

from typing import Literal

from pydantic import Field, field_validator

from kdchain.spec.base import Strict


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

    @field_validator("cache", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):
        # YAML 1.1 reads a bare `cache: on` / `off` as true / false; the user meant the words
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
