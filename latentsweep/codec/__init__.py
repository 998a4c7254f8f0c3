"""JPEG AI base-operating-point codec, inference only: analysis transforms, hyperprior, latent export
and pooling.

Modules are named after what they hold (CompressAI style): ``colour`` (BT.709 and branch packing),
``layers`` (ResAU, convs), ``analysis`` (the BOP encoders), ``hyperprior`` (z, psi, mu, scales,
quantisation), ``entropy`` (rate terms), ``synthesis`` (decoders), ``model`` (the whole codec),
``layout`` (channels, strides and pooled columns, without torch), ``settings`` (what decides an
embedding space), ``pooling`` (descriptors from latents), ``weights`` (checkpoints), ``adapters``
(SFMA adapters of the analysis and synthesis transforms), ``reference`` (latents exported by the JPEG AI reference software),
``embed`` (batched inference). Bitstreams are :mod:`latentsweep.bitstream`; training lives in the
research package (``lab/``).
"""
