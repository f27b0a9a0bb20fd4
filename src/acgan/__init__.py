"""acgan: Auxiliary Classifier GANs (Odena, Olah and Shlens, 2017) for CIFAR and labeled image folders."""

__version__ = "0.1.0"
