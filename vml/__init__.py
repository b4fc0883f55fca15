"""vml: version control for virtual-machine environments."""

__version__ = "0.2.0"
