"""Training a stylizer: photos and paintings, perceptual losses, the training loop, Gatys optimisation and sweeps."""
