SUMMARY = "A second OTA image of the same build: the stable links follow the last one packaged"
require ota-test-image.bb
