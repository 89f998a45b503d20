"""ssl_jax: self-supervised learning for medical image classification.

Importing the package sets its XLA:CPU flags (`runtime.configure`): they
must be in place before JAX first touches a device, which no user code of
this package does earlier than this import.
"""
from ssl_jax import runtime as _runtime

_runtime.configure()
