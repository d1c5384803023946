"""Generated from pulse/cri/proto by scripts/gen-proto; do not edit."""
