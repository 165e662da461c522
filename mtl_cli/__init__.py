"""mtl: a Hydra-driven runner for multi-task NLP training."""

import time

__version__ = "0.1.0"

# When this process started using mtl: `timing.json` reports the time to the first training step from here.
STARTED = time.time()
