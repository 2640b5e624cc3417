"""mmguard: train, check, register and monitor multimodal content-moderation classifiers."""
