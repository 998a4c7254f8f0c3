"""A synthetic, reproducible attribution benchmark ("generator zoo"). Benchmark data, not product logic.

No deepfake corpus is reachable here, so fixed, seeded generator networks in two families render the
same content (crops of the bundled photos and procedural textures): only each generator's
fingerprint tells their images apart. It is synthetic and says so everywhere it is written.
"""
