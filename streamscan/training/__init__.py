"""training: apply a Spectrum selection in a trainer, rescans, SNR-guided learning rates, callbacks."""
