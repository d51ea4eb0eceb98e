"""Fine-tuning of converted SNNs: surrogate gradients, proxy learning and calibration."""
