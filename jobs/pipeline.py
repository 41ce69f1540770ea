"""Ray job: The main job: ingest -> tune -> distill -> register -> promote (mbta-ray pipeline).

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/pipeline.py --help

Takes the same options as `mbta-ray pipeline`; give --root (and --registry) as shared storage
every node sees (a PVC path or gs://), not a path inside the job's working directory.
"""

from _stage import run

if __name__ == "__main__":
    run(["pipeline"])
