"""Print a short human-readable summary of what examples/demo.sh produced.

Usage: python examples/summary.py OUT_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/demo")
    parity = json.loads((out / "fashion_mnist_bagnet.parity.json").read_text())
    lines = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines() if line]
    rows = [row for row in lines if row.get("kind") == "frame"]  # the first line is the header
    truth = (out / "clip.labels.txt").read_text().split()
    report = json.loads((out / "certify.json").read_text())

    print("\nSummary")
    print("-------")
    for row in parity["rows"]:
        print(f"export   {row['artifact']:<31} {row['precision']}: vs PyTorch on {row['n']} images, "
              f"prediction agreement {100 * row['prediction_agreement']:.1f}%, "
              f"certificate agreement {100 * row['certificate_agreement']:.1f}%")
    right = sum(str(r["label"]) == t for r, t in zip(rows, truth))
    certified = sum(bool(r["certified"]) for r in rows)
    print(f"pg-run   {len(rows)} frames: {right} labels right, {certified} certified against a "
          f"{rows[0]['patch_px'] if rows and 'patch_px' in rows[0] else '?'} px patch anywhere")
    for result in report["results"]:
        mask = result["defenses"]["mask"]
        print(f"certify  {report['n']} images, {result['patch_size']}x{result['patch_size']} px patch: "
              f"accuracy {100 * mask['accuracy']:.1f}%, certified {100 * mask['certified']:.1f}%")
    print(f"files in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
