"""Test configuration: 8 virtual CPU devices for the data-parallel tests."""

import os

# Must run before JAX initialises its backends.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
