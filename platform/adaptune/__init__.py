"""adaptune: distributed LoRA/QLoRA hyperparameter search and training on Ray, DeepSpeed and MLflow."""

from adaptune.config import ClusterProfile, SweepConfig, load_config
from adaptune.errors import ConfigError, DataError, Problem, UserInputError

__version__ = "0.1.0"

__all__ = [
    "ClusterProfile",
    "ConfigError",
    "DataError",
    "Problem",
    "SweepConfig",
    "UserInputError",
    "__version__",
    "load_config",
]
