"""wildwatch: which endangered species is in a photo, how threatened it is, and who to alert."""

__version__ = "0.1.0"
