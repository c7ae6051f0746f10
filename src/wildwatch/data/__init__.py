"""Data: discovery, safe loading, group-aware splits, transforms, loaders and audits."""

from wildwatch.data.discover import IMAGE_EXTENSIONS, Sample, discover_images, is_image_file
from wildwatch.data.loading import ImageLoadError, load_image

__all__ = ["IMAGE_EXTENSIONS", "ImageLoadError", "Sample", "discover_images", "is_image_file", "load_image"]
