"""The emotion classifier: a masked sequence encoder, attention pooling and a small head.

    model = build_model(cfg["model"], num_classes=6, feature_dim=512)
    model.fit(train_gen, validation_data=val_gen)   # reports val_uar

Encoders (`model.encoder`): "bilstm" (default; bidirectional LSTMs that keep the fused
cuDNN kernel on a GPU: standard activations, no recurrent dropout, right-padded mask)
or "transformer" (self-attention with a padding mask and sinusoidal positions). Padded
frames are all-zero and masked by `Masking(0.0)` through every layer, pooling included.
"""

import keras
import numpy as np
from keras import layers, ops


@keras.saving.register_keras_serializable(package="facenet")
class AttentionPooling(layers.Layer):
    """Weighted mean over valid frames: softmax of a learned score, masked frames get 0."""

    def __init__(self, units=128, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.proj = layers.Dense(units, activation="tanh")
        self.score = layers.Dense(1)
        self.supports_masking = True

    def build(self, input_shape):
        self.proj.build(input_shape)
        self.score.build((*input_shape[:-1], self.units))

    def call(self, x, mask=None):
        scores = ops.cast(ops.squeeze(self.score(self.proj(x)), -1), "float32")
        if mask is not None:
            scores = ops.where(mask, scores, ops.full_like(scores, -1e9))
        weights = ops.cast(ops.softmax(scores, axis=-1), x.dtype)
        return ops.sum(x * ops.expand_dims(weights, -1), axis=1)

    def compute_mask(self, x, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="facenet")
class SinusoidalPosition(layers.Layer):
    """Adds the fixed sinusoidal position encoding of "Attention is all you need"."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, x):
        length, dim = ops.shape(x)[1], ops.shape(x)[2]
        pos = ops.expand_dims(ops.cast(ops.arange(length), "float32"), 1)
        i = ops.cast(ops.arange(dim), "float32")
        angle = pos / ops.power(10000.0, (2.0 * ops.floor(i / 2.0)) / ops.cast(dim, "float32"))
        enc = ops.where(ops.equal(ops.mod(ops.arange(dim), 2), 0), ops.sin(angle), ops.cos(angle))
        return x + ops.cast(enc, x.dtype)


@keras.saving.register_keras_serializable(package="facenet")
class UnweightedAverageRecall(keras.metrics.Metric):
    """Mean of per-class recall (UAR), over classes present in the data seen so far.

        model.compile(..., metrics=["accuracy", UnweightedAverageRecall(6)])  # logs "uar"
    """

    def __init__(self, num_classes, name="uar", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.hits = self.add_variable(shape=(num_classes,), initializer="zeros", name="hits")
        self.support = self.add_variable(shape=(num_classes,), initializer="zeros", name="support")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        y_hat = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        onehot = ops.one_hot(y_true, self.num_classes, dtype=self.dtype)
        correct = ops.cast(ops.equal(y_hat, y_true), self.dtype)
        self.hits.assign_add(ops.sum(onehot * ops.expand_dims(correct, -1), axis=0))
        self.support.assign_add(ops.sum(onehot, axis=0))

    def result(self):
        present = ops.cast(self.support > 0, self.dtype)
        recall = self.hits / ops.maximum(self.support, 1.0)
        return ops.sum(recall * present) / ops.maximum(ops.sum(present), 1.0)

    def reset_state(self):
        self.hits.assign(ops.zeros_like(self.hits))
        self.support.assign(ops.zeros_like(self.support))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


def build_model(model_cfg, num_classes, feature_dim=512):
    inputs = keras.Input(shape=(None, feature_dim), name="frames")
    x = layers.Masking(mask_value=0.0)(inputs)
    if model_cfg["encoder"] == "bilstm":
        for _ in range(model_cfg["layers"]):
            # recurrent_dropout stays 0 and activations stay standard: cuDNN eligibility.
            x = layers.Bidirectional(layers.LSTM(model_cfg["units"], return_sequences=True))(x)
            x = layers.Dropout(model_cfg["dropout"])(x)
    elif model_cfg["encoder"] == "transformer":
        dim = model_cfg["units"]
        x = SinusoidalPosition()(layers.Dense(dim)(x))
        for _ in range(model_cfg["layers"]):
            attn = layers.MultiHeadAttention(model_cfg["heads"], key_dim=max(1, dim // model_cfg["heads"]),
                                             dropout=model_cfg["dropout"])(x, x)
            x = layers.LayerNormalization()(layers.Add()([x, attn]))
            ff = layers.Dense(dim)(layers.Dense(2 * dim, activation="relu")(x))
            x = layers.LayerNormalization()(layers.Add()([x, layers.Dropout(model_cfg["dropout"])(ff)]))
    else:
        raise ValueError(f"Expected model.encoder 'bilstm' or 'transformer'. Received: {model_cfg['encoder']!r}")
    x = AttentionPooling(model_cfg["head_units"])(x)
    x = layers.Dropout(model_cfg["dropout"])(layers.Dense(model_cfg["head_units"], activation="relu")(x))
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="emotion")(x)
    return keras.Model(inputs, outputs, name=f"facenet_{model_cfg['encoder']}")


def compile_model(model, train_cfg, num_classes):
    lr, wd = train_cfg["learning_rate"], train_cfg["weight_decay"]
    optimizer = {
        "adam": lambda: keras.optimizers.Adam(lr),
        "adamw": lambda: keras.optimizers.AdamW(lr, weight_decay=wd or 0.004),
        "sgd": lambda: keras.optimizers.SGD(lr, momentum=0.9),
    }[train_cfg["optimizer"]]()
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy", UnweightedAverageRecall(num_classes)])
    return model


def cudnn_problems(model):
    """Reasons any LSTM of `model` would fall back from the fused cuDNN kernel ([] if none)."""
    problems = []
    for layer in _all_layers(model):
        if not isinstance(layer, layers.LSTM):
            continue
        if layer.recurrent_dropout:
            problems.append(f"{layer.name}: recurrent_dropout={layer.recurrent_dropout}")
        if layer.activation is not keras.activations.tanh:
            problems.append(f"{layer.name}: activation={layer.activation.__name__}")
        if layer.recurrent_activation is not keras.activations.sigmoid:
            problems.append(f"{layer.name}: recurrent_activation={layer.recurrent_activation.__name__}")
        if layer.unroll or not layer.use_bias or layer.use_cudnn is False:
            problems.append(f"{layer.name}: unroll/use_bias/use_cudnn")
    return problems


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, layers.Bidirectional):
            yield layer.forward_layer
            yield layer.backward_layer


def class_weights(labels, num_classes):
    """Balanced weights n / (k * n_c) from training labels."""
    counts = np.bincount(labels, minlength=num_classes)
    return {c: float(len(labels) / (num_classes * n)) for c, n in enumerate(counts) if n}


def load_model(path):
    """Load a saved `.keras` model of this package (its custom layers are registered here)."""
    return keras.models.load_model(path)
