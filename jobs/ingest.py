"""Ray job: Ingest MBTA files into a versioned feature dataset (mbta-ray data ingest).

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/ingest.py --help

Takes the same options as `mbta-ray data ingest`; give --root (and --registry) as shared storage
every node sees (a PVC path or gs://), not a path inside the job's working directory.
"""

from _stage import run

if __name__ == "__main__":
    run(["data", "ingest"])
