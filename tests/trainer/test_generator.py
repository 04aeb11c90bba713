import os

import numpy as np
import pytest

from tests.support.helpers import write_clip
from trainer import FixedVideoFacenetGenerator

pytestmark = pytest.mark.tf  # the generator is a Keras PyDataset


@pytest.fixture
def clips(tmp_path):
    lengths = [3, 50, 7, 20, 11, 40, 5, 30, 9, 25]
    paths = [write_clip(tmp_path / f"{1001 + i}_IWL_ANG_XX.npz", frames=n) for i, n in enumerate(lengths)]
    return paths, lengths


def test_batches_have_promised_shapes_dtypes_and_zero_padding(clips):
    paths, lengths = clips
    gen = FixedVideoFacenetGenerator(paths, list(range(10)), batch_size=4, shuffle=True, seed=0)
    assert len(gen) == 3
    seen = []
    for i in range(len(gen)):
        x, y = gen[i]
        assert x.dtype == np.float32 and x.ndim == 3 and x.shape[2] == 512
        assert np.issubdtype(y.dtype, np.integer) and len(y) == len(x)
        real = [lengths[label] for label in y]
        assert x.shape[1] == max(real)  # padded to this batch's longest clip only
        for row, n in enumerate(real):
            assert np.all(x[row, n:] == 0.0) and np.all(np.any(x[row, :n] != 0, axis=-1))
        seen += list(y)
    assert sorted(seen) == list(range(10))


def test_values_are_the_files_normalised(clips):
    paths, _ = clips
    mean, std = np.full(512, 0.5, np.float32), np.full(512, 2.0, np.float32)
    gen = FixedVideoFacenetGenerator(paths, list(range(10)), batch_size=1, shuffle=False, mean=mean, std=std)
    x, y = gen[0]
    raw = np.load(paths[int(y[0])])["video_features"]
    np.testing.assert_allclose(x[0], (raw - 0.5) / 2.0, rtol=1e-6)


def test_max_frames_crops_the_centre_or_subsamples(clips):
    paths, lengths = clips
    long = paths[1]  # 50 frames
    raw = np.load(long)["video_features"]
    crop = FixedVideoFacenetGenerator([long], [0], batch_size=1, max_frames=10, max_frames_mode="crop")
    np.testing.assert_array_equal(crop[0][0][0], raw[20:30])
    sub = FixedVideoFacenetGenerator([long], [0], batch_size=1, max_frames=10, max_frames_mode="subsample")
    np.testing.assert_array_equal(sub[0][0][0], raw[np.linspace(0, 49, 10).round().astype(int)])


def test_reshuffles_every_epoch_within_length_buckets(clips):
    paths, lengths = clips
    gen = FixedVideoFacenetGenerator(paths * 20, list(range(10)) * 20, batch_size=8, shuffle=True, seed=1,
                                     lengths=lengths * 20)
    first = gen.order.copy()
    gen.on_epoch_end()
    assert sorted(gen.order) == sorted(first) and list(gen.order) != list(first)
    assert gen.padding_efficiency() > 0.9


def test_cache_in_memory_reads_each_file_once(clips, monkeypatch):
    paths, _ = clips
    gen = FixedVideoFacenetGenerator(paths, list(range(10)), batch_size=5, cache_in_memory=True)
    loads = []
    real = gen.load_clip
    monkeypatch.setattr(gen, "load_clip", lambda p: loads.append(p) or real(p))
    for _ in range(3):
        for i in range(len(gen)):
            gen[i]
        gen.on_epoch_end()
    assert sorted(loads) == sorted(map(str, paths))


def test_bad_arguments_are_clear_errors(clips):
    paths, _ = clips
    with pytest.raises(ValueError, match="at least one file"):
        FixedVideoFacenetGenerator([], [])
    with pytest.raises(ValueError, match="one integer class id per file"):
        FixedVideoFacenetGenerator(paths, [0, 1])


def test_fit_with_several_workers(clips):
    import keras

    paths, _ = clips
    gen = FixedVideoFacenetGenerator(paths, [i % 2 for i in range(10)], batch_size=3, workers=2)
    model = keras.Sequential([keras.Input((None, 512)), keras.layers.Masking(0.0), keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    history = model.fit(gen, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


def test_a_pack_gives_the_same_batches_and_a_changed_file_is_never_read_from_it(tmp_path):
    from trainer.data.packed import open_pack, pack
    from trainer.data.synth import write_corpus

    files = sorted(map(str, write_corpus(tmp_path / "crema-d", "crema-d", clips=40, seed=3)))
    labels = np.arange(len(files)) % 6
    assert pack(files, "video_features", tmp_path / "pack") == (40, True)
    assert pack(files, "video_features", tmp_path / "pack") == (40, False)  # unchanged: not rewritten
    frames, where = open_pack(tmp_path / "pack", files)
    assert frames.shape[0] == sum(n for _, n in where.values()) and isinstance(frames, np.memmap)
    mean, std = np.full(512, 0.1, np.float32), np.full(512, 2.0, np.float32)

    def batches(packed):
        gen = FixedVideoFacenetGenerator(files, labels, 8, shuffle=True, mean=mean, std=std, max_frames=50, seed=1, packed=packed)
        return [gen[i] for i in range(len(gen))]

    for (xa, ya), (xb, yb) in zip(batches(None), batches((frames, where)), strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert open_pack(tmp_path / "pack", files[:10] + [str(tmp_path / "other.npz")])[1].endswith("is not in the pack in " + str(tmp_path / "pack"))
    os.utime(files[5], ns=(0, 0))  # changed since it was packed
    assert open_pack(tmp_path / "pack", files) == (None, f"{files[5]} changed since it was packed")
    assert pack(files, "video_features", tmp_path / "pack") == (40, True)  # repacked
    assert open_pack(tmp_path / "pack", files, key="features")[0] is None


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("cache", [False, True])
def test_a_clip_holding_nan_or_inf_is_refused_when_read_naming_the_file(clips, bad, cache):
    """Preflight validated the data; a file rewritten since must not train, whatever the loss would do with it."""
    from trainer.errors import NonFiniteData

    paths, lengths = clips
    gen = FixedVideoFacenetGenerator(paths, list(range(10)), batch_size=10, shuffle=False, cache_in_memory=cache,
                                     mean=np.zeros(512), std=np.ones(512))
    gen[0]  # every clip read once (and cached) while finite
    arr = np.random.default_rng(0).normal(size=(lengths[3], 512)).astype(np.float32)
    arr[1, 7] = bad
    write_clip(paths[3], value=arr)
    fresh = FixedVideoFacenetGenerator(paths, list(range(10)), batch_size=10, shuffle=False, cache_in_memory=cache)
    with pytest.raises(NonFiniteData) as error:
        fresh[0]
    assert str(paths[3]) in str(error.value) and "1 NaN/inf value(s)" in str(error.value)
    assert error.value.exit_code == 2
