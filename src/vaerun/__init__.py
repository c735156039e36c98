"""vaerun: see, by experiment, what a VAE's reconstruction loss really is."""

__version__ = "0.1.0"
