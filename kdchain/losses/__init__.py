"""Loss terms, one module per `kind`: its spec class (decorated with kdchain.spec.kinds.LOSSES.register) and how
it is computed. A new term is a new module here and its test; kdchain.spec lists it in configs, the schema and
error messages, and kdchain.distill.losses.DistillLoss sums it with the others.

Each term's `value(student_out, teacher_out, y, adapter)` gets the outputs as dicts {"logits": (N, K), node:
(N, C, H, W) or (N, D)} (kdchain.models.taps.Tapped), the labels y (N,), and its trained adapter (or None).
"""
