"""kdchain checkpoints (`model.pt`: the architecture as JSON, input shape, classes, state_dict; the format is
kdchain.models.saved), read with weights_only=True and never unpickling code; and the checkpoint a
`teacher: {from: ...}` names."""

from pathlib import Path

from torch import nn

from kdchain.data import input_info
from kdchain.distill import atomic_save
from kdchain.models.saved import ARCH, checkpoint_dict, model_from_checkpoint, read_checkpoint
from kdchain.spec import ChainSpec, SpecError


class CheckpointError(Exception):
    pass


def save_checkpoint(path: Path, model: nn.Module, arch, input_shape, num_classes: int,
                    class_names: list[str] | None = None) -> None:
    """`class_names`: what each output means, in output order (plain strings: weights_only reads them)."""
    atomic_save(checkpoint_dict(model, arch, input_shape, num_classes, class_names), path)


def load_checkpoint(path: Path) -> tuple[nn.Module, object, dict]:
    """(model in eval mode, its Arch, the raw checkpoint); read with weights_only=True, never unpickling code.
    The model's `class_names` attribute names its outputs (None for a checkpoint written before they were kept)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = read_checkpoint(path)  # a workdir model.pt or a logged model's model.pth (kdchain.models.saved)
        arch = ARCH.validate_json(ckpt["arch"])
        model = model_from_checkpoint(ckpt)
    except Exception as e:  # truncated file, foreign pickle, missing keys, shape mismatch
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")[:200]
        raise CheckpointError(f"checkpoint {path} cannot be used ({type(e).__name__}: {first})") from None
    return model.eval(), arch, ckpt


def load_compatible(spec: ChainSpec, path: Path) -> nn.Module:
    """A checkpoint's model, checked against the current data (input shape, number of classes)."""
    model, _, ckpt = load_checkpoint(path)
    input_shape, num_classes = input_info(spec.data)
    if tuple(ckpt["input_shape"]) != tuple(input_shape) or ckpt["num_classes"] != num_classes:
        raise CheckpointError(f"model {path} takes {tuple(ckpt['input_shape'])} inputs with {ckpt['num_classes']} "
                              f"classes; the data {spec.data.kind} has {tuple(input_shape)} and {num_classes}")
    return model


def is_model_uri(source: str) -> bool:
    return source.startswith(("models:/", "runs:/"))


def teacher_source(spec: ChainSpec, tracking_uri: str | None = None) -> Path | None:
    """The local checkpoint a `teacher: {from: ...}` names; MLflow URIs are fetched (once) under the workdir."""
    source = spec.teacher.from_
    return None if source is None else model_source(spec, source, "teacher.from", tracking_uri)


def warm_source(spec: ChainSpec, index: int, tracking_uri: str | None = None) -> Path | None:
    """The local checkpoint generation `index` (0 = the teacher) starts from (`warm_start`), or None."""
    source = spec.teacher.warm_start if index == 0 else spec.generations[index - 1].warm_start
    field = "teacher.warm_start" if index == 0 else f"generations.{index - 1}.warm_start"
    return None if source is None else model_source(spec, source, field, tracking_uri)


def model_source(spec: ChainSpec, source: str, field: str, tracking_uri: str | None = None) -> Path:
    """The local checkpoint a config field names: a file, or a models:/ or runs:/ URI fetched (once) under the
    workdir. A source that leads nowhere is a SpecError naming `field`."""
    if is_model_uri(source):
        from kdchain import tracking  # the only mlflow importer

        uri = tracking.resolve_uri(tracking_uri, spec.tracking.uri)
        try:
            return tracking.fetch_checkpoint(source, uri, Path(spec.workdir) / "sources")
        except tracking.CheckpointSourceError as e:  # a config mistake: the config's file and field name it
            raise SpecError([str(e).replace("teacher.from:", f"{field}:", 1)]) from None
    path = Path(source).expanduser()
    if not path.is_file():
        raise SpecError([f"{field}: {source!r} is neither a models:/ or runs:/ URI nor an existing checkpoint "
                         "file; give e.g. models:/<name>@champion or the path of a generation's model.pt"])
    return path


def pin_teacher(spec: ChainSpec, tracking_uri: str | None = None) -> ChainSpec:
    """`models:/<name>@champion` -> `models:/<name>/<version>` (the alias may move while the chain runs), and the
    checkpoint fetched now from this store; later look-ups find the file."""
    source = spec.teacher.from_
    if source is None or not is_model_uri(source):
        return spec
    from kdchain import tracking

    uri = tracking.resolve_uri(tracking_uri, spec.tracking.uri)
    if source.startswith("models:/") and "@" in source:
        spec = spec.model_copy(update={"teacher": spec.teacher.model_copy(
            update={"from_": tracking.pin_model_uri(source, uri)})})
    teacher_source(spec, uri)
    return spec


def read_arch(path: Path):
    """The architecture stored in a kdchain checkpoint (so `derive` works from a loaded teacher)."""
    return load_checkpoint(path)[1]
