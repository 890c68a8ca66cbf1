"""The ground floor: configs as validated dataclasses, atomic files and hashing, user errors,
the machine and its devices, time and memory of a phase, progress bars. Imports nothing above."""
