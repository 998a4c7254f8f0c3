"""JPEG AI bitstreams (``.jai``): the container format (``container``), range coding of the quantised
latents (``coding``) and the codec that writes and reads them (``codec``)."""
