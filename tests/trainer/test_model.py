import numpy as np
import pytest

from trainer.config import DEFAULTS
from trainer.results.metrics import classification_metrics

TINY = {**DEFAULTS["model"], "units": 8, "head_units": 8, "heads": 2, "dropout": 0.0}


def test_metrics_on_a_known_confusion():
    # true ANG x3, SAD x1; predicted ANG, ANG, SAD, SAD
    m = classification_metrics([0, 0, 0, 1], [0, 0, 1, 1], ["ANG", "SAD"])
    assert m["confusion_matrix"] == [[2, 1], [0, 1]]
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["uar"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["per_class"]["SAD"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)


@pytest.mark.tf
def test_default_lstm_stays_eligible_for_cudnn():
    from trainer.training.model import build_model, cudnn_problems

    model = build_model({**DEFAULTS["model"], "layers": 2}, num_classes=6)
    assert cudnn_problems(model) == []
    import keras

    bad = keras.Sequential([keras.Input((None, 4)), keras.layers.LSTM(3, recurrent_dropout=0.1, activation="relu")])
    assert len(cudnn_problems(bad)) == 2


@pytest.mark.tf
@pytest.mark.parametrize("encoder", ["bilstm", "transformer"])
def test_padding_does_not_change_the_prediction(encoder):
    """A clip alone and the same clip zero-padded in a batch with a longer one score the same."""
    from trainer.training.model import build_model

    model = build_model({**TINY, "encoder": encoder}, num_classes=3, feature_dim=16)
    rng = np.random.default_rng(0)
    short, long = rng.normal(size=(5, 16)).astype("float32"), rng.normal(size=(12, 16)).astype("float32")
    batch = np.zeros((2, 12, 16), "float32")
    batch[0, :5], batch[1] = short, long
    alone = model.predict_on_batch(short[None])
    padded = model.predict_on_batch(batch)
    np.testing.assert_allclose(padded[0], alone[0], rtol=1e-4, atol=1e-5)


@pytest.mark.tf
def test_uar_metric_matches_numpy_and_model_reloads(tmp_path):
    import keras

    from trainer.training.model import UnweightedAverageRecall, build_model, compile_model

    metric = UnweightedAverageRecall(3)
    metric.update_state(np.array([0, 0, 1, 2]), np.eye(3)[[0, 1, 1, 1]])
    assert float(metric.result()) == pytest.approx(classification_metrics([0, 0, 1, 2], [0, 1, 1, 1], "abc")["uar"])
    model = compile_model(build_model(TINY, 3, 16), DEFAULTS["train"], 3)
    x = np.random.default_rng(1).normal(size=(2, 7, 16)).astype("float32")
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again.predict_on_batch(x), model.predict_on_batch(x), rtol=1e-5)


@pytest.mark.tf
def test_predict_is_the_model_s_own_answer_for_batches_of_any_size_and_length_traced_once():
    from keras import ops

    from trainer.results.evaluate import inference_function, predict
    from trainer.training.model import build_model

    model = build_model(TINY, num_classes=3, feature_dim=16)
    rng = np.random.default_rng(2)
    batches = [(rng.normal(size=(n, t, 16)).astype("float32"), rng.integers(0, 3, n)) for n, t in [(4, 9), (3, 20), (1, 5)]]
    y_true, y_pred = predict(model, batches)
    eager = [np.argmax(ops.convert_to_numpy(model(x, training=False)), -1) for x, _ in batches]
    np.testing.assert_array_equal(y_pred, np.concatenate(eager))
    np.testing.assert_array_equal(y_true, np.concatenate([y for _, y in batches]))
    assert inference_function(model).experimental_get_tracing_count() == 1
    assert inference_function(build_model(TINY, num_classes=3, feature_dim=16)) is not inference_function(model)


@pytest.mark.tf
def test_an_epoch_whose_weights_are_not_finite_is_refused_even_when_its_loss_is():
    """oneDNN's max/ReLU and GPU kernels may turn NaN into 0: the loss can stay finite over NaN weights."""
    from trainer.errors import NonFiniteLoss, NonFiniteWeights
    from trainer.training.loop import _refuse_non_finite
    from trainer.training.model import build_model

    model = build_model(TINY, num_classes=6)
    _refuse_non_finite(model, 0, {"loss": 1.2}, "", print)  # finite: nothing raised
    with pytest.raises(NonFiniteLoss, match="The training loss became nan in epoch 1"):
        _refuse_non_finite(model, 0, {"loss": float("nan")}, "", print)
    victim = model.weights[-1]
    victim.assign(np.where(np.arange(victim.shape[0]) == 0, np.inf, 0.0).astype("float32"))
    logged = []
    with pytest.raises(NonFiniteWeights) as error:
        _refuse_non_finite(model, 4, {"loss": 1.2}, "Epoch 5/9", logged.append)
    assert victim.path in str(error.value) and "in epoch 5" in str(error.value) and logged == ["Epoch 5/9"]
    assert "its backup holds epoch 4" in str(error.value) and error.value.exit_code == 2
