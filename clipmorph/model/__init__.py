"""The network, the VGG loss network, model folders (safetensors + config.json) and ONNX export."""
