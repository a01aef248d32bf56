# Sourced by the GPU machine's scripts: Keras from the carried wheels where Keras does not import (that machine
# has JAX and PyTorch but no Keras), and this checkout on the import path. Needs PYTHON set.
if ! "$PYTHON" -c "import keras" >/dev/null 2>&1 && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the carried wheels failed" >&2; return 2; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
