# Sourced by the bench/*gpu*.sh scripts: repo root on PYTHONPATH, unbuffered output, and fvcore.
# The device image has torch, timm, typer, rich and safetensors but not fvcore: carry its sources in
# .whl/ (`python3 -m pip download --no-deps fvcore iopath yacs termcolor -d .whl`; name .whl in the
# run's carry) and they are installed to /tmp/site here. PY is the python to use (default python3).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
[ -d /tmp/site/fvcore ] && export PYTHONPATH="$PYTHONPATH:/tmp/site"  # installed by an earlier call
if ! $PY -c "import fvcore" 2>/dev/null && ls .whl/* >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .whl/* \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
