"""kdchain: chained knowledge distillation (teacher -> A -> B -> C), the library layer (no Prefect here).

Where things are: spec/ (every setting, the registries of kinds), losses/ (loss terms), data/ (sources/, splits),
models/ (families/, pruning, taps), objectives/ (search objectives), distill/ (the training engine), measure/
(profile, export, plots), tracking/ (MLflow, the only importer of it); a generation's steps (students, chain,
scoring, shipping), resolve, checkpoints, checks, plans, search and promotion at the top.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# Models logged to MLflow before the package split (serialization_format="pickle") name their classes and hooks
# by the modules of that time; these names lead there now, so such a model still loads.
MOVED_MODULES = {"kdchain.resnet": "kdchain.models.families.resnet", "kdchain.zoo": "kdchain.models.families.torchvision",
                 "kdchain.taps": "kdchain.models.taps", "kdchain.models.resnet": "kdchain.models.families.resnet",
                 "kdchain.models.cnn": "kdchain.models.families.cnn", "kdchain.models.timm": "kdchain.models.families.timm",
                 "kdchain.models.torchvision": "kdchain.models.families.torchvision"}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED_MODULES else None

    def create_module(self, spec):
        return importlib.import_module(MOVED_MODULES[spec.name])

    def exec_module(self, module):
        pass


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())

# the spec first, whatever module of kdchain is imported: it imports every kind module (kdchain.spec.kinds) before
# anything else can import one of them half-way
import kdchain.spec  # noqa: E402,F401
