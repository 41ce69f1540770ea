"""Ray job: Promote a registered version if it beats production (mbta-ray promote).

    ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/promote.py --help

Takes the same options as `mbta-ray promote`; give --root (and --registry) as shared storage
every node sees (a PVC path or gs://), not a path inside the job's working directory.
"""

from _stage import run

if __name__ == "__main__":
    run(["promote"])
