"""Object Images: the programs launch.py runs for configs/object_images.py (see its docstring)."""
from experiments.object_images.encode import encode_program

PROGRAMS = {'encode': encode_program}
