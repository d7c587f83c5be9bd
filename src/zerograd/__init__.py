"""zerograd: fast adversarial training without catastrophic overfitting.

ZeroGrad and MultiGrad (Golgooni et al.) with the FGSM, FGSM-RS, N-FGSM, GradAlign and PGD
baselines; evaluation by PGD with restarts and AutoAttack; diagnostics of catastrophic
overfitting. Models take pixels in [0, 1]; eps is absolute, every step size a multiple of eps.
"""
__version__ = "0.1.0"

from .config import Config, load_config
from .errors import ConfigError
from .evaluate import evaluate
from .models import MODELS, build_model
from .perturb import METHODS
from .train import Rollback, Stop, train

__all__ = [
           "METHODS",
           "MODELS",
           "Config",
           "ConfigError",
           "Rollback",
           "Stop",
           "__version__",
           "build_model",
           "evaluate",
           "load_config",
           "train",
]
