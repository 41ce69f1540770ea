"""Ray job: Ray Tune search over Ray Train runs of one model family (mbta-ray tune).

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/tune.py --help

Takes the same options as `mbta-ray tune`; give --root (and --registry) as shared storage
every node sees (a PVC path or gs://), not a path inside the job's working directory.
"""

from _stage import run

if __name__ == "__main__":
    run(["tune"])
