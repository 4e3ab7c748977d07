"""The synthetic worlds whose ground truth is known, their oracle model, and the method-fidelity metrics."""
