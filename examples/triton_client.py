"""Send images to a running pg-serve and print each one's label and certificate.

    python examples/triton_client.py --url localhost:8000 photo.png [more.png ...]

Each image goes as its encoded bytes (the ``image`` input, decoded by the
server with OpenCV); the answer is the per-frame JSON pg-run writes, of which
one line per image is printed here. A frame the server refuses (an undecodable
file, a frame too small for the patch) prints one ``Error:`` line and the exit
status is 1. Needs ``tritonclient[http]`` (the [serve] extra) and this package
(for the wire format's client helpers, patchguard/runtime/serving.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="Image files (PNG, JPEG, ...).")
    parser.add_argument("--url", default="localhost:8000", help="pg-serve's HTTP address (default: %(default)s).")
    parser.add_argument("--model-name", default="patchguard", help="pg-serve's --model-name (default: %(default)s).")
    args = parser.parse_args(argv)

    from patchguard.runtime.errors import PatchGuardError, first_line, lazy_import
    from patchguard.runtime.serving import client_inputs, client_outputs, response_dict

    try:
        http = lazy_import("tritonclient.http", "serve")
        InferenceServerException = lazy_import("tritonclient.utils", "serve").InferenceServerException
    except PatchGuardError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1

    client = http.InferenceServerClient(args.url)
    failed = False
    for path in args.images:
        try:
            inputs = client_inputs(http, image=Path(path).read_bytes())
            result = response_dict(client.infer(args.model_name, inputs, outputs=client_outputs(http)))
        except (OSError, PatchGuardError, InferenceServerException) as error:
            print(f"Error: {path}: {first_line(error)}", file=sys.stderr)
            failed = True
            continue
        shown = ("label", "class_name", "certified", "certified_patch_px", "masked_box")
        print(json.dumps({"image": path, **{key: result[key] for key in shown}}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
