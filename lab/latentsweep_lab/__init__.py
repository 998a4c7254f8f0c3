"""latentsweep's research package, apart from the product: the benchmark corpora (``zoo``), the
experiments behind docs/results.md (``experiment``), training of the codec, its adapters and the
learned descriptor (``training``), and the demo. It imports the product; the product never imports it."""
