"""Format and precision changes of a model, each checked against its source."""

TARGETS = ("safetensors", "bf16", "fp16", "int8", "onnx", "gguf")
