"""How exact convert and export are at full size (issue 2's closing figures).

For each architecture, a seeded randomly initialised plain model is converted to
template-mixing form (which verifies the logits itself) and exported back; prints the
max |logit difference| convert measured, the max |weight difference| of the generated
weights, the worst weight's difference relative to its own scale (what convert now checks),
and max |export(convert(x)) - x| over every tensor.

    python bench/convert_exactness.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import mgtool
from mgtool import read_plain_weights
from mgtool.archs import ArchSpec, build_plain, resolve_spec

SPECS = {
    "wrn-28-10 (block-input)": ArchSpec("wrn", 10, 100, 3, {"depth": 28, "norm": "block-input"}),
    "resnet50": ArchSpec("resnet50", 1.0, 1000, 3, {}),
    "resnet50 width 0.5": ArchSpec("resnet50", 0.5, 1000, 3, {}),
    "tiny-cnn": ArchSpec("tiny-cnn", 1.0, 10, 3, {}),
}


def main() -> None:
    torch.set_num_threads(1)  # a shared 2-core machine; the figures do not depend on it
    folder = Path(tempfile.mkdtemp())
    print(f"{'model':<26} {'max|dlogit|':>12} {'/scale':>9} {'max|dW|':>9} {'worst dW/own':>13} "
          f"{'export(convert(x))':>19}")
    for name, spec in SPECS.items():
        torch.manual_seed(0)
        net = build_plain(resolve_spec(spec))
        torch.save(net.state_dict(), folder / "src.pt")
        result = mgtool.convert(folder / "src.pt", spec, out=folder / "tm.safetensors", force=True)
        mgtool.export(folder / "tm.safetensors", folder / "plain.safetensors", force=True)
        original, exported = net.state_dict(), read_plain_weights(folder / "plain.safetensors")
        round_trip = max(float((original[k].double() - exported[k].double()).abs().max()) for k in original)
        print(f"{name:<26} {result.max_abs_logit_diff:>12.3g} {result.max_abs_logit_diff / result.logit_scale:>9.2g} "
              f"{result.max_abs_weight_diff:>9.2g} {result.weights.worst_relative:>13.2g} {round_trip:>19.2g}")


if __name__ == "__main__":
    main()
