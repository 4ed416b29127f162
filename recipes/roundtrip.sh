#!/usr/bin/env bash
# bash recipes/roundtrip.sh [OUT_DIR]  -- convert -> info -> export on a timm ResNet-18 built here (no data needed)
set -euo pipefail
out=${1:-runs/roundtrip}
mkdir -p "$out"
python - "$out/resnet18.pt" <<'PY'
import sys, timm, torch
torch.manual_seed(0)
torch.save(timm.create_model("resnet18", num_classes=10).state_dict(), sys.argv[1])
PY
mgtool convert "$out/resnet18.pt" --arch resnet18 --width 1 -o "$out/resnet18.tm.safetensors" --force
mgtool info "$out/resnet18.tm.safetensors"
mgtool export "$out/resnet18.tm.safetensors" -o "$out/resnet18.plain.safetensors" --force
python - "$out/resnet18.pt" "$out/resnet18.plain.safetensors" <<'PY'
import sys, timm, torch
from safetensors.torch import load_file
a, b = torch.load(sys.argv[1], weights_only=True), load_file(sys.argv[2])
model = timm.create_model("resnet18", num_classes=10)
model.load_state_dict(b, strict=True)
diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
print(f"export(convert(x)) loads into timm.create_model('resnet18') strictly; max |difference| = {diff:.3g}")
PY
