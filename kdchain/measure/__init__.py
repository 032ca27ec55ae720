"""What a generation costs and how it ships: profile (params, FLOPs, latency, size), export (ONNX, checked and
timed against torch), plots (the chain's pictures, pure matplotlib)."""
