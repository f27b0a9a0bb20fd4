"""acgan: Auxiliary Classifier GANs (Odena, Olah and Shlens, 2017) for CIFAR and labeled image folders.

    import acgan
    G = acgan.load_generator("cifar10")                                   # shipped in the package: no training
    images = G.sample(class_="cat", num=16, seed=0)                       # uint8 (16, 3, 32, 32)
    G = acgan.load_generator("runs/00003-cifar10/checkpoints/last.pt")   # your own run, or an `acgan export` folder
"""

__version__ = "0.1.0"
__all__ = ["TrainedGenerator", "load_generator"]


def __getattr__(name: str) -> object:
    """The public API, imported on first use so that `import acgan` (and `acgan --help`) loads no torch."""
    if name in __all__:
        from acgan import generator

        return getattr(generator, name)
    raise AttributeError(f"module 'acgan' has no attribute {name!r}")
