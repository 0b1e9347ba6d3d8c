"""Which files are images and videos, and how videos are written (torch-free, no OpenCV import):
one answer for datasets, calibration, ``predict``, ``track`` and the frame sources."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
"""Still-image files, by lower-case suffix (what OpenCV and Pillow both decode)."""
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
"""Video files, by lower-case suffix (read with OpenCV's FFmpeg backend)."""
VIDEO_FOURCC = "mp4v"
"""MPEG-4 Part 2: what OpenCV's pip wheels write without extra codecs."""
