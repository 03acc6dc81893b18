"""Training of the SRGAN-family networks: ``train(config)`` / ``hires train CONFIG``.

``config`` (pydantic, YAML), ``dataset`` (prepared-dataset patches), ``loop`` (phases, EMA,
validation, safetensors checkpoints, resume, CSV log). See docs/training.md.
"""

from .config import TrainConfig, load_config, parse_config
from .loop import train

__all__ = ["TrainConfig", "load_config", "parse_config", "train"]
