"""Video-only emotion recognition on FaceNet features: data layer, model, training runs.

    from trainer import FixedVideoFacenetGenerator, load_config, validate_dirs

TensorFlow is imported only by what needs it (the generator, the model, training), so
validating data and reading results stay fast.
"""

from trainer import startup

# Before anything here imports TensorFlow: its C++ log level (the environment wins).
startup.quiet_tensorflow()

__all__ = ["FixedVideoFacenetGenerator", "load_config", "validate_dirs", "build_model", "classification_metrics"]


def __getattr__(name):
    if name == "FixedVideoFacenetGenerator":
        from trainer.data.generator import FixedVideoFacenetGenerator

        return FixedVideoFacenetGenerator
    if name == "load_config":
        from trainer.config import load_config

        return load_config
    if name == "validate_dirs":
        from trainer.data.validation import validate_dirs

        return validate_dirs
    if name == "build_model":
        from trainer.training.model import build_model

        return build_model
    if name == "classification_metrics":
        from trainer.results.metrics import classification_metrics

        return classification_metrics
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
