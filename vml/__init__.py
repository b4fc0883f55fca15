"""vml: version control for virtual-machine environments."""

__version__ = "0.1.0"
