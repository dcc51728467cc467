"""Names of the evaluation metrics, in one place: evaluation writes them, the gate and the CLI read them.

A module of its own (no imports) so that the CLI can name them without loading torch.
"""

STYLE = "style_distance"  # relative Gram distance to the painting shown at the frame's size (lower: more painterly)
CONTENT = "content_distance"  # relative VGG feature distance to the photo (lower: more of the photo kept)
ARTEFACT = "artefact_score"  # % of the photo's flat area covered by blobs or halos (quality.artefact_score)
WARPING = "warping_ratio"  # temporal warping error over the input's own (1: as steady as the input)
CPU_FPS = "fps_cpu_640x360"  # network frames/s at 640x360 on the CPU
CUDA_FPS = "fps_cuda_640x360"  # the same on CUDA, when there is a GPU
