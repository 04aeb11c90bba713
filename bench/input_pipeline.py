"""Input pipeline benchmark: our generator against a naive loader and the in-RAM limit.

    python bench/input_pipeline.py [--clips 2000] [--batch-size 32] [--data DIR]

On synthetic CREMA-D-sized data it measures samples/s over two epochs of
1. FixedVideoFacenetGenerator (per-dimension normalisation, length buckets, RAM cache), reading
   the NPZ files, and reading the pack that preflight writes (`validate --pack`, trainer/data/packed.py),
2. a naive loader in the style of the original (np.load per file on every batch, pad to
   the global maximum, one scalar mean/std),
3. the limit: the same batches gathered from clips already in one contiguous RAM array,
and prints the ratios and the padding efficiency (real frames / padded frames).
Targets: epoch 2 >= 50% of the limit, >= 5x the naive loader, padding efficiency >= 0.9, and the
first (cold) epoch from the pack no slower than the naive loader's.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.data.generator import FixedVideoFacenetGenerator  # noqa: E402
from trainer.data.normalization import compute_stats  # noqa: E402
from trainer.data.packed import open_pack, pack  # noqa: E402
from trainer.data.synth import write_corpus  # noqa: E402


def epoch_rate(get, n_batches, n_samples):
    t0 = time.perf_counter()
    for i in range(n_batches):
        get(i)
    return n_samples / (time.perf_counter() - t0)


class NaiveLoader:
    """The seed's style: read every file on every batch, pad to the longest clip of the corpus."""

    def __init__(self, files, labels, batch_size, key="video_features"):
        self.files, self.labels, self.bs, self.key = files, np.asarray(labels), batch_size, key
        clips = [np.load(f)[key] for f in files]
        self.max_len = max(len(c) for c in clips)
        frames = np.concatenate(clips)
        self.mean, self.std = float(frames.mean()), float(frames.std())

    def __len__(self):
        return -(-len(self.files) // self.bs)

    def __getitem__(self, i):
        idx = range(i * self.bs, min(len(self.files), (i + 1) * self.bs))
        x = np.zeros((len(idx), self.max_len, 512), np.float32)
        for row, j in enumerate(idx):
            clip = np.load(self.files[j])[self.key]
            x[row, : len(clip)] = (clip - self.mean) / self.std
        return x, self.labels[list(idx)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--data", type=Path, help="existing feature dir (default: synthetic CREMA-D in a temp dir)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            files = sorted(map(str, args.data.rglob("*.npz")))
        else:
            t0 = time.perf_counter()
            files = sorted(map(str, write_corpus(Path(tmp) / "crema-d", "crema-d", clips=args.clips, seed=0)))
            print(f"wrote {len(files)} synthetic clips in {time.perf_counter() - t0:.1f} s")
        labels = np.arange(len(files)) % 6
        stats = compute_stats(files)
        n = len(files)

        gen = FixedVideoFacenetGenerator(files, labels, args.batch_size, shuffle=True, mean=stats["mean"], std=stats["std"],
                                         max_frames=300, cache_in_memory=True, seed=0)
        ours = []
        for _ in range(2):
            ours.append(epoch_rate(gen.__getitem__, len(gen), n))
            gen.on_epoch_end()
        efficiency = gen.padding_efficiency()
        gen._cache.clear()  # each loader starts with the memory the one before it used given back

        t0 = time.perf_counter()
        pack(files, "video_features", Path(tmp) / "pack")  # what preflight does once on the host
        pack_seconds = time.perf_counter() - t0
        packed_gen = FixedVideoFacenetGenerator(files, labels, args.batch_size, shuffle=True, mean=stats["mean"], std=stats["std"],
                                                max_frames=300, cache_in_memory=True, seed=0,
                                                packed=open_pack(Path(tmp) / "pack", files))
        packed_rates = []
        for _ in range(2):
            packed_rates.append(epoch_rate(packed_gen.__getitem__, len(packed_gen), n))
            packed_gen.on_epoch_end()
        del packed_gen

        naive = NaiveLoader(files, labels, args.batch_size)
        naive_rates = [epoch_rate(naive.__getitem__, len(naive), n) for _ in range(2)]
        naive_eff = sum(gen.lengths) / (n * naive.max_len)

        # The limit: every clip already normalised in one contiguous array; gather + pad only.
        clips = [gen.load_clip(f) for f in files]
        flat = np.ascontiguousarray(np.concatenate(clips))
        offsets = np.concatenate([[0], np.cumsum([len(c) for c in clips])])
        plan = gen._batches

        def gather(i):
            idx = plan[i]
            x = np.zeros((len(idx), gen.lengths[idx].max(), 512), np.float32)
            for row, j in enumerate(idx):
                x[row, : offsets[j + 1] - offsets[j]] = flat[offsets[j] : offsets[j + 1]]
            return x, labels[idx]

        limit = epoch_rate(gather, len(plan), n)

    print(f"\n{n} clips, batch {args.batch_size}, frames per clip median {int(np.median(gen.lengths))}, max {gen.lengths.max()}")
    print(f"{'loader':<34}{'epoch 1':>12}{'epoch 2':>12}   samples/s")
    print(f"{'FixedVideoFacenetGenerator':<34}{ours[0]:>12.0f}{ours[1]:>12.0f}")
    print(f"{'same, clips from the pack':<34}{packed_rates[0]:>12.0f}{packed_rates[1]:>12.0f}   (packing took {pack_seconds:.1f} s)")
    print(f"{'naive (seed style)':<34}{naive_rates[0]:>12.0f}{naive_rates[1]:>12.0f}")
    print(f"{'limit (contiguous RAM array)':<34}{'':>12}{limit:>12.0f}")
    print(f"\nepoch 2 / limit:       {ours[1] / limit:.2f}   (target >= 0.50)")
    print(f"epoch 2 / naive:       {ours[1] / naive_rates[1]:.1f}x  (target >= 5x)")
    print(f"padding efficiency:    {efficiency:.3f}  (target >= 0.90; naive global-max padding: {naive_eff:.3f})")
    print(f"epoch 1 (pack) / naive: {packed_rates[0] / naive_rates[0]:.2f}x (target >= 1: the cold epoch no slower than the naive loader)")
    ok = ours[1] / limit >= 0.5 and ours[1] / naive_rates[1] >= 5 and efficiency >= 0.9 and packed_rates[0] >= naive_rates[0]
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
