"""Export: ONNX export and verification, the torch-free runtime, toon-infer and toon-serve."""
