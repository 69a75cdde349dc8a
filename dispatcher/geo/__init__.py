"""Geometry: request areas, H3 cells (Numba kernels wrapped with input checks), geodesy on WGS84."""
