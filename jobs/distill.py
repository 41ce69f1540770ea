"""Ray job: Distil the best teacher into a small student (mbta-ray distill).

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/distill.py --help

Takes the same options as `mbta-ray distill`; give --root (and --registry) as shared storage
every node sees (a PVC path or gs://), not a path inside the job's working directory.
"""

from _stage import run

if __name__ == "__main__":
    run(["distill"])
