"""compute: devices, the placement policy, the scheduler and the spectrum math."""
