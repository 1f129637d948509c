"""Zero-copy camera frame transport between processes; see cereal/visionipc/visionipc.py."""
from cereal.visionipc.visionipc import (
                                        PixelFormat,
                                        VisionBuf,
                                        VisionIpcClient,
                                        VisionIpcError,
                                        VisionIpcServer,
                                        VisionStreamType,
                                        nv12_to_rgb,
                                        rgb_to_nv12,
)

__all__ = ["PixelFormat", "VisionBuf", "VisionIpcClient", "VisionIpcError", "VisionIpcServer", "VisionStreamType",
           "nv12_to_rgb", "rgb_to_nv12"]
