#!/usr/bin/env bash
# The main job on the bundled default model, end to end, on the CPU:
# export (fp32 + INT8 ONNX, parity report), pg-run on a short clip with a
# certificate per frame, pg-certify on the bundled sample, then a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/demo}
SAMPLE=samples/fashion-mnist-test   # 200 Fashion-MNIST test images, one folder per class
mkdir -p "$OUT"

echo "== 1/4 export the bundled model (fp32 + INT8, parity against PyTorch)"
pg-export --out "$OUT" --int8 --calib-data "$SAMPLE" --parity-data "$SAMPLE" --parity-n 200

echo "== 2/4 make a 120-frame 112x112 clip from the sample (the stand-in camera)"
python examples/make_clip.py "$SAMPLE" "$OUT/clip.avi" --frames 120 --size 112

echo "== 3/4 pg-run: label + certificate per frame (default patch: 20 camera px, the model's 5 px scaled to the frame)"
pg-run --model "$OUT/fashion_mnist_bagnet.onnx" --source "$OUT/clip.avi" \
    --jsonl "$OUT/frames.jsonl" --save-video "$OUT/overlay.avi"

echo "== 4/4 pg-certify on the sample: certified accuracy for 2, 3 and 5 px patches"
pg-certify --model "$OUT/fashion_mnist_bagnet.onnx" --data "$SAMPLE" --patch-size 2 3 5 \
    --json "$OUT/certify.json"

python examples/summary.py "$OUT"
