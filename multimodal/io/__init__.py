"""Media input/output: video and image reading and writing (PyAV, Pillow), and :class:`MediaError`."""

from multimodal.io.errors import MediaError
from multimodal.io.image import read_image, write_image
from multimodal.io.video_reader import VideoInfo, count_frames, iter_frames, probe_video, read_video
from multimodal.io.video_writer import VideoWriter, write_video

__all__ = [
    "MediaError",
    "VideoInfo",
    "VideoWriter",
    "count_frames",
    "iter_frames",
    "probe_video",
    "read_image",
    "read_video",
    "write_image",
    "write_video",
]
