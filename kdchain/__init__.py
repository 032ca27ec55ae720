"""kdchain: chained knowledge distillation (teacher -> A -> B -> C), the library layer (no Prefect here)."""

__version__ = "0.1.0"
