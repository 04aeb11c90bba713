"""FixedVideoFacenetGenerator: batches of FaceNet clip features as a `keras.utils.PyDataset`.

    gen = FixedVideoFacenetGenerator(paths, labels, batch_size=32, shuffle=True,
                                     mean=stats["mean"], std=stats["std"], max_frames=300,
                                     cache_in_memory=True, workers=2)
    model.fit(gen, epochs=10)
    x, y = gen[0]   # x float32 (batch, T, 512), T = longest clip of this batch; y int32 (batch,)
    x, y = gen.share(0, part=1, parts=2)   # the 2nd half of batch 0 (one replica's), padded to its T

Each batch is padded only to its own longest clip, with zeros after the last real frame
(right padding, so `keras.layers.Masking(0.0)` masks exactly the padding). With
`shuffle=True` the order is reshuffled every epoch within length buckets: clips are
shuffled, cut into windows of `bucket_batches` batches, sorted by length inside each
window, batched, and the batches shuffled; padding stays small and batches stay mixed.
With `shuffle=False` batches follow clip length (see `order`), which pads least.

Under several replicas every batch needs a clip per replica: `require_rows(replicas)` merges a
batch of fewer clips (the short last one) into another, now and at every reshuffle.

Clips longer than `max_frames` are cut: `max_frames_mode="crop"` keeps the centre
`max_frames` frames, `"subsample"` keeps `max_frames` evenly spaced frames of the whole
clip. With `cache_in_memory=True` each clip is decoded once and kept in RAM. A clip holding NaN or
inf is refused when it is read (`trainer.errors.NonFiniteData`, naming the file).
"""


import keras
import numpy as np

from trainer.data.npzfile import read_array, read_shape
from trainer.errors import NonFiniteData


class FixedVideoFacenetGenerator(keras.utils.PyDataset):
    def __init__(self, files, labels, batch_size=32, shuffle=True, *, mean=None, std=None,
                 feature_key="video_features", max_frames=None, max_frames_mode="crop",
                 cache_in_memory=False, lengths=None, bucket_batches=20, seed=None, feature_dim=512, packed=None, **kwargs):
        super().__init__(**kwargs)
        self.files = [str(f) for f in files]
        self.labels = np.asarray(labels)
        if len(self.files) == 0:
            raise ValueError("FixedVideoFacenetGenerator needs at least one file. Received: 0 files")
        if self.labels.shape != (len(self.files),) or not np.issubdtype(self.labels.dtype, np.integer):
            raise ValueError(f"Expected one integer class id per file ({len(self.files)}). "
                             f"Received: labels of shape {self.labels.shape} and dtype {self.labels.dtype}")
        if self.labels.min() < 0:
            raise ValueError(f"Expected class ids >= 0. Received: {self.labels.min()}")
        if batch_size < 1:
            raise ValueError(f"Expected batch_size >= 1. Received: {batch_size}")
        if max_frames_mode not in ("crop", "subsample"):
            raise ValueError(f"Expected max_frames_mode 'crop' or 'subsample'. Received: {max_frames_mode!r}")
        self.labels = self.labels.astype(np.int32)
        self.batch_size, self.shuffle = batch_size, shuffle
        self.feature_key, self.max_frames, self.max_frames_mode = feature_key, max_frames or None, max_frames_mode
        self.mean = None if mean is None else np.asarray(mean, np.float32)
        self.std = None if std is None else np.asarray(std, np.float32)
        self.bucket_batches, self.feature_dim = bucket_batches, feature_dim
        self.packed = packed  # (frames, {path: (offset, frames)}) of trainer.data.packed: clips read from there, not the NPZ
        raw = np.asarray(lengths if lengths is not None else [read_length(f, feature_key) for f in self.files])
        self.lengths = np.minimum(raw, self.max_frames) if self.max_frames else raw
        self._cache = {} if cache_in_memory else None
        self._rng = np.random.default_rng(seed)
        self.min_batch_rows = 1
        self._batches = self._plan()

    def __len__(self):
        return len(self._batches)

    def __getitem__(self, index):
        return self.share(index, 0, 1)

    def batch_rows(self, index):
        """Number of clips in batch `index` (the global batch, when cut into shares)."""
        return len(self._batches[index])

    def share(self, index, part, parts):
        """Part `part` of `parts` of batch `index` (one replica's share), padded to the whole batch's
        longest clip; only this share's clips are read. A share may be empty (a short last batch)."""
        idx = self._batches[index]
        rows = np.array_split(idx, parts)[part]
        x = np.zeros((len(rows), int(self.lengths[idx].max()), self.feature_dim), np.float32)
        for row, i in enumerate(rows):
            clip = self._clip(i)
            x[row, : len(clip)] = clip
        return x, self.labels[rows]

    def on_epoch_end(self):
        if self.shuffle:
            self._batches = self._plan()

    def require_rows(self, rows):
        """Every batch holds at least `rows` clips (one per replica) when the data has as many: a shorter
        batch is merged into the one before it, now and in every later plan. Returns the sizes of the
        batches merged ([] when none was short)."""
        self.min_batch_rows = rows
        self._batches, merged = _merge_short(self._batches, rows)
        return merged

    @property
    def order(self):
        """File indices in the order batches yield them (for aligning predictions)."""
        return np.concatenate(self._batches)

    def padding_efficiency(self):
        """Real frames / padded frames over one epoch of the current batch plan."""
        padded = sum(len(b) * self.lengths[b].max() for b in self._batches)
        return float(self.lengths.sum() / padded)

    def _plan(self):
        n, bs = len(self.files), self.batch_size
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            return _merge_short([order[i : i + bs] for i in range(0, n, bs)], self.min_batch_rows)[0]
        perm = self._rng.permutation(n)
        window = bs * self.bucket_batches
        batches = []
        for start in range(0, n, window):
            chunk = perm[start : start + window]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + bs] for i in range(0, len(chunk), bs)]
        batches = _merge_short(batches, self.min_batch_rows)[0]
        self._rng.shuffle(batches)
        return batches

    def _clip(self, i):
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        clip = self.load_clip(self.files[i])
        if self._cache is not None:
            self._cache[i] = clip
        return clip

    def load_clip(self, path):
        """One clip as float32 (frames, dim): capped at max_frames, normalised when stats are set."""
        if self.packed is not None and path in self.packed[1]:
            offset, frames = self.packed[1][path]
            x = np.asarray(self.packed[0][offset : offset + frames])  # a plain view: a memmap subclass slows every later op
        else:
            x = np.asarray(read_array(path, self.feature_key), dtype=np.float32)  # Keras' workers are threads: see npzfile
        finite = np.isfinite(x)  # here, not in the loss: kernels that turn NaN into 0 would train on it silently
        if not finite.all():
            raise NonFiniteData(path, self.feature_key, int(finite.size - np.count_nonzero(finite)), int(finite.size))
        if self.max_frames and len(x) > self.max_frames:
            if self.max_frames_mode == "crop":
                start = (len(x) - self.max_frames) // 2
                x = x[start : start + self.max_frames]
            else:
                x = x[np.linspace(0, len(x) - 1, self.max_frames).round().astype(int)]
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x


def _merge_short(batches, rows):
    """(batches with each one of fewer than `rows` clips merged into its neighbour, the sizes merged)."""
    out, merged = [], []
    for batch in batches:
        if len(batch) < rows and out:
            merged.append(len(batch))
            out[-1] = np.concatenate([out[-1], batch])
        else:
            out.append(batch)
    if len(out) > 1 and len(out[0]) < rows:
        merged.append(len(out[0]))
        out[1] = np.concatenate([out[0], out[1]])
        out.pop(0)
    return out, merged


def read_length(path, feature_key="video_features"):
    """Number of frames of `feature_key` in an NPZ, from the array header only."""
    return read_shape(path, feature_key)[0]
