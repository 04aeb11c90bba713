"""What a trainer process sets before TensorFlow and Keras load.

    quiet_tensorflow()           # `import trainer`: TF_CPP_MIN_LOG_LEVEL "1" unless set (C++ INFO lines would drown train.log)
    keras_without_matplotlib()   # `python -m trainer` (cli.main): Keras' own import of matplotlib is refused

Keras 3 imports matplotlib.pyplot when it loads (keras.src.visualization, for plotting helpers the
trainer never calls; it takes `plt = None` when the import fails). That is about a sixth of every
trainer process's start: a training's, a smoke test's, a scoring's. The trainer draws its pictures
with matplotlib's object API (trainer/results/plots.py), which imports matplotlib when it draws.
Only an import made by Keras' own modules is refused, and only in the CLI's process: `import
matplotlib.pyplot` anywhere else, before or after, works as ever, a matplotlib already loaded is
simply found by Keras, and a program that imports `trainer` as a library keeps Keras as it comes
(its plotting helpers, such as keras.visualization.plot_image_gallery, need pyplot).
"""

import os
import sys

REFUSED = ("matplotlib", "matplotlib.pyplot")


class KerasWithoutMatplotlib:
    """A meta path finder: refuses `REFUSED` to an importing module of Keras, finds nothing otherwise."""

    def find_spec(self, name, path=None, target=None):
        if name in REFUSED and _importer().startswith("keras."):
            raise ModuleNotFoundError(f"{name} is not loaded for Keras in a trainer process (trainer/startup.py)", name=name)
        return None


def _importer():
    """The name of the module whose code runs the import: the first frame outside the import machinery."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
        frame = frame.f_back
    return frame.f_globals.get("__name__", "") if frame is not None else ""


def quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


def keras_without_matplotlib():
    if not any(type(f).__name__ == KerasWithoutMatplotlib.__name__ for f in sys.meta_path):  # once, even after a reload
        sys.meta_path.insert(0, KerasWithoutMatplotlib())
