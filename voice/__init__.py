"""carmesh voice: call signalling, the mesh media relay, the WebRTC endpoint (aiortc)."""
