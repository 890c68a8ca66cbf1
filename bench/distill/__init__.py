"""Trajectory machinery: expert trajectories on disk, flat parameter vectors, meta-gradients
through unrolled student steps (exact and constant-memory), and the trajectory matcher."""
