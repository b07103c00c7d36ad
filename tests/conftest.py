"""Test setup: 8 fake CPU devices so sharded code is testable on one machine."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import sys

# Config files import `configs.common`: the repository root must be importable.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# CI runs the slow end-to-end tests at a reduced size.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
