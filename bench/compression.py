"""Distillation benchmark: teacher vs student (and its pruned / int8 variants), recorded.

    python bench/compression.py --teacher DIR [--teacher DIR ...] [--dnn-reference DIR] [--root artifacts]

Runs the real distillation job (`mbta_ray.distill.run`) on the teachers' dataset; the lowest valid
MAE teaches. Goal (issue 5): the chosen student has >= 10x fewer parameters and is >= 3x faster at
batch 256 than the tuned teacher DNN, with test MAE <= 1.05x the teacher's. Latency: CPU, 1 thread,
median of 30 runs, on encoded inputs (model) and from example rows (end to end).
Appends a section to bench/RESULTS.md (``--no-record`` to skip).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", action="append", required=True)
    ap.add_argument("--dnn-reference", default=None)
    ap.add_argument("--root", default=str(ROOT / "artifacts"))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    import ray

    from mbta_ray import distill
    from mbta_ray.runtime import ensure_ray

    ensure_ray(num_cpus=os.cpu_count(), dashboard=True, quiet=True)
    teacher = distill.pick_teacher(args.teacher)
    version = json.loads((teacher / "metadata.json").read_text())["dataset"]["version"]
    rep = distill.run(
        teacher,
        args.root,
        version,
        ROOT / "bench" / "out" / "compression",
        distill.DistillConfig(epochs=args.epochs),
        dnn_reference=args.dnn_reference,
    )
    ray.shutdown()
    lines = [
        "| model | family | params (non-zero) | file KiB | model ms b1 | model ms b256 | e2e ms b1 | e2e ms b256 | test MAE | chosen |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rep["rows"]:
        lines.append(
            f"| {r['model']} | {r['family']} | {r['params']:,} ({r['nonzero_params']:,}) | "
            f"{r['file_bytes'] / 1024:.0f} | {r['model_ms_b1']:.3f} | {r['model_ms_b256']:.3f} | "
            f"{r['end_to_end_ms_b1']:.2f} | {r['end_to_end_ms_b256']:.2f} | {r['test_mae']:.1f} | "
            f"{'yes' if r.get('kept') else ''} |"
        )
    d, g = rep["decisions"], rep["goals"]
    lines += [
        "",
        f"Student valid MAE {d['student_valid_mae']:.1f} (limit for compression {d['limit']:.1f}); pruning "
        f"{d['pruned']['amount']:.0%}: valid {d['pruned']['valid_mae']:.1f} -> "
        f"{'kept' if d['pruned']['kept'] else 'dropped'}; int8: valid {d['quantized']['valid_mae']:.1f}, "
        f"{d['quantized']['ms_b256']:.3f} vs {d['quantized']['float_ms_b256']:.3f} ms float at batch 256 -> "
        f"{'kept' if d['quantized']['kept'] else 'dropped'}. Training rows {rep['training_rows']:,} "
        f"({rep['unlabeled_rows']:,} unlabeled, teacher-labeled); labeling {rep['label_s']:.0f} s, "
        f"student training {rep['train_s']:.0f} s.",
    ]
    if g:
        ok = g["fewer_params_x"] >= 10 and g["faster_b256_x"] >= 3 and g["mae_vs_teacher_x"] <= 1.05
        lines.append(
            f"Goal vs {g['reference']}: {g['fewer_params_x']:.1f}x fewer parameters (>= 10), "
            f"{g['faster_b256_x']:.1f}x faster at batch 256 (>= 3), test MAE {g['mae_vs_teacher_x']:.2f}x "
            f"the teacher's (<= 1.05): {'met' if ok else 'NOT met'}."
        )
    print("\n".join(lines))
    if not args.no_record:
        from results_md import append

        append(
            f"Teacher {teacher} (lowest valid MAE of the given), dataset {version}; student: MLP, 4-wide "
            f"embeddings, one hidden layer of 48, {args.epochs} epochs.",
            lines,
        )


if __name__ == "__main__":
    main()
