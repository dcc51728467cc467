"""Stylizing frames and videos: torch or onnxruntime runtime, tiling, flow stabilisation, decode/encode."""
