"""Per-dimension mean and std over training frames, streamed one file at a time.

    stats = compute_stats(train_paths, feature_key="video_features")
    save_stats(stats, run_dir / "normalization.npz"); stats = load_stats(...)

Files are merged with Chan's parallel update in float64, so memory is one clip, not
the corpus, and the result matches a single pass over all frames.
"""

import numpy as np

from trainer.data.npzfile import read_array

MIN_STD = 1e-6  # a constant dimension is centred, not divided by zero


def compute_stats(paths, feature_key="video_features"):
    count, mean, m2 = 0, None, None
    for path in paths:
        x = np.asarray(read_array(path, feature_key), dtype=np.float64)
        n = x.shape[0]
        x_mean = x.mean(axis=0)
        x_m2 = ((x - x_mean) ** 2).sum(axis=0)
        if mean is None:
            count, mean, m2 = n, x_mean, x_m2
            continue
        total = count + n
        delta = x_mean - mean
        mean = mean + delta * (n / total)
        m2 = m2 + x_m2 + delta**2 * (count * n / total)
        count = total
    if mean is None:
        raise ValueError("compute_stats needs at least one file. Received: no paths")
    std = np.sqrt(m2 / count)
    return {"mean": mean.astype(np.float32), "std": np.maximum(std, MIN_STD).astype(np.float32), "frames": count}


def save_stats(stats, path):
    np.savez(path, mean=stats["mean"], std=stats["std"], frames=np.int64(stats["frames"]))


def load_stats(path):
    return {"mean": read_array(path, "mean"), "std": read_array(path, "std"), "frames": int(read_array(path, "frames"))}
