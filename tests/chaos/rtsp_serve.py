"""A small RTSP server for the tests: GStreamer's gst-rtsp-server (Debian's
``gir1.2-gst-rtsp-server-1.0``) serving one MJPEG AVI clip as RTP/JPEG.

Run with Debian's ``/usr/bin/python3`` (``python3-gi``), as its own process, so that the test
can kill it (the camera went away) and start it again on the same port::

    /usr/bin/python3 tests/chaos/rtsp_serve.py --port 8554 --path /cam --clip clip.avi

Each client gets its own pipeline from the start of the clip, played at the clip's frame
rate (the pipeline runs on the clock, like a live camera). Prints ``ready`` once listening.
Not part of the package, and no import of the project: it runs outside the project's venv.
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/cam")
    ap.add_argument("--clip", required=True, help="an MJPEG AVI (cv2.VideoWriter, 'MJPG')")
    args = ap.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    clip = args.clip.replace("\\", "\\\\").replace('"', '\\"')
    # re-encoded by GStreamer: OpenCV's JPEGs put as they are into RTP/JPEG (RFC 2435) reached
    # FFmpeg with broken scans ("mjpeg: error count"); jpegenc's output is what rtpjpegpay expects
    factory.set_launch(f'( filesrc location="{clip}" ! avidemux ! queue ! jpegdec '
                       f"! videoconvert ! jpegenc quality=85 ! rtpjpegpay name=pay0 pt=26 )")
    factory.set_shared(False)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"rtsp_serve: cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    print("ready", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
