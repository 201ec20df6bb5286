"""Files in and out: images, videos, the input check, outputs written atomically, safe pickles."""
