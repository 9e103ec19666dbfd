"""Frame sources: cameras, streams, video files, image folders, synthetic scenes, sensors."""
