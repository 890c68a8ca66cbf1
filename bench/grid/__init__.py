"""A grid run: the YAML grid and its cells with their hashes (spec), one cell end to end with
its pictures, the executors, the record schema and the results directory they are written to."""
