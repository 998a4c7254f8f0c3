"""JPEG AI base-operating-point codec: analysis transforms, hyperprior, latent export and pooling.

Modules are named after what they hold (CompressAI style): ``colour`` (BT.709 and branch packing),
``layers`` (ResAU, convs), ``analysis`` (the BOP encoders), ``hyperprior`` (z, psi, mu, scales,
quantisation), ``entropy`` (rate terms), ``synthesis`` (decoders, for training and the pixel
baseline), ``model`` (the whole codec), ``pooling`` (descriptors), ``weights`` (checkpoints),
``reference`` (latents exported by the JPEG AI reference software), ``embed`` (batched inference),
``train`` (rate-distortion training of the default weights).
"""
