"""Student: the lightweight pix2pix generator and discriminators, losses, training, evaluation."""
