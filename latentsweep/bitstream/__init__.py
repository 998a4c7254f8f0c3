"""JPEG AI bitstreams (``.jai``): the container format (``container``), range coding of the quantised
latents (``coding``), what a file's header says of its embedding space (``space``) and the codec that
writes and reads them (``codec``)."""
