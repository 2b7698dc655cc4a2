"""The split files ingest writes and every later stage reads: sharded TFRecord files, read in streaming passes.

In `Splits.splits_dir`:

- `<split>-<i:05d>-of-<n:05d>.tfrecord` (split: train, val, test): uncompressed TFRecord files. Each
  record is a serialized `tf.train.Example` with `image` (bytes: the raw C-order H x W x C pixels in
  the split's dtype, little-endian) and `label` (int64: the class index). A shard holds about
  `data.shard_mb` MB of pixels, `n = max(1, ceil(split bytes / shard bytes))`, the examples spread
  evenly over the shards in order. Train is stored in a seeded random order, so a bounded shuffle
  buffer over interleaved shards still mixes the classes; a source's own test split keeps its order.
- `<split>-labels.npy`: the split's int64 labels in record order, so counts and labels need no pass
  over the images.
- `splits.json`, written last (its presence means the rest is complete): the format, image shape,
  dtype, class names and, per split, the number of examples, the shard files and the examples in each.

One module a job; import from the module that does it:

- `layout`: names and sizes: the file names, `splits.json`, a split's shard files, labels and bytes,
  and the chunk a streaming pass holds in memory.
- `example`: the `tf.train.Example` message of this format, built and parsed with protobuf alone.
- `writer`: `SplitWriter` writes the splits under temporary names and publishes them by renaming; it
  frames the records as TensorFlow's writer does (length, masked CRC-32C from `google_crc32c`).
- `tf_reader`: reading with TensorFlow, which checks every record's CRCs: `image_chunks` (the split as
  NumPy chunks, memory bounded by a chunk), `load_split` (in memory), and `parse_examples` for a
  stage's own `tf.data` pipeline over `layout.split_files`. TensorFlow is imported inside its functions.
- `record_reader`: reading without TensorFlow (the report stage loads none): `read_images_at` (a few
  examples by position) and `iter_records` (every frame of a file, to copy verbatim).

Only `tf_reader` loads TensorFlow; setup.cfg's import contracts keep the other modules free of it.
"""
