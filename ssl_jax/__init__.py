"""ssl_jax: self-supervised learning for medical image classification."""
