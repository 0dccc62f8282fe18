"""imagerec core: image intake, models, the log. No UI here."""

import logging

# transformers imports torchao (there for the compiled encoders) whenever it loads a model class: torchao's
# CUDA-only extensions then fail to load on a CPU machine and it warns about each, and torch warns about an enum
# torchao registers. Neither changes anything on the CPU paths here, so only their errors are shown.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
