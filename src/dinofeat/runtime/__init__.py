"""Where and how the model runs: devices and precision, memory estimates, the model thread, progress."""
