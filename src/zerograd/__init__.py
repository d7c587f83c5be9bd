"""zerograd: fast adversarial training without catastrophic overfitting.

ZeroGrad and MultiGrad (Golgooni et al.) with the FGSM, FGSM-RS, N-FGSM, GradAlign and PGD
baselines; evaluation by PGD with restarts and AutoAttack; diagnostics of catastrophic
overfitting. Models take pixels in [0, 1]; eps is absolute, every step size a multiple of eps.
"""
from . import evaluate as _evaluate_app  # noqa: F401 (loaded first, so the name below stays the function)
from .accuracy import evaluate
from .config import Config, load_config
from .errors import ConfigError, StorageError, ZerogradError
from .methods import METHODS
from .models import MODELS, build_model
from .train import train
from .training.events import Hook, Rollback, Stop
from .version import __version__

__all__ = [
           "METHODS",
           "MODELS",
           "Config",
           "ConfigError",
           "Hook",
           "Rollback",
           "Stop",
           "StorageError",
           "ZerogradError",
           "__version__",
           "build_model",
           "evaluate",
           "load_config",
           "train",
]
