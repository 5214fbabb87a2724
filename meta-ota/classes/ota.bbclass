# Global switch: INHERIT += "ota" in local.conf makes every image an OTA
# release (see ota-image.bbclass). Recipes that are not images are untouched:
# image.bbclass inherits ${IMAGE_CLASSES}, so only images get ota-image.

IMAGE_CLASSES += "ota-image"
