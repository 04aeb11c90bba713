"""A trainer process (`python -m trainer`) loads Keras without matplotlib (trainer/startup.py); matplotlib stays whole
for everyone else, and a program that imports `trainer` as a library keeps Keras as it comes."""

import json
import subprocess
import sys

from tests.support.helpers import ROOT

KERAS_PLT = ("from keras.src.visualization import plot_image_gallery as gallery\n"
             "keras_plt = None if gallery.plt is None else gallery.plt.__name__\n")
CLI_START = "import sys, json\nfrom trainer.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"


def _python(code):
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_keras_loads_without_matplotlib_in_a_trainer_and_matplotlib_works_before_and_after():
    after = _python(CLI_START + "import keras\n" + KERAS_PLT +
                    "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib')\n"
                    "import matplotlib.pyplot as plt\n"
                    "from trainer.results.plots import confusion_png\n"
                    "png = confusion_png({'classes': ['A', 'B'], 'confusion_matrix': [[1, 0], [1, 1]], 'uar': 0.75,"
                    " 'accuracy': 0.67, 'samples': 3}, 'test', run='r')\n"
                    "print(json.dumps({'keras_plt': keras_plt, 'loaded_with_keras': loaded, 'pyplot': hasattr(plt, 'figure'),"
                    " 'png': png[:4].hex()}))\n")
    assert after == {"keras_plt": None, "loaded_with_keras": [], "pyplot": True, "png": b"\x89PNG".hex()}

    before = _python("import matplotlib.pyplot\n" + CLI_START + "import keras\n" + KERAS_PLT +
                     "print(json.dumps({'keras_plt': keras_plt}))\n")
    assert before == {"keras_plt": "matplotlib.pyplot"}  # one already loaded is Keras' to use
    library = _python("import json\nimport trainer, trainer.training.model, keras\n" + KERAS_PLT +
                      "print(json.dumps({'keras_plt': keras_plt}))\n")
    assert library == {"keras_plt": "matplotlib.pyplot"}  # not the CLI: Keras' plotting helpers work
