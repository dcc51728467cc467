"""`make bench`: every benchmark in one run, so the numbers are comparable."""

import bench_network
import bench_pipeline

if __name__ == "__main__":
    bench_network.main()
    bench_pipeline.main([])
